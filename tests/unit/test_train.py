from __future__ import annotations

import json
from pathlib import Path

import joblib
import pytest
import sklearn

from model import train as train_mod
from model.train import PARAMS, compute_version, existing_version, main

BASE = {
    "data_sha256": "d" * 64,
    "code_digest": "c" * 64,
    "params": PARAMS,
    "sklearn_version": "1.9.1",
}


def test_version_is_deterministic_12_hex() -> None:
    v = compute_version(**BASE)
    assert v == compute_version(**BASE)
    assert len(v) == 12 and int(v, 16) >= 0


@pytest.mark.parametrize(
    "change",
    [
        {"data_sha256": "e" * 64},
        {"code_digest": "f" * 64},
        {"params": {**PARAMS, "logreg": {**PARAMS["logreg"], "C": 2.0}}},
        {"sklearn_version": "1.8.0"},
        {"revision": "1700000000"},
    ],
)
def test_version_changes_with_every_input(change: dict) -> None:
    assert compute_version(**{**BASE, **change}) != compute_version(**BASE)


def test_artifacts_and_card(model_dir: Path, tiny_csv: Path) -> None:
    card = json.loads((model_dir / "model_card.json").read_text())
    payload = joblib.load(model_dir / "model.joblib")
    assert payload["sklearn_version"] == sklearn.__version__ == card["sklearn_version"]
    assert payload["version"] == card["version"]
    assert card["classes"] == ["anger", "happiness", "sadness", "worry"]
    assert card["rows"] == {"read": 40, "dropped_empty": 0, "used": 40, "train": 32, "held_out": 8}
    assert 0.0 <= card["metrics"]["held_out_accuracy"] <= 1.0
    assert 0.0 <= card["metrics"]["held_out_macro_f1"] <= 1.0
    assert card["training_seconds"] >= 0
    assert list(payload["pipeline"].classes_) == card["classes"]


def test_cli_trains_then_reports_up_to_date(tmp_path: Path, tiny_csv: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["--data", str(tiny_csv), "--out", str(out), "--if-stale"]) == 0
    first = capsys.readouterr().out
    version = existing_version(out)
    assert version is not None and f"model version {version}" in first
    assert "fitting" in first  # progress is shown

    assert main(["--data", str(tiny_csv), "--out", str(out), "--if-stale"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("model up to date")
    assert version in lines[0]
    assert lines[1].startswith("registry: already registered as mlgate-emotions version")

    # a new revision is a new version, so --if-stale trains again
    assert main(["--data", str(tiny_csv), "--out", str(out), "--if-stale", "--revision", "r2"]) == 0
    assert "model up to date" not in capsys.readouterr().out
    retrained = existing_version(out)
    assert retrained not in (None, version)

    # without --revision the current artifacts' revision is kept: a forced retrain
    # (make retrain) stays current for the next deployment instead of being undone
    assert main(["--data", str(tiny_csv), "--out", str(out), "--if-stale"]) == 0
    assert capsys.readouterr().out.startswith("model up to date")
    assert existing_version(out) == retrained


def test_if_stale_retrains_when_data_changes(tmp_path: Path, tiny_csv: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["--data", str(tiny_csv), "--out", str(out)]) == 0
    v1 = existing_version(out)
    changed = tmp_path / "changed.csv"
    changed.write_text(tiny_csv.read_text() + "9999,anger,I am furious about this\n")
    capsys.readouterr()
    assert main(["--data", str(changed), "--out", str(out), "--if-stale"]) == 0
    assert "model up to date" not in capsys.readouterr().out
    assert existing_version(out) != v1


def test_missing_dataset_exits_2_with_message(tmp_path: Path, capsys) -> None:
    assert main(["--data", str(tmp_path / "nope.csv"), "--out", str(tmp_path)]) == 2
    assert str(tmp_path / "nope.csv") in capsys.readouterr().err


def test_default_out_dir_is_beside_the_package() -> None:
    assert Path(train_mod.__file__).resolve().parent / "artifacts" == train_mod.DEFAULT_OUT_DIR
