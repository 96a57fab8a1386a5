"""Run the schemathesis CLI and read its JSON report (used by the unit and e2e suites).

The CLI, not the pytest plugin: one run covers every operation and every phase (examples,
coverage, fuzzing), and its JSON report gives the figures we print and assert on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


def run_schemathesis(
    location: str,
    *args: str,
    workdir: Path,
    config: Path | None = None,
    timeout: float = 900,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run ``schemathesis [--config-file CONFIG] run LOCATION ARGS`` in ``workdir`` (it keeps
    its example database there); return the finished process and the parsed JSON report.

    ``timeout`` only guards against a hang: it is not a speed claim. Beside Molecule at nice 15
    on a 2-core machine a run that takes 6 s idle took over 90 s (CI, stop 20), so the bound is
    far above any run that makes progress.

    Checks given on the command line override a config file's per-operation settings: a run
    that excludes a check for some operations enables the checks in its config file instead.
    """
    assert SCHEMATHESIS.exists(), f"{SCHEMATHESIS} missing: run `make venv` (requirements/dev.txt)"
    report = workdir / "schemathesis.json"
    cmd = [
        str(SCHEMATHESIS), *(["--config-file", str(config)] if config else []),
        "run", location, *args,
        "--report", "json", "--report-json-path", str(report),
        "--output-truncate", "false", "--no-color",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert report.exists(), f"no schemathesis report:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    return proc, json.loads(report.read_text())


def summary(report: dict[str, Any]) -> str:
    ops, cases = report["operations"], report["test_cases"]
    return (
        f"{ops['tested']}/{ops['total']} operations, {cases['generated']} test cases, "
        f"{cases['with_failures']} with failures ({cases['unique_failures']} unique), "
        f"{len(report['errors'])} errors, seed {report['seed']}, "
        f"{report['running_time']:.1f} s"
    )


def assert_clean(
    proc: subprocess.CompletedProcess[str],
    report: dict[str, Any],
    *,
    operations: int,
    min_cases: int,
) -> None:
    """No failure and no error, every selected operation tested, enough test cases generated
    (a run that silently tests nothing must fail too)."""
    detail = f"{summary(report)}\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
    assert report["complete"], detail
    assert report["failures"] == [], detail
    assert report["errors"] == [], detail
    assert report["test_cases"]["with_failures"] == 0, detail
    assert report["operations"]["tested"] == operations, detail
    assert report["operations"]["errored"] == 0, detail
    assert report["test_cases"]["generated"] >= min_cases, detail
    assert proc.returncode == 0, detail
