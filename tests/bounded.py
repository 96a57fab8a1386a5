"""Run a command with a time bound that explains itself (tests/e2e, tests/remote).

`subprocess.run(..., timeout=N)` kills a command that hangs and raises `TimeoutExpired`, which
names the command and nothing else: where it hung is lost. `run_bounded` runs the command in
its own session with `PYTHONFAULTHANDLER=1`; past the bound it sends SIGABRT to each of the
command's processes in turn (by pid, so that their stacks do not interleave), so every Python
process among them (ansible-playbook, its workers, Mitogen's multiplexer) writes the stack of
each of its threads to its stderr before it dies, then SIGKILL to whatever is left. It then
fails with `CommandHung`, whose message holds the command, the bound, a snapshot of the
processes taken at the bound, before any signal, and the end of the output with those stacks.

The command's processes are those of its session, its descendants that left the session (an
Ansible 2.19 worker calls `setsid()` and puts /dev/null on its stdio: its stack goes there, but
the snapshot still says where it waits) and any process anywhere that holds its stdout or stderr
pipe (a descendant that left the session keeps `communicate()` waiting after the command itself
is gone). The snapshot gives, for each: pid, parent, process group, session, state (R running,
S sleeping, D uninterruptible I/O, T stopped, Z exited), the kernel function it waits in, and
its command line; and whether the command itself had already exited, with its code. A process
that is stopped, in uninterruptible I/O or not Python prints no stack on SIGABRT: the snapshot
still says where it was.
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
                for pid in members:  # those outside the session too
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
    """The command's processes (see the module's docstring), one line each, and their pids."""
    pipes = {f"pipe:[{os.fstat(f.fileno()).st_ino}]" for f in (proc.stdout, proc.stderr) if f}
    code = proc.poll()
    table = {}  # pid -> (state, ppid, pgrp, sid)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        table[int(entry.name)] = (fields[0], int(fields[1]), int(fields[2]), int(fields[3]))
    descendants = _descendants(proc.pid, table)
    members = []
    lines = [
        f"the command (pid {proc.pid}) "
        + ("is still running" if code is None else f"had exited with code {code}")
    ]
    for pid in sorted(table):
        state, ppid, pgrp, session = table[pid]
        entry = Path(f"/proc/{pid}")
        try:
            holds = []
            if session != proc.pid:
                for fd in (entry / "fd").iterdir():
                    try:
                        if os.readlink(fd) in pipes:
                            holds.append(fd.name)
                    except OSError:
                        continue
                if not holds and pid not in descendants:
                    continue
            wchan = (entry / "wchan").read_text().strip() or "-"
            argv = " ".join((entry / "cmdline").read_bytes().decode(errors="replace").split())
        except OSError:  # gone meanwhile, or not ours to read
            continue
        members.append(pid)
        if holds:
            where = f" holds our pipe as fd {','.join(holds)}"
        elif session != proc.pid:  # a descendant (the filter above)
            where = " (left the session: its stacks go where its stderr goes)"
        else:
            where = ""
        lines.append(
            f"  pid {pid} ppid {ppid} pgrp {pgrp} sid {session} state {state} "
            f"wchan {wchan}{where}: {argv[:300].strip()}"
        )
    return "\n".join(lines), members


def _descendants(root: int, table: dict[int, tuple[str, int, int, int]]) -> set[int]:
    """The pids below `root` in the parent tree of `table` (a child whose parent died is
    re-parented away and is not found here: the session and the pipes still find it)."""
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


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
