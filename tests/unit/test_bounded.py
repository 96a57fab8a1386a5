"""tests/bounded.py: a command that hangs fails with the stacks of where it hung."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from tests.bounded import CommandHung, run_bounded

# A parent waiting on a child (as ansible-playbook waits on a worker) and the child stuck in
# a function of its own, in a second thread: both must show up, each with its own stack.
HANGS = r"""
import os, sys, threading, time
def worker_stuck_here():
    time.sleep(600)
if os.fork() == 0:
    threading.Thread(target=worker_stuck_here).start()
    print("child", os.getpid(), flush=True)
    time.sleep(600)
else:
    print("parent started", flush=True)
    os.wait()
"""


def test_a_command_in_time_is_a_completed_process() -> None:
    done = run_bounded([sys.executable, "-c", "import sys; print('out'); sys.exit(3)"], 30)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "")


def test_a_hung_command_fails_with_every_process_stack_and_leaves_nothing_running() -> None:
    started = time.monotonic()
    with pytest.raises(CommandHung) as hung:
        run_bounded([sys.executable, "-c", HANGS], 3)
    assert time.monotonic() - started < 3 + 10
    message, child, snapshot = _parts(str(hung.value), "child")
    assert "ran past its bound of 3 s" in message and "parent started" in message
    assert "in worker_stuck_here" in message  # the child's second thread
    assert message.count("Fatal Python error: Aborted") == 2  # parent and child
    # the snapshot taken at the bound, before the signals: both processes, sleeping, named
    assert "is still running" in snapshot
    assert f"pid {child} " in snapshot and "state S" in snapshot, snapshot
    assert _ended_within(child, 5), f"the hung child {child} outlived the bound"


# The command exits at once, but a grandchild in a session of its own keeps its stdout open.
LEAVES_A_HOLDER = r"""
import os, time
if os.fork() == 0:
    os.setsid()
    print("holder", os.getpid(), flush=True)
    time.sleep(8)
"""


def test_a_process_outside_the_session_holding_the_output_is_named() -> None:
    message, holder, snapshot = _hang(LEAVES_A_HOLDER, 2, "holder")
    assert "had exited with code 0" in snapshot, snapshot
    assert f"pid {holder} " in snapshot and "holds our pipe as fd" in snapshot, snapshot
    assert "in <module>" in message.split("--- stderr (end) ---", 1)[1]  # the holder's stack
    assert not _running(holder)


# As an Ansible 2.19 worker does: a child leaves the session and puts /dev/null on its stdio,
# while its parent (the command) waits for it.
LEAVES_THE_SESSION = r"""
import os, time
if os.fork() == 0:
    os.setsid()
    print("worker", os.getpid(), flush=True)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    time.sleep(600)
else:
    os.wait()
"""


def test_a_child_that_left_the_session_is_named_and_ended() -> None:
    _, worker, snapshot = _hang(LEAVES_THE_SESSION, 3, "worker")
    assert "is still running" in snapshot, snapshot
    line = next(row for row in snapshot.splitlines() if row.startswith(f"  pid {worker} "))
    assert f"sid {worker} " in line and "(left the session" in line, line
    assert _ended_within(worker, 5), f"the worker {worker} that left the session outlived the bound"


def _hang(script: str, bound: float, tag: str) -> tuple[str, int, str]:
    """Run `script` past its bound: see `_parts`."""
    with pytest.raises(CommandHung) as hung:
        run_bounded([sys.executable, "-c", script], bound)
    return _parts(str(hung.value), tag)


def _parts(message: str, tag: str) -> tuple[str, int, str]:
    """A `CommandHung` message, the pid the script printed after `tag`, and the snapshot."""
    pid = int(message.split(f"{tag} ", 1)[1].split()[0])
    snapshot = message.split("its processes at the bound:\n", 1)[1].split("SIGABRT then", 1)[0]
    return message, pid, snapshot


def _ended_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _running(pid)


def _running(pid: int) -> bool:
    """Neither gone nor a zombie (dead, waiting for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
