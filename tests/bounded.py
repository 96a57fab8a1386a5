"""Run a command with a time bound that explains itself (tests/e2e, tests/remote).

`subprocess.run(..., timeout=N)` kills a command that hangs and raises `TimeoutExpired`, which
names the command and nothing else: where it hung is lost. `run_bounded` runs the command in
its own session with `PYTHONFAULTHANDLER=1`; past the bound it sends SIGABRT to that session,
so every Python process in it (ansible-playbook, its workers, Mitogen's multiplexer) writes
the stack of each of its threads to stderr before it dies, then SIGKILL to whatever is left.
It then fails with `CommandHung`, whose message holds the command, the bound and the end of
the output with those stacks.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence

ABORT_GRACE_SECONDS = 5


class CommandHung(AssertionError):
    """A command ran past its bound; the message ends with what it printed, stacks included."""


def run_bounded(
    cmd: Sequence[str], timeout: float, *, tail: int = 12000, **kwargs
) -> subprocess.CompletedProcess:
    """`subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)`,
    except that a hang ends in `CommandHung` with the stacks of the hung Python processes."""
    env = dict(kwargs.pop("env", None) or os.environ, PYTHONFAULTHANDLER="1")
    with subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
        **kwargs,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_session(proc.pid, signal.SIGABRT)
            try:
                out, err = proc.communicate(timeout=ABORT_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                _signal_session(proc.pid, signal.SIGKILL)
                out, err = proc.communicate()
            _signal_session(proc.pid, signal.SIGKILL)  # children that outlived the leader
            raise CommandHung(
                f"{list(cmd)} ran past its bound of {timeout} s; SIGABRT made its Python "
                f"processes print their threads' stacks:\n--- stdout (end) ---\n{out[-tail:]}"
                f"\n--- stderr (end) ---\n{err[-tail:]}"
            ) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _signal_session(pid: int, sig: signal.Signals) -> None:
    """Signal the process group the command leads (its own session: only what it started)."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
