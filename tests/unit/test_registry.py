"""The model registry (model/registry.py) on a real embedded MLflow store; training's use of it."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
from pathlib import Path

import pytest

from model import registry as registry_mod
from model.registry import CANDIDATE, STABLE, Registry, RegistryError
from model.train import main as train_main


@pytest.fixture(scope="module", autouse=True)
def _empty_db(tmp_path_factory: pytest.TempPathFactory) -> None:
    global EMPTY_DB
    store = tmp_path_factory.mktemp("empty") / "mlflow"
    assert Registry(store=store).versions() == []
    EMPTY_DB = store / "mlflow.db"


EMPTY_DB = Path()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _train(tiny_csv: Path, out: Path, store: Path, *extra: str) -> int:
    return train_main(
        ["--data", str(tiny_csv), "--out", str(out), "--registry-store", str(store), *extra]
    )


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """An empty embedded store: a copy of the session's empty one (MLflow's schema migrations
    take seconds per new database)."""
    path = tmp_path / "mlflow"
    path.mkdir()
    shutil.copy2(EMPTY_DB, path / "mlflow.db")
    return path


@pytest.fixture(scope="module")
def second_model(tiny_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another artifact (another revision: another model version) of the tiny dataset."""
    out = tmp_path_factory.mktemp("second")
    assert train_main(
        ["--data", str(tiny_csv), "--out", str(out), "--revision", "two", "--no-register"]
    ) == 0  # fmt: skip
    return out


def test_first_version_becomes_stable_and_an_unchanged_artifact_is_not_registered_again(
    model_dir: Path, store: Path
) -> None:
    reg = Registry(store=store)
    assert reg.versions() == []
    v1, created = reg.register(model_dir)
    assert created and v1.number == 1 and v1.aliases == (STABLE,)
    card = json.loads((model_dir / "model_card.json").read_text())
    assert v1.mlgate_version == card["version"]
    assert v1.sha256 == _sha(model_dir / "model.joblib")
    assert v1.metrics["accuracy"] == pytest.approx(card["metrics"]["held_out_accuracy"])
    again, created = reg.register(model_dir)
    assert not created and again.number == 1
    assert [v.number for v in reg.versions()] == [1]
    # the run carries what the issue asks: params, dataset sha256, code revision, per-class F1
    run = reg._client.get_run(v1.run_id)
    assert run.data.tags["mlgate.dataset_sha256"] == card["data"]["sha256"]
    assert run.data.tags["mlgate.code_revision"]
    assert run.data.params["logreg.C"] == "1.0"
    assert {k for k in run.data.metrics if k.startswith("f1.")} == {
        f"f1.{c}" for c in card["classes"]
    }
    assert (store / "mlflow.db").is_file() and (store / "artifacts").is_dir()


def test_candidate_alias_leaves_stable_where_it_was(
    model_dir: Path, second_model: Path, store: Path
) -> None:
    reg = Registry(store=store)
    reg.register(model_dir)
    v2, created = reg.register(second_model, alias=CANDIDATE)
    assert created and v2.number == 2 and v2.aliases == (CANDIDATE,)
    assert reg.resolve("@stable").number == 1
    assert reg.resolve("@candidate").number == 2
    assert reg.resolve("latest").number == 2
    assert reg.resolve("1").aliases == (STABLE,)
    promoted = reg.set_alias(STABLE, "@candidate")
    assert promoted.number == 2 and set(promoted.aliases) == {STABLE, CANDIDATE}
    assert reg.resolve("1").aliases == ()


@pytest.mark.parametrize(
    ("ref", "says"),
    [
        ("@nope", "has no alias '@nope'"),
        ("7", "has no version 7"),
        ("v1", "names no model version"),
    ],
)
def test_unknown_references_are_named_with_what_exists(
    model_dir: Path, store: Path, ref: str, says: str
) -> None:
    reg = Registry(store=store)
    reg.register(model_dir)
    with pytest.raises(RegistryError, match=says) as err:
        reg.resolve(ref)
    if ref != "v1":
        assert "versions: 1 (@stable)" in str(err.value)


def test_an_empty_registry_says_to_train_first(store: Path) -> None:
    with pytest.raises(RegistryError, match=r"no version in the registry .*make model"):
        Registry(store=store).resolve("@stable")


@pytest.mark.parametrize("alias", ["", "1", "latest", "bad alias", "-x"])
def test_unusable_alias_names_are_refused(model_dir: Path, store: Path, alias: str) -> None:
    reg = Registry(store=store)
    reg.register(model_dir)
    with pytest.raises(RegistryError, match="not a usable alias"):
        reg.set_alias(alias, "1")


def test_fetch_verifies_the_checksum_and_leaves_the_destination_alone_otherwise(
    model_dir: Path, store: Path, tmp_path: Path
) -> None:
    reg = Registry(store=store)
    v1, _ = reg.register(model_dir)
    dest = tmp_path / "deployed"
    got = reg.fetch("@stable", dest)
    assert got.number == 1
    assert sorted(p.name for p in dest.iterdir()) == [
        "model.joblib", "model_card.json", "registry.json",
    ]  # fmt: skip
    assert _sha(dest / "model.joblib") == v1.sha256
    assert json.loads((dest / "registry.json").read_text()) == {
        "model": "mlgate-emotions", "version": 1, "mlgate_version": v1.mlgate_version,
        "sha256": v1.sha256,
    }  # fmt: skip
    # corrupt the stored artifact: the next fetch refuses it, the deployed copy stays
    stored = next((store / "artifacts").rglob("model.joblib"))
    stored.write_bytes(stored.read_bytes()[:-1] + b"\0")
    with pytest.raises(RegistryError, match=r"has sha256 .* refusing it"):
        reg.fetch("1", dest)
    assert _sha(dest / "model.joblib") == v1.sha256
    assert sorted(p.name for p in dest.parent.iterdir()) == ["deployed", "mlflow"]


def test_tracking_uri_from_the_environment_is_the_same_code_path(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "team" / "mlflow.db"
    db.parent.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root (./mlruns) for such a store
    reg = Registry(store=tmp_path / "unused")
    assert reg.store is None and reg.where == f"sqlite:///{db}"
    v1, created = reg.register(model_dir)
    assert created and v1.number == 1
    assert db.is_file() and not (tmp_path / "unused").exists()


def test_a_registry_that_does_not_answer_fails_with_a_sentence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: refused
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(RegistryError, match=r"registry at http://127.0.0.1:9"):
        Registry().resolve("@stable")


def _register_in_child(args: tuple[str, str]) -> int:
    store, model_dir = args
    return Registry(store=Path(store)).register(Path(model_dir))[0].number


def test_parallel_registrations_of_one_artifact_give_one_version(
    model_dir: Path, store: Path
) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        numbers = pool.map(_register_in_child, [(str(store), str(model_dir))] * 3)
    assert numbers == [1, 1, 1]
    assert [v.number for v in Registry(store=store).versions()] == [1]


def test_training_registers_and_retraining_makes_a_candidate(
    tiny_csv: Path, tmp_path: Path, store: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "artifacts"
    # make model / a deployment's training: a new version becomes @stable, a known one keeps
    # the aliases the user gave it
    assert _train(tiny_csv, out, store, "--if-stale", "--alias-new", "stable") == 0
    assert "registered as mlgate-emotions version 1 (@stable)" in capsys.readouterr().out
    assert _train(tiny_csv, out, store, "--if-stale", "--alias-new", "stable") == 0
    second = capsys.readouterr().out
    assert "model up to date" in second and "already registered" in second
    # make retrain: other parameters, its own output directory, @candidate; stable untouched
    deployed = _sha(out / "model.joblib")
    scratch = tmp_path / "retrain"
    assert _train(tiny_csv, scratch, store, "--param", "logreg.C=2.0", "--alias", "candidate") == 0
    reg = Registry(store=store)
    assert reg.resolve("@candidate").number == 2 and reg.resolve("@stable").number == 1
    assert json.loads((scratch / "model_card.json").read_text())["params"]["logreg"]["C"] == 2.0
    assert _sha(out / "model.joblib") == deployed


@pytest.mark.parametrize(
    ("param", "says"),
    [
        ("nope.x=1", "expected KEY=VALUE with KEY one of"),
        ("logreg.C", "expected KEY=VALUE"),
        ("logreg.C=-1", "training failed with these parameters"),
    ],
)
def test_bad_training_parameters_fail_with_a_sentence_and_register_nothing(
    tiny_csv: Path, tmp_path: Path, store: Path, capsys: pytest.CaptureFixture, param, says
) -> None:
    assert _train(tiny_csv, tmp_path / "out", store, "--param", param) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "out" / "model.joblib").exists()
    assert Registry(store=store).versions() == []


def test_the_unit_tests_never_write_the_checkout_registry() -> None:
    """conftest points the default store at a temporary directory for the whole session."""
    assert registry_mod.DEFAULT_STORE != registry_mod.REPO_DIR / ".mlgate" / "mlflow"


@pytest.mark.parametrize(("preset", "expected"), [(None, "true"), ("false", "false")])
def test_mlflow_telemetry_is_off_unless_the_user_opts_in(
    store: Path, monkeypatch: pytest.MonkeyPatch, preset: str | None, expected: str
) -> None:
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    if preset is not None:
        monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", preset)
    Registry(store=store).versions()
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == expected


def test_checkout_fetches_once_then_reuses_a_verified_copy_and_replaces_a_tampered_one(
    model_dir: Path, second_model: Path, store: Path, tmp_path: Path
) -> None:
    reg = Registry(store=store)
    v1, _ = reg.register(model_dir)
    v2, _ = reg.register(second_model, alias=CANDIDATE)
    cache = tmp_path / "models"
    got, path, fetched = reg.checkout("@stable", cache)
    assert (got.number, fetched) == (1, True)
    assert path == cache.resolve() / f"1-{v1.sha256[:12]}"
    assert _sha(path / "model.joblib") == v1.sha256
    stamp = (path / "model.joblib").stat().st_mtime_ns
    got, again, fetched = reg.checkout("1", cache)
    assert (got.number, again, fetched) == (1, path, False)
    assert (path / "model.joblib").stat().st_mtime_ns == stamp  # not downloaded again
    # a copy changed on disk is not trusted: fetched again, verified
    (path / "model.joblib").write_bytes(b"not a model")
    got, again, fetched = reg.checkout("@stable", cache)
    assert (again, fetched) == (path, True)
    assert _sha(path / "model.joblib") == v1.sha256
    # each version has its own directory; the candidate's is beside the stable one
    got, other, fetched = reg.checkout("@candidate", cache)
    assert (got.number, fetched) == (2, True)
    assert other.name == f"2-{v2.sha256[:12]}"
    assert sorted(p.name for p in cache.iterdir()) == [".lock", path.name, other.name]


def test_checkout_of_an_unknown_version_writes_nothing(
    model_dir: Path, store: Path, tmp_path: Path
) -> None:
    reg = Registry(store=store)
    reg.register(model_dir)
    with pytest.raises(RegistryError, match=r"has no version 7 .*\(versions: 1 \(@stable\)\)"):
        reg.checkout("7", tmp_path / "models")
    assert not (tmp_path / "models").exists()


def test_checkout_refuses_a_version_without_a_recorded_checksum(
    model_dir: Path, store: Path, tmp_path: Path
) -> None:
    reg = Registry(store=store)
    reg.register(model_dir)
    reg._client.delete_model_version_tag(registry_mod.MODEL_NAME, "1", registry_mod.TAG_SHA256)
    with pytest.raises(RegistryError, match=r"no sha256 recorded .* refusing to deploy"):
        reg.checkout("1", tmp_path / "models")


def test_alias_if_new_moves_the_alias_only_for_a_new_version(
    model_dir: Path, second_model: Path, store: Path
) -> None:
    reg = Registry(store=store)
    reg.register(model_dir)
    reg.register(second_model, alias_if_new=STABLE)  # new: stable moves to 2
    assert reg.resolve("@stable").number == 2
    reg.set_alias(STABLE, "1")  # the user rolls back
    v, created = reg.register(second_model, alias_if_new=STABLE)  # known: stable stays
    assert (v.number, created) == (2, False)
    assert reg.resolve("@stable").number == 1


def test_cli_checkout_prints_the_version_and_its_directory(
    model_dir: Path, store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Registry(store=store).register(model_dir)
    cache = tmp_path / "models"

    def checkout(*refs: str) -> int:
        return registry_mod.main(["--store", str(store), "checkout", "--cache", str(cache), *refs])

    assert checkout("@stable", "1", "@stable") == 0
    out = json.loads(capsys.readouterr().out)
    assert sorted(out) == ["1", "@stable"]
    assert (out["@stable"]["number"], out["@stable"]["fetched"]) == (1, True)
    assert (out["1"]["path"], out["1"]["fetched"]) == (out["@stable"]["path"], False)
    assert Path(out["1"]["path"]).parent == cache.resolve()
    assert checkout("1", "@nope") == 2
    err = capsys.readouterr().err
    assert err.startswith("model.registry: ") and "has no alias '@nope'" in err


def test_the_api_reports_the_registry_version_of_a_checked_out_model(
    model_dir: Path, second_model: Path, store: Path, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app
    from tests.unit.conftest import make_settings

    reg = Registry(store=store)
    reg.register(model_dir)
    v2, _ = reg.register(second_model, alias=CANDIDATE)
    _, path, _ = reg.checkout("@candidate", tmp_path / "models")
    client = TestClient(create_app(make_settings(tmp_path, path, variant="v2")))
    r = client.post("/predict", json={"sentence": "so happy today"})
    assert r.status_code == 200
    assert r.headers["x-model-version"] == "2" and r.json()["model_version"] == "2"
    health = client.get("/health")
    assert health.json()["model_version"] == "2" and health.headers["x-model-version"] == "2"
    card = client.get("/model").json()
    assert card["version"] == v2.mlgate_version
    assert card["registry"] == {
        "model": "mlgate-emotions", "version": 2, "mlgate_version": v2.mlgate_version,
        "sha256": v2.sha256,
    }  # fmt: skip


def test_deploy_trains_when_stale_then_checks_out_every_reference_in_one_process(
    tiny_csv: Path, tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from model.deploy import main as deploy_main

    out, cache = tmp_path / "artifacts", tmp_path / "models"
    common = ["--cache", str(cache), "--registry-store", str(store), "--data", str(tiny_csv)]
    assert deploy_main([*common, "--out", str(out), "@stable", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any("registered as mlgate-emotions version 1 (@stable)" in ln for ln in lines)
    got = json.loads(lines[-1])
    assert sorted(got) == ["1", "@stable"] and got["@stable"]["fetched"] is True
    assert got["1"]["path"] == got["@stable"]["path"]
    # nothing changed: up to date, already registered, the verified copy reused
    assert deploy_main([*common, "--out", str(out), "@stable"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any("model up to date" in ln for ln in lines)
    assert json.loads(lines[-1])["@stable"]["fetched"] is False
    # no training, a reference the registry lacks: exit 2, one sentence, nothing checked out
    assert deploy_main([*common, "--no-train", "@stable", "7"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("model.deploy: model 'mlgate-emotions' has no version 7")


def test_a_no_change_deploy_skips_mlflow_until_the_store_is_written(
    tiny_csv: Path, second_model: Path, tmp_path: Path, store: Path
) -> None:
    """The second unchanged run answers from its stamp without importing MLflow; moving an
    alias (a write to the store) sends the next run to the registry again."""
    import subprocess
    import sys

    out, cache = tmp_path / "artifacts", tmp_path / "models"
    argv = [
        "--cache", str(cache), "--registry-store", str(store), "--data", str(tiny_csv),
        "--out", str(out), "@stable",
    ]  # fmt: skip
    probe = (
        "import json, sys\n"
        "from model.deploy import main\n"
        f"code = main({argv!r})\n"
        "print(json.dumps({'code': code, 'mlflow': 'mlflow' in sys.modules}))\n"
    )

    def deploy() -> tuple[dict, dict]:
        run = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True,
            cwd=registry_mod.REPO_DIR,
        )  # fmt: skip
        lines = run.stdout.splitlines()
        return json.loads(lines[-2]), json.loads(lines[-1])

    first, how = deploy()  # trains, registers version 1 (a write): no stamp yet
    assert how == {"code": 0, "mlflow": True} and first["@stable"]["number"] == 1
    second, how = deploy()  # the registry asked, nothing written: the answers are stamped
    assert how["mlflow"] is True and second["@stable"]["fetched"] is False
    third, how = deploy()
    assert how == {"code": 0, "mlflow": False}, "an unchanged run imported MLflow"
    assert third == second
    # a copy changed on disk is not trusted: the registry is asked and the copy replaced
    (Path(third["@stable"]["path"]) / "model.joblib").write_bytes(b"tampered")
    fourth, how = deploy()
    assert how["mlflow"] is True and fourth["@stable"]["fetched"] is True
    sixth, how = deploy()
    assert how["mlflow"] is False and sixth == third
    # another version registered and @stable moved to it (writes): the next run asks the
    # registry and deploys it
    Registry(store=store).register(second_model, alias="stable")
    seventh, how = deploy()
    assert how["mlflow"] is True and seventh["@stable"]["number"] == 2
