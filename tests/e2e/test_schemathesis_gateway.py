"""schemathesis through the gateway: HTTPS verified with the project CA, basic auth, and the
rate limit (10 r/s per client) respected by pacing at 8 r/s, so a 429 would be a failure.

The OpenAPI document is the API's own (read from a replica inside the network: the gateway
publishes only /predict and /health). Every check schemathesis has is on, except:

- operations ``GET /metrics`` and ``GET /model``: not published by the gateway (404 by
  design: internal endpoints);
- v2 (``X-Experiment-Group: debug``): only ``POST /predict`` (``/health`` always reports the v1
  pool).
"""

from __future__ import annotations

import json
from pathlib import Path

import docker
import pytest

from tests.unit.schemathesis_cli import assert_clean, run_schemathesis, summary

from .conftest import Pacer, Stack, stack_settings

CONFIG = """\
# every built-in check; the exclusions are explained in the test module's docstring
checks.enabled = true
"""

CASES = {
    # variant: (extra arguments, operations tested, minimum test cases)
    "v1": (["--exclude-path", "/metrics", "--exclude-path", "/model"], 2, 60),
    "v2": (["--include-path", "/predict", "-H", "X-Experiment-Group: debug"], 1, 25),
}


def openapi_of(stack: Stack, variant: str) -> dict:
    port = stack_settings().get("mlgate_api_port", 8000)
    container = docker.from_env().containers.get(f"{stack.name}-api-{variant}-1")
    code, out = container.exec_run(
        [
            "python",
            "-c",
            "import urllib.request; print(urllib.request.urlopen("
            f"'http://127.0.0.1:{port}/openapi.json').read().decode())",
        ]
    )
    assert code == 0, out
    return json.loads(out)


@pytest.mark.parametrize("variant", sorted(CASES))
def test_openapi_contract_holds_through_the_gateway(
    stack: Stack, pacer: Pacer, tmp_path: Path, variant: str
) -> None:
    extra, operations, min_cases = CASES[variant]
    schema = tmp_path / "openapi.json"
    schema.write_text(json.dumps(openapi_of(stack, variant)))
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    pacer.refill()  # paced at 8 r/s from a full bucket: never above the rate limit
    proc, report = run_schemathesis(
            str(schema),
        "--url", stack.https,
        "--auth", f"{stack.user}:{stack.password}",
        "--tls-verify", str(stack.ca),
        "--rate-limit", "8/s",
        "--max-examples", "50" if variant == "v1" else "15",
        "--request-timeout", "30",  # a hang guard, not a latency claim
        *extra,
        workdir=tmp_path,
        config=config,
    )  # fmt: skip
    print(f"schemathesis gateway {variant}: {summary(report)}")
    assert_clean(proc, report, operations=operations, min_cases=min_cases)
