"""schemathesis against the API's own OpenAPI document, served as in production.

``python -m api`` (the production launcher: settings and model checks, then gunicorn with
2 uvicorn workers and the fast /predict route) on a free 127.0.0.1 port, with the session's
small model (the HTTP contract does not depend on which model is loaded), once per variant.
Every check schemathesis has (``--checks all``: no 5xx, status codes, content types, headers
and bodies as documented, invalid input rejected, valid input accepted, 405 + ``Allow`` for
undocumented methods, ...) over the examples, coverage and fuzzing phases. No exclusions.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.conftest import free_port, serve_api
from tests.unit.schemathesis_cli import assert_clean, run_schemathesis, summary

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = 4  # POST /predict, GET /health, GET /metrics, GET /model
MAX_EXAMPLES = "150"  # per operation and phase; ~6 s per variant here


@pytest.fixture(params=["v1", "v2"])
def served(request: pytest.FixtureRequest, model_dir: Path, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLGATE_", "PROMETHEUS_"))}
    env.update({
        "MLGATE_VARIANT": request.param, "MLGATE_BIND": f"127.0.0.1:{port}",
        "MLGATE_WORKERS": "2", "MLGATE_MODEL_DIR": str(model_dir),
        "MLGATE_AUDIT_DIR": str(tmp_path / "audit"),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"), "MLGATE_REPLICA": "st-1",
    })  # fmt: skip
    log_path = tmp_path / "server.log"
    with serve_api(env, log_path):
        yield f"http://127.0.0.1:{port}"
    # whatever schemathesis sent, no worker crashed or logged an unhandled error
    server_log = log_path.read_text()
    assert "Traceback" not in server_log, server_log[-4000:]
    assert "predict failed" not in server_log, server_log[-4000:]


def test_openapi_contract_holds_under_schemathesis(served: str, tmp_path: Path) -> None:
    proc, report = run_schemathesis(
        f"{served}/openapi.json",
        "--checks", "all",
        "--max-examples", MAX_EXAMPLES,
        "--request-timeout", "30",  # a hang guard, not a latency claim (niced beside Molecule)
        workdir=tmp_path,
    )  # fmt: skip
    print(f"schemathesis direct {served}: {summary(report)}")
    assert_clean(proc, report, operations=OPERATIONS, min_cases=150)
