"""End-to-end fixtures: deploy a stack with the real playbook, test it, tear it down.

The stack uses its own name, subnet and ports (tests/e2e/stack.yml), so a user's deployment
on the same host is never touched. Environment knobs for development:
  MLGATE_E2E_REUSE=1  reuse a stack deployed earlier (skip the deploy runs)
  MLGATE_E2E_KEEP=1   leave the stack running afterwards
  MLGATE_E2E_VARS=f   use another extra-vars file instead of tests/e2e/stack.yml
"""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import docker
import httpx
import pytest
import yaml

from tests.bounded import run_bounded
from tests.loadgen import PacedLoad

ROOT = Path(__file__).resolve().parents[2]
# Another vars file (own stack name, subnet, ports) lets two suites run side by side.
STACK_VARS = Path(os.environ.get("MLGATE_E2E_VARS", ROOT / "tests" / "e2e" / "stack.yml")).resolve()
VENV_BIN = Path(sys.executable).parent


def stack_settings() -> dict:
    return yaml.safe_load(STACK_VARS.read_text())


def run_playbook(playbook: str, *args: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    """Run a playbook with the e2e stack vars; return the completed process (output captured)."""
    cmd = [
        str(VENV_BIN / "ansible-playbook"),
        f"playbooks/{playbook}",
        "-e",
        f"@{STACK_VARS}",
        *args,
    ]
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1")
    done = run_bounded(cmd, timeout, cwd=ROOT, env=env)
    # A run whose inventory names none of the stack's hosts succeeds doing nothing: not here.
    ran = re.search(r"^\S+\s+:\s+ok=\d+", done.stdout.split("PLAY RECAP")[-1], re.MULTILINE)
    assert ran or done.returncode != 0, (
        f"{playbook} ran on no host (which inventory? ANSIBLE_CONFIG="
        f"{os.environ.get('ANSIBLE_CONFIG', 'unset')}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    )
    return done


def recap(output: str) -> dict[str, int]:
    """Parse the PLAY RECAP line of a single-host run into counters."""
    match = re.search(r"^\S+\s+:\s+(ok=.*)$", output.split("PLAY RECAP")[-1], re.MULTILINE)
    assert match, f"no PLAY RECAP in output:\n{output[-3000:]}"
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


def gateway_log(name: str, since: float) -> list[dict]:
    """The gateway's JSON access log records since a time (epoch seconds). nginx writes the
    log with a 1 s flush: wait ~1.5 s after the requests of interest."""
    nginx = docker.from_env().containers.get(f"{name}-nginx")
    logs = nginx.logs(stdout=True, stderr=False, since=int(since)).decode(errors="replace")
    return [json.loads(line) for line in logs.splitlines() if line.startswith("{")]


@dataclass
class Stack:
    name: str
    https: str
    http: str
    ca: Path
    user: str
    password: str
    first_run_seconds: float | None
    second_run: subprocess.CompletedProcess | None


BOTH_COHORTS = ({}, {"X-Experiment-Group": "debug"})


def steady_load(stack: Stack) -> PacedLoad:
    """8 r/s of POST /predict through the gateway, on one keep-alive connection, alternately
    without and with ``X-Experiment-Group: debug``: both cohorts, each counted on its own."""
    return PacedLoad(
        stack.https, ca=str(stack.ca), auth=(stack.user, stack.password), headers=BOTH_COHORTS
    )


def assert_both_cohorts_served(load: PacedLoad, at_least: int = 10) -> None:
    """Each cohort got answers (so 'no failure' covers the debug route too)."""
    assert all(c[200] >= at_least for c in load.by_cohort), load.report()


class Pacer:
    """Keeps the suite's own /predict traffic under the gateway's rate limit (10 r/s)."""

    def __init__(self, rate: float = 8.0) -> None:
        self.interval = 1.0 / rate
        self.last = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        with self.lock:
            delay = self.last + self.interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.last = time.monotonic()

    def refill(self, seconds: float = 2.5) -> None:
        """Sleep until the burst bucket is full again."""
        with self.lock:
            time.sleep(seconds)
            self.last = time.monotonic()


@pytest.fixture(scope="session")
def stack() -> Stack:
    settings = stack_settings()
    name = settings["mlgate_stack_name"]
    first_seconds = None
    second = None
    if os.environ.get("MLGATE_E2E_REUSE") != "1":
        start = time.monotonic()
        first = run_playbook("site.yml")
        first_seconds = time.monotonic() - start
        assert first.returncode == 0, (
            f"site.yml failed:\n{first.stdout[-6000:]}\n{first.stderr[-2000:]}"
        )
        second = run_playbook("site.yml")
        assert second.returncode == 0, f"second site.yml run failed:\n{second.stdout[-6000:]}"
    controller = ROOT / ".mlgate" / name
    yield Stack(
        name=name,
        https=f"https://localhost:{settings['mlgate_https_port']}",
        http=f"http://127.0.0.1:{settings['mlgate_http_port']}",
        ca=controller / "ca.crt",
        user="mlgate",
        password=(controller / "credentials" / "mlgate.password").read_text().strip(),
        first_run_seconds=first_seconds,
        second_run=second,
    )
    if os.environ.get("MLGATE_E2E_KEEP") != "1":
        down = run_playbook("teardown.yml", "-e", "mlgate_teardown_purge=true")
        assert down.returncode == 0, f"teardown failed:\n{down.stdout[-3000:]}"


@pytest.fixture(scope="session")
def pacer() -> Pacer:
    return Pacer()


@pytest.fixture(scope="session")
def client(stack: Stack) -> httpx.Client:
    tls = ssl.create_default_context(cafile=str(stack.ca))
    with httpx.Client(base_url=stack.https, verify=tls, timeout=10) as c:
        yield c


@pytest.fixture
def predict(client: httpx.Client, stack: Stack, pacer: Pacer):
    """POST /predict through the gateway at a pace the rate limit allows."""

    def _predict(sentence: str = "what a lovely day", *, auth=True, headers=None, **kw):
        pacer.wait()
        return client.post(
            "/predict",
            json={"sentence": sentence},
            auth=(stack.user, stack.password) if auth is True else auth,
            headers=headers or {},
            **kw,
        )

    return _predict
