"""Zero-failure checks under steady load: a crashed replica, a rolling code and model update.
(A configuration change of the gateway and of Prometheus under load: tests/e2e/test_monitoring.py.)

The load stays under the gateway's rate limit (8 r/s from one client), so every failure
counted here is a real one: any status but 200, or a transport error. The client retries a
request once only where browsers and Go's HTTP client do (tests/loadgen.py: a reused keep-alive
connection closed before any byte of the answer); retries are counted, and allowed only where
the event closes client connections (a gateway reload closes idle keep-alive connections).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import docker

from model.dataset import resolve_dataset_path
from model.registry import Registry

from .conftest import (
    ROOT,
    Stack,
    assert_both_cohorts_served,
    run_playbook,
    stack_settings,
    steady_load,
)


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
    load = steady_load(stack)
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
    load.assert_no_failure()
    assert_both_cohorts_served(load)


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


def _health_of(container, port: int) -> dict:
    """The replica's own /health answer, from inside the network."""
    code, out = container.exec_run(
        [
            "python",
            "-c",
            f"import urllib.request; print(urllib.request.urlopen("
            f"'http://127.0.0.1:{port}/health').read().decode())",
        ]
    )
    assert code == 0, out
    return json.loads(out)


def test_rolling_code_and_model_update_loses_no_requests(
    stack: Stack, pacer, tmp_path: Path
) -> None:
    """A real code change (every response gains an ``X-Mlgate-Build`` header) and a new model
    version (``api_model_revision``), deployed together from a copy of the sources with
    ``-e api_source_dir`` under steady load: 0 failed requests, one replica at a time, old and
    new serving side by side, then every replica, v2 included, on the new image, code and
    model. (A model-only rollout across a fleet: tests/remote.) Afterwards every replica keeps
    the same harmless code until the next deployment from the checkout."""
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
    card = ROOT / ".mlgate" / stack.name / "model" / "model_card.json"
    assert "api_model_dir" in settings, "the stack needs its own model directory"
    model_before = json.loads(card.read_text())["version"]
    registry = Registry(store=ROOT / ".mlgate" / stack.name / "mlflow")
    stable_before = registry.resolve("@stable")
    before = {c.name: c.image.id for c in _api_containers(stack)}
    assert len(before) == 3 + 1

    pacer.refill()
    load = steady_load(stack)
    load.start()
    started = time.monotonic()
    try:
        run = run_playbook(
            "site.yml", "--tags", "api", "-e", f"api_source_dir={src}",
            "-e", f"api_dataset={resolve_dataset_path()}",
            "-e", f"api_model_revision=e2e-{time.time_ns()}",
        )  # fmt: skip
    finally:
        took = time.monotonic() - started
        load.stop()
        pacer.refill()
    print(f"rolling code and model update ({took:.0f} s): {load.report()}")
    assert run.returncode == 0, run.stdout[-4000:]
    model_after = json.loads(card.read_text())["version"]
    assert model_after != model_before
    # the new artifact is a new registry version, made @stable by the play and deployed
    stable = registry.resolve("@stable")
    assert stable.mlgate_version == model_after and stable.number > stable_before.number
    replicas = _api_containers(stack)
    images = {c.name: c.image.id for c in replicas}
    assert images.keys() == before.keys()
    assert len(set(images.values())) == 1, images  # every replica, v2 included, on one image
    assert set(images.values()).isdisjoint(before.values()), "no new image"
    for c in replicas:
        assert _build_marker_of(c, port) == marker, c.name
        assert _health_of(c, port)["model_version"] == str(stable.number), c.name
    _assert_replaced_one_at_a_time(replicas)
    # through the gateway: old code, then both (one replica at a time), then only the new code
    first_new = load.builds.index(marker)
    assert "" in load.builds[first_new:], "never saw old and new code serving side by side"
    assert load.builds[-8:] == [marker] * 8, load.builds[-8:]
    # v2, alone behind the debug route, was replaced while its surge twin (the route's backup,
    # already on the new version) answered the debug cohort; the twin is gone afterwards
    v2 = f"{stack.name}-api-v2-1"
    assert any(replica == f"{v2}-surge" for _, replica in load.seen), "the surge twin never served"
    assert not docker.from_env().containers.list(all=True, filters={"name": f"{v2}-surge"})
    load.assert_no_failure()
    assert_both_cohorts_served(load)
    # the replaced image's tag is gone once no container uses it: this stack keeps 1 tag
    keep = stack_settings().get("mlgate_image_keep", 3)
    repo = f"{stack.name}-api:"  # (an image ID may also carry other stacks' tags)
    found = docker.from_env().images.list(name=f"{stack.name}-api")
    tags = [t for i in found for t in i.tags if t.startswith(repo)]
    running = {t for c in replicas for t in c.image.tags if t.startswith(repo)}
    assert keep == 1 and set(tags) == running, (tags, running)
