"""Run a command with a time bound that explains itself (tests/e2e, tests/remote).

`subprocess.run(..., timeout=N)` kills a command that hangs and raises `TimeoutExpired`, which
names the command and nothing else: where it hung is lost. `run_bounded` runs the command in
its own session with `PYTHONFAULTHANDLER=1`; past the bound it sends SIGABRT to each process of
that session (and to any process holding its output pipe) in turn (by pid, so that their stacks do not interleave), so every Python
process in it (ansible-playbook, its workers, Mitogen's multiplexer) writes
the stack of each of its threads to stderr before it dies, then SIGKILL to whatever is left.
It then fails with `CommandHung`, whose message holds the command, the bound, a snapshot of
the processes taken at the bound, before any signal, and the end of the output with those stacks.

The snapshot lists every process of the command's session and every process anywhere that
holds its stdout or stderr pipe (a descendant that left the session keeps `communicate()`
waiting after the command itself is gone): pid, parent, process group, session, state (R
running, S sleeping, D uninterruptible I/O, T stopped, Z exited), the kernel function it waits
in, and its command line; and whether the command itself had already exited, with its code. A
process that is stopped, in uninterruptible I/O or not Python prints no stack on SIGABRT: the
snapshot still says where it was.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

ABORT_GRACE_SECONDS = 5
ABORT_SPACING_SECONDS = 0.3


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
            snapshot, members = _snapshot(proc)
            # one process at a time, parents before children (a child whose parent died first
            # still gets its turn): stacks written at once interleave mid-line
            for pid in sorted(members):
                _signal(pid, signal.SIGABRT)
                time.sleep(ABORT_SPACING_SECONDS)
            try:
                out, err = proc.communicate(timeout=ABORT_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                _signal_session(proc.pid, signal.SIGKILL)
                for pid in members:  # a holder of the pipe outside the session too
                    _signal(pid, signal.SIGKILL)
                out, err = proc.communicate()
            _signal_session(proc.pid, signal.SIGKILL)  # children that outlived the leader
            raise CommandHung(
                f"{list(cmd)} ran past its bound of {timeout} s; its processes at the bound:\n"
                f"{snapshot}\nSIGABRT then made its Python processes print their threads' "
                f"stacks:\n--- stdout (end) ---\n{out[-tail:]}"
                f"\n--- stderr (end) ---\n{err[-tail:]}"
            ) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _snapshot(proc: subprocess.Popen) -> tuple[str, list[int]]:
    """The processes of the command's session and those holding its output pipes, one line each;
    and their pids (a holder of the pipe got it from the command: it is the command's too)."""
    pipes = {f"pipe:[{os.fstat(f.fileno()).st_ino}]" for f in (proc.stdout, proc.stderr) if f}
    code = proc.poll()
    members = []
    lines = [
        f"the command (pid {proc.pid}) "
        + ("is still running" if code is None else f"had exited with code {code}")
    ]
    for entry in sorted(Path("/proc").iterdir(), key=lambda p: p.name):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            state, ppid, pgrp, session = fields[0], fields[1], fields[2], fields[3]
            holds = []
            if int(session) != proc.pid:
                for fd in (entry / "fd").iterdir():
                    try:
                        if os.readlink(fd) in pipes:
                            holds.append(fd.name)
                    except OSError:
                        continue
                if not holds:
                    continue
            wchan = (entry / "wchan").read_text().strip() or "-"
            argv = " ".join((entry / "cmdline").read_bytes().decode(errors="replace").split())
        except OSError:  # gone meanwhile, or not ours to read
            continue
        members.append(int(entry.name))
        where = f" holds our pipe as fd {','.join(holds)}" if holds else ""
        lines.append(
            f"  pid {entry.name} ppid {ppid} pgrp {pgrp} sid {session} state {state} "
            f"wchan {wchan}{where}: {argv[:300].strip()}"
        )
    return "\n".join(lines), members


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _signal_session(pid: int, sig: signal.Signals) -> None:
    """Signal the process group the command leads (its own session: only what it started)."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
