"""Loading and validation of the tweet-emotions dataset (training side only).

The API never imports this module: it only needs the trained artifacts.

Resolution order of the CSV file (first match wins):

1. an explicit path argument, else the ``MLGATE_DATASET`` environment variable;
   when one of these is given it is the only candidate (a typo must not silently
   train on another file);
2. ``data/tweet_emotions.csv`` in the repository;
3. ``../shared/data/tweet_emotions.csv`` next to the repository.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATASET_ENV = "MLGATE_DATASET"
DATASET_FILENAME = "tweet_emotions.csv"
REQUIRED_COLUMNS = ("tweet_id", "sentiment", "content")


class DatasetError(Exception):
    """The dataset could not be found or is not usable; the message says why."""


@dataclass(frozen=True)
class Dataset:
    path: Path
    texts: list[str]
    labels: list[str]
    rows_read: int
    rows_dropped: int
    sha256: str

    @property
    def rows_used(self) -> int:
        return len(self.texts)


def candidate_paths(
    explicit: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    repo_root: Path = REPO_ROOT,
) -> list[Path]:
    """Return the ordered list of paths to try (pure: no file-system access)."""
    env = os.environ if env is None else env
    if explicit:
        return [Path(explicit)]
    if env.get(DATASET_ENV):
        return [Path(env[DATASET_ENV])]
    return [
        repo_root / "data" / DATASET_FILENAME,
        (repo_root.parent / "shared" / "data" / DATASET_FILENAME),
    ]


def resolve_dataset_path(
    explicit: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    repo_root: Path = REPO_ROOT,
) -> Path:
    """Return the first existing candidate, or raise DatasetError listing every path tried."""
    env = os.environ if env is None else env
    tried = []
    for path in candidate_paths(explicit, env, repo_root):
        if path.is_file():
            return path
        why = "is not a regular file" if path.exists() else "does not exist"
        tried.append(f"{path} ({why})")
    source = (
        "explicit --data argument"
        if explicit
        else f"${DATASET_ENV}"
        if env.get(DATASET_ENV)
        else "default locations"
    )
    raise DatasetError(
        f"dataset not found ({source}); looked in: "
        + "; ".join(tried)
        + f". Set {DATASET_ENV} or pass --data PATH (see data/README.md)."
    )


def parse_rows(lines: list[str] | object, where: str) -> tuple[list[str], list[str], int]:
    """Parse CSV text lines; return (texts, labels, rows_read). Rows with an empty
    ``sentiment`` or blank ``content`` are dropped. Raises DatasetError on bad columns."""
    reader = csv.DictReader(lines)  # type: ignore[arg-type]
    header = reader.fieldnames or []
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DatasetError(
            f"{where}: missing column(s) {', '.join(missing)}; found {header or 'no header'}; "
            f"expected {', '.join(REQUIRED_COLUMNS)}"
        )
    texts: list[str] = []
    labels: list[str] = []
    rows_read = 0
    for row in reader:
        rows_read += 1
        label = (row.get("sentiment") or "").strip()
        text = row.get("content") or ""
        if not label or not text.strip():
            continue
        texts.append(text)
        labels.append(label)
    if not texts:
        raise DatasetError(f"{where}: no usable rows ({rows_read} read, all empty)")
    return texts, labels, rows_read


def load_dataset(
    explicit: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    repo_root: Path = REPO_ROOT,
) -> Dataset:
    """Resolve, read and validate the dataset."""
    path = resolve_dataset_path(explicit, env, repo_root)
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8-sig")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    try:
        texts, labels, rows_read = parse_rows(text.splitlines(keepends=True), str(path))
    except csv.Error as exc:
        raise DatasetError(f"{path}: malformed CSV: {exc}") from exc
    return Dataset(
        path=path,
        texts=texts,
        labels=labels,
        rows_read=rows_read,
        rows_dropped=rows_read - len(texts),
        sha256=hashlib.sha256(raw).hexdigest(),
    )
