from __future__ import annotations

import json
import shutil
from pathlib import Path

import joblib
import numpy as np
import pytest

from model.predictor import ModelError, Predictor, load_predictor
from tests.unit.conftest import SENTENCES

EXTRA = [
    "completely unrelated words xylophone zebra",  # no known token: scores = intercept
    "",
    "HAPPY happy HaPpY day day day",
    "worried worried angry sad happy",
    "the a an of",  # stop words only
    "émotions ünïcode ✨ sad 😢",
]


def all_sentences() -> list[str]:
    return [s for texts in SENTENCES.values() for s in texts] + EXTRA


def test_fast_path_equals_pipeline_on_tiny_model(predictor: Predictor) -> None:
    pipe = predictor.pipeline
    texts = all_sentences()
    labels = pipe.predict(texts)
    proba = pipe.predict_proba(texts)
    for i, text in enumerate(texts):
        label, p = predictor.predict_proba(text)
        assert label == labels[i] == predictor.predict(text), text
        assert np.max(np.abs(p - proba[i])) < 1e-12, text
        assert abs(p.sum() - 1.0) < 1e-12


def test_fast_path_learned_something(predictor: Predictor) -> None:
    # sentences seen in training are mostly classified as their own label
    hits = sum(predictor.predict(s) == label for label, ss in SENTENCES.items() for s in ss)
    assert hits >= 30


def test_binary_model_matches_pipeline(tmp_path: Path) -> None:
    from model.train import build_pipeline

    texts = SENTENCES["happiness"] + SENTENCES["sadness"]
    labels = ["happiness"] * 10 + ["sadness"] * 10
    pipe = build_pipeline().fit(texts, labels)
    fast = Predictor(pipe)
    for text in [*texts, *EXTRA]:
        label, p = fast.predict_proba(text)
        assert label == pipe.predict([text])[0]
        assert np.max(np.abs(p - pipe.predict_proba([text])[0])) < 1e-12


def copy_model(model_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "m"
    shutil.copytree(model_dir, dst)
    return dst


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_predictor(tmp_path / "nope")


def test_missing_model_file(model_dir: Path, tmp_path: Path) -> None:
    d = copy_model(model_dir, tmp_path)
    (d / "model.joblib").unlink()
    with pytest.raises(ModelError, match=r"model\.joblib is missing"):
        load_predictor(d)


def test_missing_card(model_dir: Path, tmp_path: Path) -> None:
    d = copy_model(model_dir, tmp_path)
    (d / "model_card.json").unlink()
    with pytest.raises(ModelError, match=r"model_card\.json is missing"):
        load_predictor(d)


def test_corrupt_model_file(model_dir: Path, tmp_path: Path) -> None:
    d = copy_model(model_dir, tmp_path)
    (d / "model.joblib").write_bytes(b"this is not a pickle")
    with pytest.raises(ModelError, match="unreadable"):
        load_predictor(d)


def test_sklearn_version_mismatch_in_payload(model_dir: Path, tmp_path: Path) -> None:
    d = copy_model(model_dir, tmp_path)
    payload = joblib.load(d / "model.joblib")
    payload["sklearn_version"] = "0.24.2"
    joblib.dump(payload, d / "model.joblib")
    with pytest.raises(ModelError, match=r"scikit-learn 0\.24\.2"):
        load_predictor(d)


def test_sklearn_version_mismatch_in_card(model_dir: Path, tmp_path: Path) -> None:
    d = copy_model(model_dir, tmp_path)
    card = json.loads((d / "model_card.json").read_text())
    card["sklearn_version"] = "0.24.2"
    (d / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match=r"scikit-learn 0\.24\.2"):
        load_predictor(d)


def test_card_and_model_disagree(model_dir: Path, tmp_path: Path) -> None:
    d = copy_model(model_dir, tmp_path)
    card = json.loads((d / "model_card.json").read_text())
    card["version"] = "000000000000"
    (d / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="does not match"):
        load_predictor(d)


def test_foreign_payload(model_dir: Path, tmp_path: Path) -> None:
    d = copy_model(model_dir, tmp_path)
    joblib.dump({"hello": "world"}, d / "model.joblib")
    with pytest.raises(ModelError, match="not an mlgate model payload"):
        load_predictor(d)


def test_loaded_predictor_carries_card(model_dir: Path) -> None:
    p = load_predictor(model_dir)
    card = json.loads((model_dir / "model_card.json").read_text())
    assert p.version == card["version"] and p.card == card
    assert p.classes == card["classes"]


def _with_record(model_dir: Path, tmp_path: Path, **change: object) -> Path:
    import hashlib

    d = copy_model(model_dir, tmp_path)
    card = json.loads((d / "model_card.json").read_text())
    record = {
        "model": "mlgate-emotions",
        "version": 4,
        "mlgate_version": card["version"],
        "sha256": hashlib.sha256((d / "model.joblib").read_bytes()).hexdigest(),
        **change,
    }
    (d / "registry.json").write_text(json.dumps(record))
    return d


def test_a_registry_record_makes_the_registry_version_the_model_version(
    model_dir: Path, tmp_path: Path
) -> None:
    p = load_predictor(_with_record(model_dir, tmp_path))
    assert p.version == "4" and p.registry["version"] == 4
    assert p.card == json.loads((model_dir / "model_card.json").read_text())


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"sha256": "0" * 64}, r"has sha256 [0-9a-f]{64}, registry version 4 recorded 0{64}"),
        ({"mlgate_version": "000000000000"}, r"is for model version '000000000000', .* says"),
        ({"version": "4"}, "has no version number and sha256"),
        ({"version": 0}, "has no version number and sha256"),
        ({"version": True}, "has no version number and sha256"),
    ],
)
def test_a_registry_record_that_does_not_match_the_artifact_is_refused(
    model_dir: Path, tmp_path: Path, change: dict, says: str
) -> None:
    with pytest.raises(ModelError, match=says):
        load_predictor(_with_record(model_dir, tmp_path, **change))


def test_an_unreadable_registry_record_is_refused(model_dir: Path, tmp_path: Path) -> None:
    d = _with_record(model_dir, tmp_path)
    (d / "registry.json").write_text("{")
    with pytest.raises(ModelError, match=r"registry record .* is unreadable"):
        load_predictor(d)
