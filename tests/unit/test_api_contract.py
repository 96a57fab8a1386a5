"""Exact v1/v2 response contracts, headers, health, model card, OpenAPI, 404/405."""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient

from model.predictor import Predictor

SENTENCE = "so angry at the rude driver this morning"


@pytest.fixture(params=[True, False], ids=["asgi-fast-route", "fastapi-route"])
def fast_route(request: pytest.FixtureRequest) -> bool:
    return request.param


def post(client: TestClient, payload: object, **headers: str):
    return client.post(
        "/predict",
        content=json.dumps(payload).encode(),
        headers={"content-type": "application/json", **headers},
    )


def test_v1_body_is_exactly_the_label(app_factory, predictor: Predictor, fast_route: bool) -> None:
    client = TestClient(app_factory("v1", fast_route=fast_route))
    r = post(client, {"sentence": SENTENCE})
    assert r.status_code == 200
    expected = predictor.predict(SENTENCE)
    assert expected in predictor.classes
    assert r.json() == {"prediction value": expected}
    assert r.content == json.dumps({"prediction value": expected}).encode()
    assert r.headers["content-type"] == "application/json"


def test_v2_adds_probabilities_and_debug_fields(
    app_factory, predictor: Predictor, fast_route: bool
) -> None:
    client = TestClient(app_factory("v2", fast_route=fast_route))
    r = post(client, {"sentence": SENTENCE})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {
        "prediction value", "prediction_proba_dict", "model_version", "variant", "replica",
        "inference_ms",
    }  # fmt: skip
    label, proba = predictor.predict_proba(SENTENCE)
    assert body["prediction value"] == label
    assert list(body["prediction_proba_dict"]) == predictor.classes
    assert body["prediction_proba_dict"] == dict(
        zip(predictor.classes, proba.tolist(), strict=True)
    )
    assert abs(sum(body["prediction_proba_dict"].values()) - 1.0) < 1e-9
    assert max(body["prediction_proba_dict"], key=body["prediction_proba_dict"].get) == label
    assert body["model_version"] == predictor.version
    assert body["variant"] == "v2"
    assert body["replica"] == "test-replica"
    assert isinstance(body["inference_ms"], float) and body["inference_ms"] >= 0


@pytest.mark.parametrize("variant", ["v1", "v2"])
@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/predict", 200),
        ("POST", "/predict", 422),
        ("GET", "/health", 200),
        ("GET", "/metrics", 200),
        ("GET", "/model", 200),
        ("GET", "/nope", 404),
        ("GET", "/predict", 405),
    ],
)
def test_every_response_has_the_headers(app_factory, variant, method, path, status) -> None:
    client = TestClient(app_factory(variant))
    payload = {"sentence": SENTENCE} if status == 200 else {"sentence": ""}
    r = client.request(method, path, json=payload if method == "POST" else None)
    assert r.status_code == status
    assert r.headers["x-mlgate-variant"] == variant
    assert r.headers["x-mlgate-replica"] == "test-replica"
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])


def test_request_id_is_echoed_or_generated(app_factory) -> None:
    client = TestClient(app_factory("v1"))
    r = post(client, {"sentence": SENTENCE}, **{"X-Request-ID": "abc-123.xyz"})
    assert r.headers["x-request-id"] == "abc-123.xyz"
    ids = {post(client, {"sentence": SENTENCE}).headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5
    # unusable client ids (too long, spaces) are replaced by a generated one
    r = post(client, {"sentence": SENTENCE}, **{"X-Request-ID": "x" * 200})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    r = post(client, {"sentence": SENTENCE}, **{"X-Request-ID": "has space"})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_health(app_factory, predictor: Predictor, variant: str) -> None:
    r = TestClient(app_factory(variant)).get("/health")
    assert r.status_code == 200
    assert r.json() == {
        "status": "ok", "variant": variant, "model_version": predictor.version,
        "replica": "test-replica",
    }  # fmt: skip


def test_model_card(app_factory, predictor: Predictor) -> None:
    r = TestClient(app_factory("v1")).get("/model")
    assert r.status_code == 200
    assert r.json() == predictor.card


def test_404_and_405_use_the_error_shape(app_factory) -> None:
    client = TestClient(app_factory("v1"))
    r = client.get("/nope")
    assert r.status_code == 404
    assert r.json() == {"error": "not_found", "detail": "no route for /nope"}
    r = client.get("/predict")
    assert r.status_code == 405
    assert r.json()["error"] == "method_not_allowed" and "GET" in r.json()["detail"]
    assert r.headers["allow"] == "POST"


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_openapi_documents_every_status(app_factory, variant: str) -> None:
    spec = TestClient(app_factory(variant, max_chars=123)).get("/openapi.json").json()
    op = spec["paths"]["/predict"]["post"]
    assert set(op["responses"]) == {"200", "400", "413", "415", "422", "500"}
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["sentence"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["sentence"]["maxLength"] == 123
    ok = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
    props = spec["components"]["schemas"][ok]["properties"]
    assert "prediction value" in props
    assert ("prediction_proba_dict" in props) == (variant == "v2")
    for path in ("/health", "/metrics", "/model"):
        assert "200" in spec["paths"][path]["get"]["responses"]


def test_every_response_names_the_model_version(
    app_factory, predictor: Predictor, fast_route: bool
) -> None:
    client = TestClient(app_factory("v1", fast_route=fast_route))
    for r in (post(client, {"sentence": SENTENCE}), post(client, {}), client.get("/health")):
        assert r.headers["x-model-version"] == predictor.version, r.status_code
