"""Shared fixtures: a tiny model trained from hand-written sentences (no real dataset)."""

from __future__ import annotations

import contextlib
import csv
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.audit import AuditLog
from api.settings import Settings
from model.dataset import load_dataset
from model.predictor import Predictor, load_predictor
from model.train import save_artifacts, train

SENTENCES = {
    "happiness": [
        "what a wonderful sunny day at the beach",
        "I am so happy today, everything went great",
        "we won the game, best day ever",
        "my new puppy makes me smile all the time",
        "finally on holiday, feeling great and relaxed",
        "the party last night was amazing fun",
        "got the job, so happy and grateful",
        "lovely dinner with friends, great evening",
        "sunshine and ice cream, perfect afternoon",
        "happy birthday to me, wonderful presents",
    ],
    "sadness": [
        "I miss my grandmother so much today",
        "feeling lonely and sad tonight",
        "my dog died this morning, heartbroken",
        "crying because the movie ending was so sad",
        "nobody came to my party, feeling down",
        "lost my wallet and my phone, terrible day",
        "rainy day and I feel miserable",
        "saying goodbye to my best friend is sad",
        "so sad the holidays are over",
        "I failed the exam, feeling awful",
    ],
    "worry": [
        "nervous about the exam tomorrow morning",
        "worried my flight will be cancelled",
        "what if the test results are bad",
        "anxious about the job interview next week",
        "can not sleep, worried about money",
        "hope the storm does not hit our town",
        "scared the surgery will not go well",
        "my sister is late and not answering, worried",
        "so anxious about moving to a new city",
        "fear I will miss the deadline again",
    ],
    "anger": [
        "I hate waiting in this stupid queue",
        "so angry at the rude driver this morning",
        "my neighbour is playing loud music again, furious",
        "the airline lost my luggage, unacceptable",
        "stop lying to me, I am so mad",
        "this broken printer makes me furious",
        "customer service hung up on me, outraged",
        "they cancelled the show without notice, angry",
        "I am sick of the constant noise",
        "my brother broke my laptop, so mad at him",
    ],
}


def write_csv(path: Path, rows: list[tuple[str, str]], header=("tweet_id", "sentiment", "content")):
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i, (label, text) in enumerate(rows):
            w.writerow([1000 + i, label, text])
    return path


@pytest.fixture(autouse=True, scope="session")
def _own_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Training registers every model: in the tests, into a registry of their own, never the
    checkout's (.mlgate/mlflow) nor a server MLFLOW_TRACKING_URI names."""
    from model import registry

    saved = registry.DEFAULT_STORE, os.environ.pop("MLFLOW_TRACKING_URI", None)
    registry.DEFAULT_STORE = tmp_path_factory.mktemp("registry") / "mlflow"
    registry.Registry().versions()  # creates its tables (seconds: MLflow's migrations)
    yield
    registry.DEFAULT_STORE = saved[0]
    if saved[1] is not None:
        os.environ["MLFLOW_TRACKING_URI"] = saved[1]


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [(label, text) for label, texts in SENTENCES.items() for text in texts]
    return write_csv(tmp_path_factory.mktemp("data") / "tiny.csv", rows)


@pytest.fixture(scope="session")
def model_dir(tiny_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("artifacts")
    pipeline, card = train(load_dataset(tiny_csv))
    save_artifacts(out, pipeline, card)
    return out


@pytest.fixture(scope="session")
def predictor(model_dir: Path) -> Predictor:
    return load_predictor(model_dir)


def make_settings(tmp_path: Path, model_dir: Path, **overrides) -> Settings:
    values = {
        "variant": "v1",
        "model_dir": model_dir,
        "audit_dir": tmp_path / "audit",
        "replica": "test-replica",
    }
    values.update(overrides)
    values.setdefault("debug", values["variant"] == "v2")  # as Settings.from_env does
    return Settings(**values)


@pytest.fixture
def app_factory(tmp_path: Path, model_dir: Path, predictor: Predictor):
    """Build an app for a variant (v1/v2) with its audit log in tmp_path."""
    from api.app import create_app

    def build(variant: str = "v1", fast_route: bool = True, **overrides):
        settings = make_settings(tmp_path, model_dir, variant=variant, **overrides)
        audit = AuditLog(
            settings.audit_dir,
            settings.audit_max_bytes,
            settings.audit_backups,
            settings.log_text,
            key=settings.audit_key,
        )
        return create_app(settings, predictor, audit, fast_route=fast_route)

    return build


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve_api(env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen]:
    """Run ``python -m api`` (the production launcher) with ``env`` until /health answers 200
    on MLGATE_BIND; stop it with SIGTERM (then SIGKILL) afterwards. Output goes to log_path."""
    host, port = env["MLGATE_BIND"].rsplit(":", 1)
    root = Path(__file__).resolve().parents[2]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "api"], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 300  # a hang guard: niced beside Molecule, start is slow
            while True:
                assert proc.poll() is None, log_path.read_text()
                try:
                    c = http.client.HTTPConnection(host, int(port), timeout=2)
                    c.request("GET", "/health")
                    if c.getresponse().status == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
