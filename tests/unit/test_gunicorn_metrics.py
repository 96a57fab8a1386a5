"""A real gunicorn (2 workers) on 127.0.0.1: metrics are summed exactly across workers."""

from __future__ import annotations

import http.client
import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.unit.conftest import SENTENCES, free_port, serve_api

ROOT = Path(__file__).resolve().parents[2]
N_OK = 200
BATCHES = 10
N_BAD = 12


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        name, _, labels = series.partition("{")
        pairs = frozenset(
            tuple(kv.split("=", 1)) for kv in labels.rstrip("}").replace('"', "").split(",") if kv
        )
        out[(name, pairs)] = float(value)
    return out


def metric(m: dict, name: str, **labels: str) -> float:
    return m.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def server(model_dir: Path, tmp_path: Path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLGATE_", "PROMETHEUS_"))}
    env.pop("HOME", None)
    env.update({
        "MLGATE_VARIANT": "v2", "MLGATE_BIND": f"127.0.0.1:{port}", "MLGATE_WORKERS": "2",
        "MLGATE_MODEL_DIR": str(model_dir), "MLGATE_AUDIT_DIR": str(tmp_path / "audit"),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"), "MLGATE_REPLICA": "g1",
    })  # fmt: skip
    # stale file from a "previous run": must be wiped at start
    (tmp_path / "prom").mkdir()
    (tmp_path / "prom" / "counter_999999.db").write_bytes(b"\0" * 16)
    with serve_api(env, tmp_path / "server.log"):
        yield port, tmp_path


def one_request(port: int, body: bytes) -> tuple[int, dict]:
    # a new connection per request, so the workers share the accepts
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, json.loads(r.read())
    finally:
        c.close()


def test_metrics_are_summed_across_two_workers(server, model_dir: Path) -> None:
    port, tmp_path = server
    # every series names the variant and the model version it serves
    mv = json.loads((model_dir / "model_card.json").read_text())["version"]
    sentences = [s for ss in SENTENCES.values() for s in ss]

    def worker_pids() -> set[str]:  # each worker that counted a request has its own file
        return {
            p.name.split("_")[1].split(".")[0] for p in (tmp_path / "prom").glob("counter_*.db")
        }

    # Which worker accepts a connection is the kernel's choice: on a busy machine one worker
    # may take a whole batch. Send batches (a bounded number) until both have served.
    results: list[tuple[int, dict]] = []
    bad = [b'{"sentence": ""}'] * N_BAD
    for batch in range(BATCHES):
        bodies = [
            json.dumps({"sentence": sentences[i % len(sentences)]}).encode() for i in range(N_OK)
        ] + (bad if batch == 0 else [])
        with ThreadPoolExecutor(8) as pool:
            results += pool.map(lambda b: one_request(port, b), bodies)
        if len(worker_pids()) >= 2:
            break
    n_ok = N_OK * (batch + 1)
    statuses = Counter(status for status, _ in results)
    assert statuses == {200: n_ok, 422: N_BAD}
    labels = Counter(body["prediction value"] for status, body in results if status == 200)

    # both workers served requests: each has its own counter file
    pids = worker_pids()
    assert "999999" not in pids  # stale files were wiped
    assert len(pids) >= 2, f"{pids} after {len(results)} requests"

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/metrics")
    m = parse_metrics(c.getresponse().read().decode())
    ours = {"variant": "v2", "model_version": mv}
    for status, count in (("200", n_ok), ("422", N_BAD)):
        assert metric(m, "mlgate_requests_total", **ours, handler="predict", status=status) == count
    for label, count in labels.items():
        assert metric(m, "mlgate_predictions_total", **ours, label=label) == count
    total_predictions = sum(v for (n, _), v in m.items() if n == "mlgate_predictions_total")
    assert total_predictions == n_ok
    latency = metric(m, "mlgate_request_duration_seconds_count", **ours, handler="predict")
    assert latency == n_ok + N_BAD
    info = [v for (n, _), v in m.items() if n == "mlgate_model_info"]
    assert info == [1.0]  # one series, not one per worker, not 2.0
    assert metric(m, "mlgate_audit_log_errors_total", **ours) == 0
