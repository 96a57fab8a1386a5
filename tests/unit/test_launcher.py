"""`python -m api` refuses to start, with one line on stderr and exit 2, on any problem."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import joblib
import pytest

ROOT = Path(__file__).resolve().parents[2]


def launch(env_overrides: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLGATE_", "PROMETHEUS_"))}
    env.pop("HOME", None)  # must work without HOME
    env.update({
        "MLGATE_BIND": "127.0.0.1:1", "MLGATE_AUDIT_DIR": str(tmp_path / "audit"),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"), **env_overrides,
    })  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "api"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,  # a hang guard (the launcher refuses in ~1 s idle; niced beside Molecule)
    )  # fmt: skip


def assert_refused(res: subprocess.CompletedProcess[str], *words: str) -> None:
    assert res.returncode == 2, res
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("mlgate-api: refusing to start: ")
    for w in words:
        assert w in lines[0], lines[0]
    assert res.stdout == ""


def copy_model(model_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(model_dir, dst)
    return dst


def test_missing_model_dir(tmp_path: Path) -> None:
    res = launch({"MLGATE_MODEL_DIR": str(tmp_path / "nope")}, tmp_path)
    assert_refused(res, str(tmp_path / "nope"), "does not exist")


def test_missing_model_file(model_dir: Path, tmp_path: Path) -> None:
    d = copy_model(model_dir, tmp_path)
    (d / "model.joblib").unlink()
    assert_refused(launch({"MLGATE_MODEL_DIR": str(d)}, tmp_path), "model.joblib", "missing")


def test_corrupt_model(model_dir: Path, tmp_path: Path) -> None:
    d = copy_model(model_dir, tmp_path)
    (d / "model.joblib").write_bytes(b"\x80\x04garbage\nmore garbage")
    assert_refused(launch({"MLGATE_MODEL_DIR": str(d)}, tmp_path), "unreadable")


def test_sklearn_version_mismatch(model_dir: Path, tmp_path: Path) -> None:
    d = copy_model(model_dir, tmp_path)
    payload = joblib.load(d / "model.joblib")
    payload["sklearn_version"] = "1.0.2"
    joblib.dump(payload, d / "model.joblib")
    assert_refused(launch({"MLGATE_MODEL_DIR": str(d)}, tmp_path), "scikit-learn 1.0.2")


def test_card_sklearn_version_mismatch(model_dir: Path, tmp_path: Path) -> None:
    d = copy_model(model_dir, tmp_path)
    card = json.loads((d / "model_card.json").read_text())
    card["sklearn_version"] = "1.0.2"
    (d / "model_card.json").write_text(json.dumps(card))
    assert_refused(launch({"MLGATE_MODEL_DIR": str(d)}, tmp_path), "scikit-learn 1.0.2")


@pytest.mark.parametrize(
    ("name", "value"),
    [("MLGATE_VARIANT", "V 3"), ("MLGATE_WORKERS", "many"), ("MLGATE_BIND", "nowhere")],
)
def test_invalid_setting(model_dir: Path, tmp_path: Path, name: str, value: str) -> None:
    res = launch({"MLGATE_MODEL_DIR": str(model_dir), name: value}, tmp_path)
    assert_refused(res, "invalid setting", name)


def test_unwritable_metrics_dir(model_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = launch(
        {"MLGATE_MODEL_DIR": str(model_dir), "PROMETHEUS_MULTIPROC_DIR": str(blocker / "p")},
        tmp_path,
    )
    assert_refused(res, "metrics directory")
