"""A variant with a reference model (MLGATE_REFERENCE_MODEL_DIR: a shadow's candidate beside
the stable model) compares every prediction with the reference's on the same input: exact
agreement counts per pair of versions, the label pairs, and both labels in the audit record.
The default variants have no reference and answer exactly as before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from api.audit import AuditLog
from model.dataset import load_dataset
from model.predictor import Predictor, load_predictor
from model.train import save_artifacts, train
from tests.unit.conftest import SENTENCES, make_settings, serve_api, write_csv
from tests.unit.test_audit import read_all
from tests.unit.test_launcher import assert_refused, launch

# the training sentences and others: the two models agree on some, not on all
PROBES = [s for texts in SENTENCES.values() for s in texts[:4]] + [
    "no idea what to think about this",
    "the bus was late again and I missed the meeting",
    "lovely surprise from my sister today",
    "scared and angry and sad all at once",
    "what a day",
    "my exam results are out tomorrow",
]


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second version: half of each label's sentences given the next label, so that it
    disagrees with the session's model on some inputs."""
    labels = list(SENTENCES)
    rows = [
        (labels[(i + (k < 5)) % len(labels)], text)
        for i, label in enumerate(labels)
        for k, text in enumerate(SENTENCES[label])
    ]
    csv = write_csv(tmp_path_factory.mktemp("other-data") / "other.csv", rows)
    out = tmp_path_factory.mktemp("other-artifacts")
    pipeline, card = train(load_dataset(csv))
    save_artifacts(out, pipeline, card)
    return out


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_every_prediction_is_compared_with_the_reference_exactly(
    tmp_path: Path, model_dir: Path, other_model_dir: Path, predictor: Predictor
) -> None:
    from api.app import create_app

    candidate = load_predictor(other_model_dir)
    assert candidate.version != predictor.version
    settings = make_settings(tmp_path, other_model_dir, variant="shadow")
    audit = AuditLog(settings.audit_dir, settings.audit_max_bytes, settings.audit_backups, False)
    app = create_app(settings, candidate, audit, reference=predictor)
    client = TestClient(app)
    pair = {"variant": "shadow", "model_version": candidate.version}
    pair["reference_version"] = predictor.version
    before = {a: sample("mlgate_agreement_total", **pair, agree=a) for a in ("true", "false")}
    expected = [(candidate.predict(s), predictor.predict(s)) for s in PROBES]
    agree = sum(c == r for c, r in expected)
    assert 0 < agree < len(PROBES), "the two test models must agree on some inputs only"

    for i, sentence in enumerate(PROBES):
        r = client.post("/predict", json={"sentence": sentence}, headers={"X-Request-ID": f"q{i}"})
        assert r.status_code == 200
        # the answer is the variant's own model's (a shadow's answer is discarded anyway)
        assert r.json() == {"prediction value": expected[i][0]}

    after = {a: sample("mlgate_agreement_total", **pair, agree=a) for a in ("true", "false")}
    assert after["true"] - before["true"] == agree
    assert after["false"] - before["false"] == len(PROBES) - agree
    for c, ref in set(expected):
        n = sum(1 for e in expected if e == (c, ref))
        got = sample("mlgate_agreement_labels_total", **pair, label=c, reference_label=ref)
        assert got >= n  # (>=: earlier tests of the module may have counted the same pair)
    records = {rec["request_id"]: rec for rec in read_all(settings.audit_dir)}
    for i, (c, ref) in enumerate(expected):
        rec = records[f"q{i}"]
        assert (rec["label"], rec["reference_label"]) == (c, ref)
        assert rec["model_version"] == candidate.version
        assert rec["reference_version"] == predictor.version
    health = client.get("/health").json()
    assert health["reference_version"] == predictor.version


def test_a_variant_without_reference_reports_no_comparison(app_factory, tmp_path: Path) -> None:
    client = TestClient(app_factory("v1"))
    r = client.post("/predict", json={"sentence": "what a day"}, headers={"X-Request-ID": "p1"})
    assert r.status_code == 200
    assert "reference_version" not in client.get("/health").json()
    (record,) = [rec for rec in read_all(tmp_path / "audit") if rec["request_id"] == "p1"]
    assert "reference_label" not in record and "reference_version" not in record
    series = [
        line
        for line in client.get("/metrics").text.splitlines()
        if line.startswith("mlgate_agreement")
    ]
    assert not [line for line in series if 'variant="v1"' in line], series


def test_the_launcher_checks_the_reference_model(
    model_dir: Path, other_model_dir: Path, tmp_path: Path
) -> None:
    res = launch(
        {"MLGATE_MODEL_DIR": str(model_dir), "MLGATE_REFERENCE_MODEL_DIR": str(tmp_path / "no")},
        tmp_path,
    )
    assert_refused(res, "reference model (MLGATE_REFERENCE_MODEL_DIR)", "does not exist")


def test_a_served_shadow_compares_through_gunicorn(
    model_dir: Path, other_model_dir: Path, tmp_path: Path
) -> None:
    """The production launcher with a reference: the comparison happens in the workers and is
    exported through the multiprocess metrics."""
    import http.client

    from tests.unit.conftest import free_port

    port = free_port()
    env = {
        "MLGATE_VARIANT": "shadow",
        "MLGATE_BIND": f"127.0.0.1:{port}",
        "MLGATE_MODEL_DIR": str(other_model_dir),
        "MLGATE_REFERENCE_MODEL_DIR": str(model_dir),
        "MLGATE_AUDIT_DIR": str(tmp_path / "audit"),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
        "MLGATE_WORKERS": "1",
        "PATH": "/usr/bin:/bin",
    }
    with serve_api(env, tmp_path / "server.log"):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for s in PROBES:
            c.request(
                "POST",
                "/predict",
                json.dumps({"sentence": s}),
                {"content-type": "application/json"},
            )
            assert c.getresponse().read()
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
    total = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("mlgate_agreement_total{")
    )
    assert total == len(PROBES), text
