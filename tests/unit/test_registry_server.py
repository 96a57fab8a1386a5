"""The model registry against a real MLflow tracking server (``MLFLOW_TRACKING_URI=http://...``):
the same code path as the embedded store, artifacts uploaded to and downloaded from the server,
and a deployment that always asks the server (no stamp: aliases can move there unseen)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from model import registry as registry_mod
from model.deploy import STAMP
from model.deploy import main as deploy_main
from model.registry import CANDIDATE, Registry, RegistryError
from model.train import main as train_main

# The server is the full mlflow of `make mlflow-ui` (the dev virtualenv has mlflow-skinny, the
# client only); `make unit` installs it first.
SERVER_BIN = Path(
    os.environ.get(
        "MLGATE_MLFLOW_SERVER", Path(__file__).resolve().parents[2] / ".venv/mlflow-ui/bin/mlflow"
    )
)
pytestmark = pytest.mark.skipif(
    not SERVER_BIN.is_file(),
    reason=f"no {SERVER_BIN}: `make unit` (or `make mlflow-ui`) installs it",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 (its own SQLite backend and artifact directory, one
    worker), stopped at the end of the module."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [
            str(SERVER_BIN), "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts"), "--workers", "1",
        ],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not answer in 120 s"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_tracking_server_registers_aliases_and_serves_verified_artifacts(
    server: str, model_dir: Path, tiny_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    reg = Registry(store=tmp_path / "unused")
    assert reg.store is None and reg.where == server
    v1, created = reg.register(model_dir)
    assert created and v1.number == 1 and v1.sha256 == _sha(model_dir / "model.joblib")
    again, created = reg.register(model_dir)  # the same artifact: no second version
    assert not created and again.number == 1
    # a second artifact becomes the candidate; @stable stays on version 1
    other = tmp_path / "other"
    assert train_main(
        ["--data", str(tiny_csv), "--out", str(other), "--revision", "srv", "--no-register"]
    ) == 0  # fmt: skip
    v2, created = reg.register(other, alias=CANDIDATE)
    assert created and v2.number == 2
    assert reg.resolve("@stable").number == 1 and reg.resolve("@candidate").number == 2
    # the deployment's step, against the server: every reference checked out from it,
    # the bytes verified against the recorded sha256; nothing stamped, nothing embedded
    cache = tmp_path / "models"
    code = deploy_main(["--cache", str(cache), "--no-train", "@stable", "@candidate", "2"])
    assert code == 0
    assert not (tmp_path / "unused").exists() and not (cache / STAMP).exists()
    for version in (v1, v2):
        copy = cache.resolve() / f"{version.number}-{version.sha256[:12]}"
        assert _sha(copy / "model.joblib") == version.sha256
        record = json.loads((copy / "registry.json").read_text())
        assert record["version"] == version.number
    # an unknown version is refused with the server named, and nothing is written
    versions = r"\(versions: 2 \(@candidate\), 1 \(@stable\)\)"
    with pytest.raises(
        RegistryError, match=rf"has no version 9 in the registry at {re.escape(server)} {versions}"
    ):
        reg.checkout("9", tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()


def test_the_server_is_asked_on_every_deployment_as_its_aliases_move_unseen(
    server: str, model_dir: Path, tiny_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """@candidate moved by someone else is what the next deployment checks out, with no stamp
    of the earlier answer in the way. The test registers its two versions itself (an artifact
    already registered, by the test before it on the same server, keeps its version), so it
    holds alone and in any order."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    reg = Registry()
    first, _ = reg.register(model_dir)
    other = tmp_path / "other"
    assert train_main(
        ["--data", str(tiny_csv), "--out", str(other), "--revision", "moved", "--no-register"]
    ) == 0  # fmt: skip
    second, _ = reg.register(other, alias=CANDIDATE)
    assert first.number != second.number
    cache = tmp_path / "models"
    run = [sys.executable, "-m", "model.deploy", "--cache", str(cache), "--no-train", "@candidate"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": server}

    def deployed() -> int:
        done = subprocess.run(
            run, capture_output=True, text=True, check=True, cwd=registry_mod.REPO_DIR, env=env
        )
        return json.loads(done.stdout.splitlines()[-1])["@candidate"]["number"]

    assert deployed() == second.number
    reg.set_alias(CANDIDATE, str(first.number))  # another user moves the alias on the server
    assert deployed() == first.number
    reg.set_alias(CANDIDATE, str(second.number))
    assert deployed() == second.number
