"""Zero-failure checks under steady load: a crashed replica, a rolling model update, reloads.

The load stays under the gateway's rate limit (8 r/s from one client), so every failure
counted here is a real one: any status but 200, or a transport error.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import ssl
import threading
import time
from pathlib import Path

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
        self.builds: list[str] = []  # X-Mlgate-Build of every 200 (the code rollout's marker)

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
                    if r.status_code == 200:
                        self.builds.append(r.headers.get("x-mlgate-build", ""))
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


def _api_containers(stack: Stack) -> list:
    return docker.from_env().containers.list(
        filters={"label": [f"io.mlgate.stack={stack.name}", "io.mlgate.component=api"]}
    )


def _assert_replaced_one_at_a_time(replicas: list) -> None:
    """The v1 replicas (re)started at different moments, in order: each one was started after
    the previous one had been replaced (and reported healthy)."""
    v1 = sorted(
        (c for c in replicas if c.labels["io.mlgate.variant"] == "v1"), key=lambda c: c.name
    )
    started = [c.attrs["State"]["StartedAt"] for c in v1]
    assert started == sorted(started) and len(set(started)) == len(v1), started


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


CODE_MARKER_ANCHOR = '(b"x-mlgate-variant", variant.encode()),'


def _build_marker_of(container, port: int) -> str:
    """X-Mlgate-Build of the replica's own /health answer, from inside the network."""
    code, out = container.exec_run(
        [
            "python",
            "-c",
            "import urllib.request; print(urllib.request.urlopen("
            f"'http://127.0.0.1:{port}/health').headers.get('x-mlgate-build', ''))",
        ]
    )
    assert code == 0, out
    return out.decode().strip()


def test_rolling_code_update_loses_no_requests(stack: Stack, pacer, tmp_path: Path) -> None:
    """A real code change (every response gains an ``X-Mlgate-Build`` header), deployed from a
    copy of the sources with ``-e api_source_dir`` under steady load: 0 failed requests.

    The next test, the rolling model update, deploys the checkout's code again (and checks it
    did); run alone, this one leaves every replica on the same harmless code until the next
    deployment from the checkout."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "api", src / "api", ignore=shutil.ignore_patterns("__pycache__"))
    (src / "model").mkdir()
    for f in (ROOT / "model").glob("*.py"):
        shutil.copy2(f, src / "model" / f.name)
    shutil.copytree(ROOT / "requirements", src / "requirements")
    marker = f"e2e-{time.time_ns()}"
    app = src / "api" / "app.py"
    code = app.read_text()
    assert code.count(CODE_MARKER_ANCHOR) == 1, "anchor for the code change not found"
    app.write_text(
        code.replace(CODE_MARKER_ANCHOR, f'{CODE_MARKER_ANCHOR} (b"x-mlgate-build", b"{marker}"),')
    )
    settings = stack_settings()
    port = settings.get("mlgate_api_port", 8000)
    # same model (the stack's own model directory, not retrained): only the code changes
    model = [] if "api_model_dir" in settings else ["-e", f"api_model_dir={ROOT}/model/artifacts"]
    before = {c.name: c.image.id for c in _api_containers(stack)}
    assert len(before) == 3 + 1

    pacer.refill()
    load = SteadyLoad(stack)
    load.start()
    started = time.monotonic()
    try:
        run = run_playbook(
            "site.yml", "--tags", "api",
            "-e", f"api_source_dir={src}", "-e", '{"api_train_model": false}', *model,
        )  # fmt: skip
    finally:
        took = time.monotonic() - started
        load.stop()
        pacer.refill()
    print(f"rolling code update ({took:.0f} s): {load.report()}")
    assert run.returncode == 0, run.stdout[-4000:]
    replicas = _api_containers(stack)
    images = {c.name: c.image.id for c in replicas}
    assert images.keys() == before.keys()
    assert len(set(images.values())) == 1, images  # every replica, v2 included, on one image
    assert set(images.values()).isdisjoint(before.values()), "no new image"
    for c in replicas:
        assert _build_marker_of(c, port) == marker, c.name
    _assert_replaced_one_at_a_time(replicas)
    # through the gateway: old code, then both (one replica at a time), then only the new code
    first_new = load.builds.index(marker)
    assert "" in load.builds[first_new:], "never saw old and new code serving side by side"
    assert load.builds[-8:] == [marker] * 8, load.builds[-8:]
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
    replicas = _api_containers(stack)
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
        assert _build_marker_of(c, port) == "", f"{c.name} does not run the checkout's code"
    _assert_replaced_one_at_a_time(replicas)
    assert load.errors == []
    assert set(load.statuses) == {200}, load.statuses


def test_gateway_config_change_is_a_reload_under_load_losing_no_requests(
    stack: Stack, pacer
) -> None:
    """A rate-limit change, then its undo, each applied by a reload (not a restart) while a
    paced client keeps sending: the new limit is live in between, and no request fails."""
    nginx = docker.from_env().containers.get(f"{stack.name}-nginx")
    started = nginx.attrs["State"]["StartedAt"]
    conf = Path(f"/opt/mlgate/{stack.name}/nginx/conf/nginx.conf")
    pacer.refill()
    load = SteadyLoad(stack)
    load.start()
    try:
        time.sleep(1)
        changed = run_playbook("site.yml", "--tags", "nginx", "-e", "nginx_rate_limit_burst=30")
        live_during = conf.read_text()
        time.sleep(1)
        restored = run_playbook("site.yml", "--tags", "nginx")
        time.sleep(1)
    finally:
        load.stop()
        pacer.refill()
    print(f"two gateway reloads: {load.report()}")
    assert changed.returncode == 0, changed.stdout[-3000:]
    assert restored.returncode == 0, restored.stdout[-3000:]
    assert "RUNNING HANDLER [nginx : Reload nginx]" in changed.stdout
    assert "RUNNING HANDLER [nginx : Reload nginx]" in restored.stdout
    assert "burst=30" in live_during
    assert "burst=20" in conf.read_text()
    nginx.reload()
    assert nginx.attrs["State"]["StartedAt"] == started, "nginx was restarted, not reloaded"
    assert load.errors == []
    assert set(load.statuses) == {200}, load.statuses
