"""The `mitogen_linear` strategy (plugins/strategy/) leaves CPU placement to the kernel.

Mitogen's default policy on a machine with fewer than 4 CPUs pins every process a task starts
to CPU 1 (and its multiplexer to CPU 0): on the 2-core machines this project targets, every
Ansible run and every command it runs (the molecule verifiers' pytest and all it starts) would
share one CPU. A task's process must be free to run on every CPU its caller may use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _allowed(status: str) -> str:
    line = next(x for x in status.splitlines() if x.startswith("Cpus_allowed_list:"))
    return line.split(":", 1)[1].strip()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning shows on 2+ CPUs only")
def test_a_task_and_what_it_starts_may_run_on_every_cpu() -> None:
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_DEPRECATION_WARNINGS="0")
    done = subprocess.run(
        [
            str(BIN / "ansible"),
            "localhost",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            "-m",
            "ansible.builtin.command",
            "-a",
            "cat /proc/self/status",
        ],
        cwd=ROOT,  # the project's ansible.cfg: strategy = mitogen_linear
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "mitogen is not installed" not in done.stderr, done.stderr  # Mitogen ran, no fallback
    assert _allowed(done.stdout) == _allowed(Path("/proc/self/status").read_text())
