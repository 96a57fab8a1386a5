"""Every kind of bad input gets a 4xx with a JSON body naming the problem, never a 5xx."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

JSON = {"content-type": "application/json"}

CASES = [
    # (id, body bytes, headers, status, error code, word expected in detail)
    ("invalid-json", b'{"sentence": "hi"', JSON, 400, "invalid_json", "not valid JSON"),
    ("trailing-garbage", b'{"sentence": "hi"} x', JSON, 400, "invalid_json", "not valid JSON"),
    ("empty-body", b"", JSON, 400, "invalid_json", "not valid JSON"),
    ("nan", b'{"sentence": NaN}', JSON, 400, "invalid_json", "NaN"),
    ("infinity", b'{"sentence": "x", "n": Infinity}', JSON, 400, "invalid_json", "Infinity"),
    ("minus-infinity", b"-Infinity", JSON, 400, "invalid_json", "Infinity"),
    ("non-utf8", b'{"sentence": "caf\xe9"}', JSON, 400, "invalid_encoding", "UTF-8"),
    ("utf16", '{"sentence": "hi"}'.encode("utf-16"), JSON, 400, "invalid_encoding", "UTF-8"),
    ("text-plain", b'{"sentence": "hi"}', {"content-type": "text/plain"}, 415,
     "unsupported_media_type", "text/plain"),
    ("form", b"sentence=hi", {"content-type": "application/x-www-form-urlencoded"}, 415,
     "unsupported_media_type", "application/json"),
    ("no-content-type", b'{"sentence": "hi"}', {}, 415, "unsupported_media_type", "missing"),
    ("latin1-charset", b'{"sentence": "hi"}', {"content-type": "application/json; charset=latin-1"},
     415, "unsupported_media_type", "charset"),
    ("array", b'["hi"]', JSON, 422, "not_an_object", "an array"),
    ("string", b'"hi"', JSON, 422, "not_an_object", "a string"),
    ("null", b"null", JSON, 422, "not_an_object", "null"),
    ("missing-field", b"{}", JSON, 422, "missing_field", "'sentence'"),
    ("typo-field", b'{"sentance": "hi"}', JSON, 422, "unknown_field", "'sentance'"),
    ("extra-field", b'{"sentence": "hi", "debug": true}', JSON, 422, "unknown_field", "'debug'"),
    ("number", b'{"sentence": 42}', JSON, 422, "wrong_type", "a number"),
    ("float", b'{"sentence": 1e400}', JSON, 422, "wrong_type", "a number"),
    ("bool", b'{"sentence": true}', JSON, 422, "wrong_type", "a boolean"),
    ("null-field", b'{"sentence": null}', JSON, 422, "wrong_type", "null"),
    ("list-field", b'{"sentence": ["hi"]}', JSON, 422, "wrong_type", "an array"),
    ("object-field", b'{"sentence": {"a": 1}}', JSON, 422, "wrong_type", "an object"),
    ("empty", b'{"sentence": ""}', JSON, 422, "empty_sentence", "empty"),
    ("whitespace", b'{"sentence": " \\t\\n\\u00a0\\u3000 "}', JSON, 422, "empty_sentence",
     "whitespace"),
    ("too-long", b'{"sentence": "' + b"a" * 5001 + b'"}', JSON, 422, "sentence_too_long", "5000"),
    ("deep-nesting", b"[" * 100000 + b"]" * 100000, JSON, 413, "payload_too_large", "bytes"),
    ("huge-body", b'{"sentence": "' + b"a" * 70000 + b'"}', JSON, 413, "payload_too_large",
     "65536"),
]  # fmt: skip


@pytest.fixture(params=[True, False], ids=["asgi-fast-route", "fastapi-route"])
def client(request: pytest.FixtureRequest, app_factory) -> TestClient:
    return TestClient(app_factory("v2", fast_route=request.param))


@pytest.mark.parametrize(
    ("body", "headers", "status", "code", "word"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_bad_input(client: TestClient, body, headers, status, code, word) -> None:
    r = client.post("/predict", content=body, headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    data = r.json()
    assert set(data) == {"error", "detail"}
    assert data["error"] == code
    assert word in data["detail"]


def test_deeply_nested_json_under_the_size_limit(client: TestClient) -> None:
    body = b"[" * 30000 + b"]" * 30000
    r = client.post("/predict", content=body, headers=JSON)
    assert r.status_code in (400, 422)
    assert r.json()["error"] in ("invalid_json", "not_an_object")


def test_limit_is_configurable(app_factory) -> None:
    client = TestClient(app_factory("v1", max_chars=10))
    ok = client.post("/predict", json={"sentence": "a" * 10})
    assert ok.status_code == 200
    r = client.post("/predict", json={"sentence": "a" * 11})
    assert r.status_code == 422 and "limit is 10" in r.json()["detail"]


def test_length_counts_characters_not_bytes(app_factory) -> None:
    client = TestClient(app_factory("v1", max_chars=3))
    assert client.post("/predict", json={"sentence": "ééé"}).status_code == 200
    assert client.post("/predict", json={"sentence": "😢😢😢"}).status_code == 200


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8",
                     "Application/JSON;charset=UTF-8", 'application/json; charset="utf-8"'],
)  # fmt: skip
def test_accepted_content_types(client: TestClient, content_type: str) -> None:
    r = client.post(
        "/predict", content=b'{"sentence": "hi"}', headers={"content-type": content_type}
    )
    assert r.status_code == 200


def test_odd_but_valid_sentences_are_predicted(client: TestClient) -> None:
    for sentence in ["x", "😢", "\x00", "a\u0000b", "\ud83d", " padded ", "<script>", "1e400"]:
        body = json.dumps({"sentence": sentence}).encode()  # ASCII escapes, lone surrogate ok
        r = client.post("/predict", content=body, headers=JSON)
        assert r.status_code == 200, (sentence, r.text)
