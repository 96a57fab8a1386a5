"""Fixtures of the remote suite: a site deployed over SSH to throwaway hosts (molecule `remote`).

The molecule verifier passes MLGATE_REMOTE_SETTINGS (JSON): the gateway URLs on 127.0.0.1, the
controller directory, the stack name, the gateway host, the API nodes, every host's address,
the API instances as the inventory places them, and how to re-run the site (inventory, extra
vars). The hosts are containers on this machine: `docker exec <host> ...` is their console.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.bounded import run_bounded
from tests.loadgen import PacedLoad

ROOT = Path(__file__).resolve().parents[2]


def settings() -> dict:
    raw = os.environ.get("MLGATE_REMOTE_SETTINGS")
    if not raw:
        pytest.skip("MLGATE_REMOTE_SETTINGS is not set: run through `molecule test -s remote`")
    return json.loads(raw)


def on_host(host: str, *argv: str, timeout: int = 60) -> str:
    """Run a command on a test host (its console), return stdout."""
    done = subprocess.run(
        ["docker", "exec", host, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{host}: {argv} failed: {done.stderr[-2000:]}"
    return done.stdout


def run_site(cfg: dict, *extra: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Re-run playbooks/site.yml against the scenario's inventory (molecule's ansible.cfg env)."""
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", cfg["inventory"]]
    for path in cfg["extra_vars"]:
        cmd += ["-e", f"@{path}"]
    cmd += [*extra, "playbooks/site.yml"]
    return run_bounded(cmd, timeout, cwd=ROOT)


@dataclass
class Remote:
    cfg: dict
    password: str
    client: httpx.Client
    pace: float = 0.125
    _last: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def instances(self) -> list[dict]:
        return self.cfg["instances"]

    def node_of(self, replica: str) -> str:
        return next(i["node"] for i in self.instances if i["name"] == replica)

    def load(self, headers: tuple[dict[str, str], ...] = ({},)) -> PacedLoad:
        """8 r/s of POST /predict through the gateway, on one keep-alive connection, cycling
        through the header sets given (e.g. the default and the debug cohort, alternately)."""
        return PacedLoad(
            self.cfg["https"],
            ca=str(Path(self.cfg["controller_dir"]) / "ca.crt"),
            auth=("mlgate", self.password),
            headers=headers,
            sentence="load through a fleet",
            timeout=30,
        )

    def predict(self, sentence: str = "what a lovely day", **kw) -> httpx.Response:
        """POST /predict with the generated credentials, paced under the 10 r/s rate limit."""
        with self._lock:
            delay = self._last + self.pace - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._last = time.monotonic()
        return self.client.post(
            "/predict", json={"sentence": sentence}, auth=("mlgate", self.password), **kw
        )


@pytest.fixture(scope="session")
def remote() -> Remote:
    cfg = settings()
    controller = Path(cfg["controller_dir"])
    tls = ssl.create_default_context(cafile=str(controller / "ca.crt"))
    # A dead node's in-flight requests wait for nginx's read timeout (10 s) before being retried.
    with httpx.Client(base_url=cfg["https"], verify=tls, timeout=30) as client:
        yield Remote(
            cfg=cfg,
            password=(controller / "credentials" / "mlgate.password").read_text().strip(),
            client=client,
        )
