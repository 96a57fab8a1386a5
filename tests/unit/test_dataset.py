from __future__ import annotations

from pathlib import Path

import pytest

from model.dataset import (
    DATASET_ENV,
    DatasetError,
    candidate_paths,
    load_dataset,
    resolve_dataset_path,
)
from tests.unit.conftest import write_csv


def make_repo(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A fake layout: <tmp>/repo/data/... and <tmp>/shared/data/..."""
    repo = tmp_path / "repo"
    local = repo / "data" / "tweet_emotions.csv"
    shared = tmp_path / "shared" / "data" / "tweet_emotions.csv"
    local.parent.mkdir(parents=True)
    shared.parent.mkdir(parents=True)
    return repo, local, shared


def test_default_candidates_are_repo_data_then_shared(tmp_path: Path) -> None:
    repo, local, shared = make_repo(tmp_path)
    assert candidate_paths(None, {}, repo) == [local, shared]


def test_resolution_order(tmp_path: Path) -> None:
    repo, local, shared = make_repo(tmp_path)
    explicit = write_csv(tmp_path / "explicit.csv", [("joy", "hi")])
    from_env = write_csv(tmp_path / "env.csv", [("joy", "hi")])
    write_csv(shared, [("joy", "hi")])
    assert resolve_dataset_path(None, {}, repo) == shared
    write_csv(local, [("joy", "hi")])
    assert resolve_dataset_path(None, {}, repo) == local
    env = {DATASET_ENV: str(from_env)}
    assert resolve_dataset_path(None, env, repo) == from_env
    assert resolve_dataset_path(explicit, env, repo) == explicit


def test_explicit_path_does_not_fall_back(tmp_path: Path) -> None:
    repo, local, _ = make_repo(tmp_path)
    write_csv(local, [("joy", "hi")])
    with pytest.raises(DatasetError) as err:
        resolve_dataset_path(tmp_path / "typo.csv", {}, repo)
    assert str(tmp_path / "typo.csv") in str(err.value)
    assert "does not exist" in str(err.value)


def test_not_found_lists_every_path_tried(tmp_path: Path) -> None:
    repo, local, shared = make_repo(tmp_path)
    with pytest.raises(DatasetError) as err:
        resolve_dataset_path(None, {}, repo)
    msg = str(err.value)
    assert str(local) in msg and str(shared) in msg
    assert msg.index(str(local)) < msg.index(str(shared))
    assert DATASET_ENV in msg


def test_directory_is_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="is not a regular file"):
        resolve_dataset_path(tmp_path, {}, tmp_path)


def test_missing_columns_are_named(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "bad.csv", [("joy", "hi")], header=("id", "sentiment", "text"))
    with pytest.raises(DatasetError) as err:
        load_dataset(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "tweet_id" in msg and "content" in msg
    assert "missing column" in msg


def test_empty_rows_are_dropped(tmp_path: Path) -> None:
    rows = [("joy", "good"), ("", "no label"), ("sadness", "   "), ("sadness", "bad"), ("joy", "")]
    data = load_dataset(write_csv(tmp_path / "d.csv", rows))
    assert data.texts == ["good", "bad"]
    assert data.labels == ["joy", "sadness"]
    assert (data.rows_read, data.rows_dropped, data.rows_used) == (5, 3, 2)


def test_all_rows_empty_is_an_error(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", [("", "x"), ("joy", " ")])
    with pytest.raises(DatasetError, match="no usable rows"):
        load_dataset(path)


def test_non_utf8_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"tweet_id,sentiment,content\n1,joy,caf\xe9\n")
    with pytest.raises(DatasetError, match="not UTF-8"):
        load_dataset(path)


def test_sha256_changes_with_content(tmp_path: Path) -> None:
    a = load_dataset(write_csv(tmp_path / "a.csv", [("joy", "x")]))
    b = load_dataset(write_csv(tmp_path / "b.csv", [("joy", "y")]))
    assert a.sha256 != b.sha256 and len(a.sha256) == 64
