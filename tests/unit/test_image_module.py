"""The image role's module (roles/image/library/mlgate_image.py): its tag is the shell pipeline's
the role used before (so deployed images keep their tags), its prune plan keeps what it must, and
against the Docker engine it builds once per content hash and prunes old tags."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

_PATH = Path(__file__).parents[2] / "roles/image/library/mlgate_image.py"
_spec = importlib.util.spec_from_file_location("mlgate_image", _PATH)
mlgate_image = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mlgate_image)

BASE_ID = "sha256:" + "ab" * 32


def shell_tag(context: Path, base_id: str, length: int = 12) -> str:
    """The pipeline roles/image/tasks/main.yml ran before the module."""
    done = subprocess.run(
        [
            "bash",
            "-c",
            "set -o pipefail && { find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum;"
            f' echo "FROM {base_id}"; }} | sha256sum | cut -c1-{length}',
        ],
        cwd=context,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@pytest.fixture
def context(tmp_path: Path) -> Path:
    ctx = tmp_path / "ctx"
    (ctx / "wheels").mkdir(parents=True)
    (ctx / "app" / "model").mkdir(parents=True)
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY app /app\n")
    (ctx / "wheels" / "numpy-2.0-cp311.whl").write_bytes(os.urandom(3000))
    (ctx / "app" / "model" / "model.joblib").write_bytes(os.urandom(200_000))
    (ctx / "app" / "a b.py").write_text("print('space in the name')\n")
    # byte order: "a-b" < "a.b" < "a/b" < "B" < "b" under LC_ALL=C
    (ctx / "a-b").write_text("1")
    (ctx / "a.b").write_text("2")
    (ctx / "B").write_text("3")
    (ctx / "app" / "empty").write_text("")
    (ctx / "emptydir").mkdir()
    return ctx


def test_the_tag_is_the_shell_pipelines(context: Path) -> None:
    for base in (BASE_ID, "none"):
        assert mlgate_image.context_hash(str(context), base, 12) == shell_tag(context, base)
    assert mlgate_image.context_hash(str(context), BASE_ID, 20) == shell_tag(context, BASE_ID, 20)


def test_symbolic_links_are_not_hashed_as_find_type_f_skips_them(context: Path) -> None:
    before = mlgate_image.context_hash(str(context), BASE_ID, 12)
    (context / "link").symlink_to(context / "Dockerfile")
    (context / "dirlink").symlink_to(context / "app", target_is_directory=True)
    assert (
        mlgate_image.context_hash(str(context), BASE_ID, 12)
        == before
        == shell_tag(context, BASE_ID)
    )


def test_a_name_sha256sum_escapes_still_gives_the_pipelines_tag(context: Path) -> None:
    (context / "back\\slash").write_text("x")
    (context / "new\nline").write_text("y")
    assert mlgate_image.context_hash(str(context), BASE_ID, 12) == shell_tag(context, BASE_ID)


def test_any_change_of_content_name_or_base_changes_the_tag(context: Path) -> None:
    tags = {mlgate_image.context_hash(str(context), BASE_ID, 12)}
    (context / "app" / "empty").write_text("now not empty")
    tags.add(mlgate_image.context_hash(str(context), BASE_ID, 12))
    (context / "B").rename(context / "C")
    tags.add(mlgate_image.context_hash(str(context), BASE_ID, 12))
    tags.add(mlgate_image.context_hash(str(context), "sha256:" + "cd" * 32, 12))
    assert len(tags) == 4


def _image(ident: str, created: str, *tags: str) -> dict:
    return {"Id": ident, "Created": created, "RepoTags": list(tags)}


def test_prune_keeps_the_newest_the_current_and_those_in_use() -> None:
    images = [
        _image("i1", "2026-12-01T10:00:00.5Z", "app:one"),
        _image("i2", "2026-12-01T10:00:00.50001Z", "app:two"),  # newer than i1 by 10 us
        _image("i3", "2026-12-02T09:00:00Z", "app:three", "other:keepme"),
        _image("i4", "2026-12-03T08:00:00.1Z", "app:four"),
        _image("i5", "2026-11-30T08:00:00Z", "app:five"),
        _image("i6", "2026-11-29T08:00:00Z", "app:six"),
    ]
    # newest first: i4, i3, i2, i1, i5, i6; keep 2 -> i2, i1, i5, i6 are candidates;
    # i5 is in use by a (stopped) container, app:one is the tag just deployed
    removed = mlgate_image.tags_to_prune(images, {"i5"}, "app", 2, "app:one")
    assert removed == ["app:two", "app:six"]
    # another repository's tag on an image of ours is never removed by this repository's prune
    assert mlgate_image.tags_to_prune(images, set(), "app", 0, "") == [
        "app:four",
        "app:three",
        "app:two",
        "app:one",
        "app:five",
        "app:six",
    ]
    assert mlgate_image.tags_to_prune(images, set(), "app", 10, "") == []
    # "app" must not match "app-gateway"
    assert (
        mlgate_image.tags_to_prune(
            [_image("x", "2026-01-01T00:00:00Z", "app-gateway:1")], set(), "app", 0, ""
        )
        == []
    )


# Against the engine: the module run as Ansible runs an old-style module (an argument file).
def _docker() -> bool:
    return (
        shutil.which("docker") is not None
        and subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0
    )


def run_module(tmp_path: Path, **args: object) -> dict:
    argfile = tmp_path / f"args-{uuid.uuid4().hex}.json"
    argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    done = subprocess.run(
        [sys.executable, str(_PATH), str(argfile)], capture_output=True, text=True, check=False
    )
    return json.loads(done.stdout)


@pytest.mark.skipif(not _docker(), reason="no Docker engine answers here")
def test_against_docker_builds_once_per_content_and_prunes_old_tags(tmp_path: Path) -> None:
    name = f"mlgate-unit-image-{uuid.uuid4().hex[:8]}"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY payload /payload\n")
    (ctx / "payload").write_text("one")
    refs = []
    try:
        first = run_module(tmp_path, name=name, context=str(ctx), labels={"io.mlgate.test": "yes"})
        assert first["changed"] is True and first["built"] is True, first
        assert first["tag"] == shell_tag(ctx, "none")
        refs.append(first["ref"])
        labels = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", first["ref"]],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert json.loads(labels) == {"io.mlgate.test": "yes"}
        again = run_module(tmp_path, name=name, context=str(ctx))
        assert again["changed"] is False and again["ref"] == first["ref"], again
        for content in ("two", "three"):
            (ctx / "payload").write_text(content)
            built = run_module(tmp_path, name=name, context=str(ctx))
            assert built["changed"] is True and built["ref"] not in refs, built
            refs.append(built["ref"])
        missing = run_module(tmp_path, name=name, context=str(ctx), base="mlgate-unit-no-such:base")
        assert missing.get("failed") is True and missing["retry"] is False
        assert "which is not on this host" in missing["msg"]
        # keep 1: the newest stays, the oldest is current (kept); the middle one goes once no
        # container (even a stopped one) uses it
        holder = subprocess.run(
            ["docker", "create", refs[1], "/payload"], capture_output=True, text=True, check=True
        ).stdout.strip()
        held = run_module(tmp_path, name=name, state="pruned", keep=1, current=refs[0])
        subprocess.run(["docker", "rm", holder], capture_output=True, check=True)
        assert held["changed"] is False and held["removed"] == [], held
        pruned = run_module(tmp_path, name=name, state="pruned", keep=1, current=refs[0])
        assert pruned["changed"] is True and pruned["removed"] == [refs[1]], pruned
        present = subprocess.run(
            [
                "docker",
                "image",
                "ls",
                "--filter",
                f"reference={name}",
                "--format",
                "{{.Repository}}:{{.Tag}}",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert sorted(present) == sorted([refs[0], refs[2]])
        assert (
            run_module(tmp_path, name=name, state="pruned", keep=1, current=refs[0])["changed"]
            is False
        )
    finally:
        subprocess.run(
            ["docker", "image", "rm", "--force", *refs], capture_output=True, check=False
        )


@pytest.mark.skipif(not _docker(), reason="no Docker engine answers here")
def test_against_docker_a_batch_builds_the_missing_images_side_by_side(tmp_path: Path) -> None:
    prefix = f"mlgate-unit-batch-{uuid.uuid4().hex[:8]}"
    contexts = {}
    for part in ("a", "b", "broken"):
        ctx = tmp_path / part
        ctx.mkdir()
        step = f"RUN /{prefix}-absent" if part == "broken" else f"COPY {part} /{part}"
        (ctx / "Dockerfile").write_text(f"FROM scratch\n{step}\n")
        (ctx / part).write_text(part)
        contexts[f"{prefix}-{part}"] = str(ctx)
    good = [{"name": n, "context": c} for n, c in contexts.items() if not n.endswith("broken")]
    refs: list[str] = []
    try:
        first = run_module(tmp_path, images=good, labels={"io.mlgate.test": "batch"})
        assert first["changed"] is True and [i["built"] for i in first["images"]] == [True, True]
        refs += first["refs"].values()
        for image in first["images"]:
            assert image["tag"] == shell_tag(Path(image["context"]), "none")
            assert (
                subprocess.run(
                    ["docker", "image", "inspect", "--format", "{{.Config.Labels}}", image["ref"]],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.strip()
                == "map[io.mlgate.test:batch]"
            )
        again = run_module(tmp_path, images=good)
        assert again["changed"] is False and again["refs"] == first["refs"], again
        # one new image next to a broken one: the good one is built, the play hears which failed
        (Path(contexts[f"{prefix}-a"]) / "a").write_text("a2")
        mixed = run_module(
            tmp_path,
            images=[*good, {"name": f"{prefix}-broken", "context": contexts[f"{prefix}-broken"]}],
        )
        built = {i["name"]: i for i in mixed["images"]}
        refs += [i["ref"] for i in mixed["images"]]
        assert mixed.get("failed") is True and mixed["msg"].startswith(
            f"building {prefix}-broken:"
        ), mixed
        assert built[f"{prefix}-a"]["built"] is True and built[f"{prefix}-b"]["built"] is False
        assert built[f"{prefix}-broken"]["present"] is False
        # and the failed step's container is gone too (it could not even start: FROM scratch)
        commands = subprocess.run(
            ["docker", "ps", "--all", "--no-trunc", "--format", "{{.Command}}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert f"{prefix}-absent" not in commands
        assert run_module(tmp_path, images=good)["changed"] is False
    finally:
        subprocess.run(
            ["docker", "image", "rm", "--force", *refs], capture_output=True, check=False
        )
