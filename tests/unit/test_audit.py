from __future__ import annotations

import hashlib
import hmac
import json
import multiprocessing
from pathlib import Path

from fastapi.testclient import TestClient

from api.audit import FILENAME, AuditLog


def read_all(directory: Path) -> list[dict]:
    lines = []
    for f in sorted(directory.glob(FILENAME + "*")):
        if f.name.endswith(".lock"):
            continue
        for line in f.read_text().splitlines():
            lines.append(json.loads(line))
    return lines


def rec(log: AuditLog, i: int, sentence: str = "hello world") -> bool:
    return log.record(
        request_id=f"r{i}", variant="v1", replica="rep", label="joy", latency_ms=0.5,
        sentence=sentence, model_version="abc",
    )  # fmt: skip


def test_prediction_is_logged_without_text_by_default(app_factory, tmp_path: Path) -> None:
    client = TestClient(app_factory("v1"))
    sentence = "so angry at the rude driver ✨"
    r = client.post("/predict", json={"sentence": sentence}, headers={"X-Request-ID": "req-1"})
    assert r.status_code == 200
    (entry,) = read_all(tmp_path / "audit")
    assert entry["request_id"] == "req-1"
    assert entry["variant"] == "v1" and entry["replica"] == "test-replica"
    assert entry["label"] == r.json()["prediction value"]
    assert entry["sentence_chars"] == len(sentence)
    assert entry["latency_ms"] >= 0 and entry["ts"].endswith("Z")
    assert "sentence" not in entry
    # without a key, no hash of the sentence at all (an unsalted one is a dictionary away)
    assert not any("sha256" in k for k in entry) and "audit_key_id" not in entry


KEY = b"k" * 16 + b"0123456789abcdef0123456789abcdef"


def test_with_a_key_the_sentence_hash_is_an_hmac_under_that_key(
    app_factory, tmp_path: Path
) -> None:
    client = TestClient(app_factory("v1", audit_key=KEY))
    for sentence in ("yes", "so angry at the rude driver ✨"):
        assert client.post("/predict", json={"sentence": sentence}).status_code == 200
    first, second = read_all(tmp_path / "audit")
    for entry, sentence in ((first, "yes"), (second, "so angry at the rude driver ✨")):
        expected = hmac.new(KEY, sentence.encode(), hashlib.sha256).hexdigest()
        assert entry["sentence_hmac_sha256"] == expected
        # not what a dictionary of plain SHA-256 digests would find
        assert entry["sentence_hmac_sha256"] != hashlib.sha256(sentence.encode()).hexdigest()
        assert entry["audit_key_id"] == hashlib.sha256(KEY).hexdigest()[:12]
        assert KEY.decode() not in json.dumps(entry)


def test_another_key_gives_another_hash(tmp_path: Path) -> None:
    a = AuditLog(tmp_path / "a", key=KEY)
    b = AuditLog(tmp_path / "b", key=KEY[::-1])
    assert rec(a, 1, "same words") and rec(b, 1, "same words")
    (ra,), (rb,) = read_all(tmp_path / "a"), read_all(tmp_path / "b")
    assert ra["sentence_hmac_sha256"] != rb["sentence_hmac_sha256"]
    assert ra["audit_key_id"] != rb["audit_key_id"]


def test_text_is_logged_only_when_enabled(app_factory, tmp_path: Path) -> None:
    client = TestClient(app_factory("v2", log_text=True))
    client.post("/predict", json={"sentence": "café au lait"})
    (entry,) = read_all(tmp_path / "audit")
    assert entry["sentence"] == "café au lait"


def test_bad_requests_are_not_logged(app_factory, tmp_path: Path) -> None:
    client = TestClient(app_factory("v1"))
    client.post("/predict", json={"sentence": ""})
    assert read_all(tmp_path / "audit") == []


def audit_errors(client: TestClient, variant: str, model_version: str) -> float:
    prefix = (
        f'mlgate_audit_log_errors_total{{model_version="{model_version}",variant="{variant}"}} '
    )
    lines = [x for x in client.get("/metrics").text.splitlines() if x.startswith(prefix)]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_unwritable_directory_does_not_fail_predictions(
    app_factory, tmp_path: Path, predictor
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    client = TestClient(app_factory("v1", audit_dir=blocker / "logs"))
    mv = predictor.version
    before = audit_errors(client, "v1", mv)  # metrics are process-wide in unit tests
    for _ in range(3):
        r = client.post("/predict", json={"sentence": "happy day"})
        assert r.status_code == 200
        assert r.json()["prediction value"]
    assert audit_errors(client, "v1", mv) == before + 3


def test_write_failure_returns_false_and_recovers(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    log = AuditLog(blocker / "logs")
    assert rec(log, 1) is False
    assert log.errors == 1
    # once the directory can be created, a later attempt (after the back-off) works
    blocker.unlink()
    log._retry_at = 0.0
    assert rec(log, 2) is True
    assert [e["request_id"] for e in read_all(blocker / "logs")] == ["r2"]


def test_rotation_keeps_backups_and_whole_lines(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, max_bytes=2000, backups=3)
    for i in range(200):
        assert rec(log, i)
    files = sorted(p.name for p in tmp_path.glob(FILENAME + "*") if not p.name.endswith(".lock"))
    assert files == [FILENAME, f"{FILENAME}.1", f"{FILENAME}.2", f"{FILENAME}.3"]
    for name in files:
        assert (tmp_path / name).stat().st_size < 2000 + 400
    entries = read_all(tmp_path)
    ids = sorted(int(e["request_id"][1:]) for e in entries)
    # the newest records are all kept, the oldest were rotated away
    assert ids == list(range(200 - len(ids), 200))
    assert 199 in ids and 0 not in ids


def test_rotation_without_backups_truncates(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, max_bytes=1000, backups=0)
    for i in range(50):
        assert rec(log, i)
    assert not (tmp_path / f"{FILENAME}.1").exists()
    assert (tmp_path / FILENAME).stat().st_size < 1000


def _writer(directory: str, worker: int, n: int) -> None:
    log = AuditLog(directory, max_bytes=20_000, backups=1000)
    for i in range(n):
        rec(log, worker * 100_000 + i, sentence="x" * (i % 50))


def test_concurrent_writers_with_rotation_lose_nothing(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 1500)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    entries = read_all(tmp_path)  # every line parses as JSON: no interleaving
    ids = [e["request_id"] for e in entries]
    assert len(ids) == len(set(ids)) == 4 * 1500
    assert len(list(tmp_path.glob(FILENAME + ".*"))) > 10  # it did rotate, many times
