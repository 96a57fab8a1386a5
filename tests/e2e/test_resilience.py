"""Zero-failure checks under steady load: a crashed replica, a rolling model update, reloads.

The load stays under the gateway's rate limit (8 r/s from one client), so every failure
counted here is a real one: any status but 200, or a transport error.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import ssl
import threading
import time

import docker
import httpx

from .conftest import ROOT, Stack, run_playbook, stack_settings


class SteadyLoad(threading.Thread):
    """POST /predict at a fixed rate on one keep-alive connection until stopped."""

    def __init__(self, stack: Stack, rate: float = 8.0) -> None:
        super().__init__(daemon=True)
        self.stack, self.interval = stack, 1.0 / rate
        self.stopping = threading.Event()
        self.statuses: collections.Counter = collections.Counter()
        self.errors: list[str] = []
        self.seen: list[tuple[float, str]] = []  # (time, replica)

    def run(self) -> None:
        auth = (self.stack.user, self.stack.password)
        tls = ssl.create_default_context(cafile=str(self.stack.ca))
        with httpx.Client(base_url=self.stack.https, verify=tls, timeout=15) as c:
            next_at = time.monotonic()
            while not self.stopping.is_set():
                try:
                    r = c.post("/predict", json={"sentence": "steady load"}, auth=auth)
                    self.statuses[r.status_code] += 1
                    self.seen.append((time.monotonic(), r.headers.get("x-mlgate-replica", "")))
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                next_at += self.interval
                time.sleep(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)

    def report(self) -> str:
        sent = sum(self.statuses.values()) + len(self.errors)
        failed = {s: n for s, n in self.statuses.items() if s != 200}
        return f"sent {sent}, failed by status {failed}, transport errors {len(self.errors)}"


def _health(container) -> str:
    return container.attrs["State"].get("Health", {}).get("Status", "")


def test_crashed_replica_loses_no_requests_and_comes_back(stack: Stack, pacer) -> None:
    engine = docker.from_env()
    victim = engine.containers.get(f"{stack.name}-api-v1-2")
    restarts, pid = victim.attrs["RestartCount"], victim.attrs["State"]["Pid"]
    pacer.refill()
    load = SteadyLoad(stack)
    load.start()
    try:
        time.sleep(2)
        os.kill(pid, signal.SIGKILL)  # a real crash: docker kill/stop would disable the restart
        killed_at = time.monotonic()
        deadline = killed_at + 90
        while time.monotonic() < deadline:
            victim.reload()
            if victim.attrs["RestartCount"] > restarts and _health(victim) == "healthy":
                break
            time.sleep(1)
        assert victim.attrs["RestartCount"] == restarts + 1, "docker did not restart the replica"
        assert _health(victim) == "healthy"
        back_at = time.monotonic()
        while time.monotonic() < back_at + 20:
            if any(t > back_at and r == victim.name for t, r in load.seen):
                break
            time.sleep(0.5)
    finally:
        load.stop()
        pacer.refill()
    print(f"replica crash: {load.report()}")
    assert any(t > back_at and r == victim.name for t, r in load.seen), "restarted replica unused"
    assert load.errors == []
    assert set(load.statuses) == {200}, load.statuses


def test_rolling_model_update_loses_no_requests(stack: Stack, pacer) -> None:
    card = ROOT / ".mlgate" / stack.name / "model" / "model_card.json"
    before = json.loads(card.read_text())["version"]
    pacer.refill()
    load = SteadyLoad(stack)
    load.start()
    try:
        run = run_playbook(
            "site.yml", "--tags", "api", "-e", f"api_model_revision=e2e-{time.time_ns()}"
        )
    finally:
        load.stop()
        pacer.refill()
    print(f"rolling update: {load.report()}")
    assert run.returncode == 0, run.stdout[-4000:]
    after = json.loads(card.read_text())["version"]
    assert after != before
    engine = docker.from_env()
    replicas = engine.containers.list(
        filters={"label": [f"io.mlgate.stack={stack.name}", "io.mlgate.component=api"]}
    )
    assert len(replicas) == 3 + 1
    port = stack_settings().get("mlgate_api_port", 8000)
    for c in replicas:
        code, out = c.exec_run(
            [
                "python",
                "-c",
                f"import urllib.request; print(urllib.request.urlopen("
                f"'http://127.0.0.1:{port}/health').read().decode())",
            ]
        )
        assert code == 0, out
        assert json.loads(out)["model_version"] == after, c.name
    # replaced one at a time: the v1 replicas started at different moments, in order
    v1 = sorted(
        (c for c in replicas if c.labels["io.mlgate.variant"] == "v1"), key=lambda c: c.name
    )
    started = [c.attrs["State"]["StartedAt"] for c in v1]
    assert started == sorted(started) and len(set(started)) == 3
    assert load.errors == []
    assert set(load.statuses) == {200}, load.statuses


def test_gateway_reload_under_load_loses_no_requests(stack: Stack, pacer) -> None:
    pacer.refill()
    load = SteadyLoad(stack)
    load.start()
    try:
        time.sleep(1)
        changed = run_playbook("site.yml", "--tags", "nginx", "-e", "nginx_rate_limit_burst=30")
        time.sleep(1)
        restored = run_playbook("site.yml", "--tags", "nginx")
        time.sleep(1)
    finally:
        load.stop()
        pacer.refill()
    print(f"two gateway reloads: {load.report()}")
    assert changed.returncode == 0 and restored.returncode == 0
    assert "RUNNING HANDLER [nginx : Reload nginx]" in changed.stdout
    assert "RUNNING HANDLER [nginx : Reload nginx]" in restored.stdout
    assert load.errors == []
    assert set(load.statuses) == {200}, load.statuses
