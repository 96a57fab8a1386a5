"""The deployed model comes from the registry (mlgate_model, default @stable): every answer names
its registry version, and a version the registry lacks ends the play before anything changes."""

from __future__ import annotations

import re

import docker

from model.registry import Registry

from .conftest import ROOT, Stack, run_playbook


def _stable(stack: Stack):
    return Registry(store=ROOT / ".mlgate" / stack.name / "mlflow").resolve("@stable")


def _containers(stack: Stack) -> dict[str, tuple[str, str]]:
    found = docker.from_env().containers.list(
        all=True, filters={"label": f"io.mlgate.stack={stack.name}"}
    )
    return {c.name: (c.id, c.image.id) for c in found}


def test_every_answer_through_the_gateway_names_the_deployed_registry_version(
    stack: Stack, predict
) -> None:
    stable = _stable(stack)
    default, debug = predict(), predict(headers={"X-Experiment-Group": "debug"})
    for r in (default, debug):
        assert r.status_code == 200, r.text
        assert r.headers["x-model-version"] == str(stable.number), dict(r.headers)
    assert debug.json()["model_version"] == str(stable.number)
    assert list(default.json()) == ["prediction value"]  # the exam body, unchanged


def test_a_model_the_registry_lacks_fails_the_play_before_anything_changes(stack: Stack) -> None:
    """One run, an unknown alias: the play stops with the registry's sentence, which lists the
    versions there are, and no container changed. The other wordings (an unknown version
    number, an empty registry) are model.deploy's, tested in tests/unit/test_registry.py."""
    before = _containers(stack)
    versions = [
        str(v.number) for v in Registry(store=ROOT / ".mlgate" / stack.name / "mlflow").versions()
    ]
    run = run_playbook("site.yml", "--tags", "api", "-e", "mlgate_model=@nope")
    assert run.returncode != 0, run.stdout[-3000:]
    message = (
        r"The registry cannot give the model to deploy \(mlgate_model @nope\): "
        r"model 'mlgate-emotions' has no alias '@nope' in the registry at \S+ \(versions: "
    )
    assert re.search(message, run.stdout), run.stdout[-3000:]
    assert all(v in run.stdout for v in versions), "the sentence lists the versions there are"
    assert _containers(stack) == before, "a failed preflight changed containers"
