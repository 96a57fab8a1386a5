"""Train the emotion classifier and write ``model.joblib`` + ``model_card.json``.

Usage: ``python -m model.train [--data PATH] [--out DIR] [--if-stale] [--revision TEXT]
[--param KEY=VALUE ...] [--alias NAME] [--alias-new NAME] [--no-register]``

The model version is the first 12 hex digits of a sha256 over the dataset bytes, the
training code, the parameters, the scikit-learn version and ``--revision``: the same
inputs always give the same version, and ``--revision`` forces a new one.

Every artifact is also registered in the model registry (``model/registry.py``: MLflow,
embedded under ``.mlgate/mlflow`` unless ``MLFLOW_TRACKING_URI`` is set) as a version of
``mlgate-emotions``, only when no version has its model version yet; ``--alias`` points an alias
(``stable``, ``candidate``) at it, ``--alias-new`` only when it is a new version (``make model``
and deployments: an artifact registered before keeps the aliases the user gave it), and the first
version ever registered becomes ``stable``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from model.dataset import Dataset, DatasetError, load_dataset
from model.predictor import CARD_FILENAME, MODEL_FILENAME, PAYLOAD_FORMAT, current_sklearn_version

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_OUT_DIR = PACKAGE_DIR / "artifacts"
SEED = 42
TEST_SIZE = 0.2

# The reference pipeline. Changing anything here changes the model version.
PARAMS: dict[str, Any] = {
    "tfidf": {"ngram_range": [1, 2], "max_features": 10000, "stop_words": "english"},
    "logreg": {"C": 1.0, "max_iter": 1000, "solver": "lbfgs"},
    "split": {"test_size": TEST_SIZE, "random_state": SEED, "stratify": True},
}

# Files whose content defines "the training code" for the version hash.
CODE_FILES = (PACKAGE_DIR / "train.py", PACKAGE_DIR / "dataset.py")

Progress = Callable[[str], None]


def code_sha256(files: Sequence[Path] = CODE_FILES) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def compute_version(
    data_sha256: str,
    code_digest: str,
    params: dict[str, Any],
    sklearn_version: str,
    revision: str = "",
) -> str:
    """Deterministic model version: 12 hex chars of sha256 over all training inputs."""
    blob = json.dumps(
        {
            "data": data_sha256,
            "code": code_digest,
            "params": params,
            "sklearn": sklearn_version,
            "revision": revision,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def build_pipeline(params: dict[str, Any] = PARAMS) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    tfidf = dict(params["tfidf"])
    tfidf["ngram_range"] = tuple(tfidf["ngram_range"])
    return Pipeline(
        [
            ("tfidf", TfidfVectorizer(**tfidf)),
            ("clf", LogisticRegression(random_state=SEED, **params["logreg"])),
        ]
    )


def split(
    texts: Sequence[str], labels: Sequence[str], params: dict[str, Any] = PARAMS
) -> tuple[list[str], list[str], list[str], list[str]]:
    """Stratified held-out split (seed 42): x_train, x_test, y_train, y_test."""
    from sklearn.model_selection import train_test_split

    sp = params["split"]
    x_tr, x_te, y_tr, y_te = train_test_split(
        list(texts),
        list(labels),
        test_size=sp["test_size"],
        random_state=sp["random_state"],
        stratify=list(labels) if sp["stratify"] else None,
    )
    return x_tr, x_te, y_tr, y_te


class _Heartbeat:
    """Prints 'still <doing>' every few seconds while a long step runs."""

    def __init__(self, progress: Progress, what: str, every: float = 5.0) -> None:
        self.progress, self.what, self.every = progress, what, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.wait(self.every):
            self.progress(f"  ... still {self.what} ({time.monotonic() - start:.0f}s)")

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def train(
    dataset: Dataset,
    params: dict[str, Any] = PARAMS,
    revision: str = "",
    progress: Progress = lambda msg: None,
) -> tuple[Any, dict[str, Any]]:
    """Fit the reference pipeline, evaluate it on the held-out split, return (pipeline, card)."""
    from sklearn.metrics import accuracy_score, f1_score

    t0 = time.monotonic()
    sk = current_sklearn_version()
    version = compute_version(dataset.sha256, code_sha256(), params, sk, revision)
    x_tr, x_te, y_tr, y_te = split(dataset.texts, dataset.labels, params)
    progress(f"split: {len(x_tr)} train / {len(x_te)} held-out rows (stratified, seed {SEED})")

    # The shipped model is the one fitted on the train split, so the card's held-out
    # metrics describe exactly the artifact that is served.
    pipeline = build_pipeline(params)
    progress("fitting TF-IDF + LogisticRegression on the train split ...")
    with _Heartbeat(progress, "fitting"):
        pipeline.fit(x_tr, y_tr)
    y_pred = pipeline.predict(x_te)
    accuracy = float(accuracy_score(y_te, y_pred))
    macro_f1 = float(f1_score(y_te, y_pred, average="macro"))
    classes = [str(c) for c in pipeline.classes_]
    per_class = f1_score(y_te, y_pred, average=None, labels=pipeline.classes_, zero_division=0)
    progress(f"held-out accuracy {accuracy:.4f}, macro-F1 {macro_f1:.4f}")

    seconds = time.monotonic() - t0
    card: dict[str, Any] = {
        "name": "mlgate-tweet-emotions",
        "version": version,
        "revision": revision,
        "pipeline": "TfidfVectorizer + LogisticRegression",
        "params": params,
        "sklearn_version": sk,
        "python_version": platform.python_version(),
        "classes": classes,
        "rows": {
            "read": dataset.rows_read,
            "dropped_empty": dataset.rows_dropped,
            "used": dataset.rows_used,
            "train": len(x_tr),
            "held_out": len(x_te),
        },
        "label_counts": dict(sorted(Counter(dataset.labels).items())),
        "metrics": {
            "held_out_accuracy": round(accuracy, 6),
            "held_out_macro_f1": round(macro_f1, 6),
            "per_class_f1": {
                c: round(float(f), 6) for c, f in zip(classes, per_class, strict=True)
            },
            "split": f"stratified {int(TEST_SIZE * 100)}% held out, seed {SEED}",
        },
        "data": {"file": dataset.path.name, "sha256": dataset.sha256},
        "code_sha256": code_sha256(),
        "training_seconds": round(seconds, 2),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return pipeline, card


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_artifacts(out_dir: Path, pipeline: Any, card: dict[str, Any]) -> None:
    """Write model.joblib then model_card.json, each atomically (rename into place)."""
    import joblib

    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": PAYLOAD_FORMAT,
        "version": card["version"],
        "sklearn_version": card["sklearn_version"],
        "classes": card["classes"],
        "pipeline": pipeline,
    }
    _atomic_write(out_dir / MODEL_FILENAME, lambda p: joblib.dump(payload, p, compress=3))
    text = json.dumps(card, indent=2, sort_keys=True) + "\n"
    _atomic_write(out_dir / CARD_FILENAME, lambda p: p.write_text(text, encoding="utf-8"))


def existing_card(out_dir: Path) -> dict:
    """The card in out_dir if both artifact files exist and the card parses, else {}."""
    if not (out_dir / MODEL_FILENAME).is_file():
        return {}
    try:
        card = json.loads((out_dir / CARD_FILENAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return card if isinstance(card, dict) else {}


def existing_version(out_dir: Path) -> str | None:
    """Version recorded in out_dir's card if both artifact files exist, else None."""
    return existing_card(out_dir).get("version")


def parse_params(overrides: Sequence[str], base: dict[str, Any] = PARAMS) -> dict[str, Any]:
    """PARAMS with ``section.key=value`` overrides (value read as JSON, else as text)."""
    params = copy.deepcopy(base)
    for item in overrides:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or section not in params or name not in params[section]:
            known = ", ".join(f"{s}.{k}" for s, keys in params.items() for k in keys)
            raise ValueError(f"--param {item!r}: expected KEY=VALUE with KEY one of {known}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        params[section][name] = value
    return params


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m model.train", description=__doc__.split("\n")[0])
    p.add_argument("--data", help="dataset CSV (default: $MLGATE_DATASET, then data/, shared/)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR, help="output directory")
    p.add_argument("--if-stale", action="store_true", help="train only if inputs changed")
    p.add_argument(
        "--revision",
        default=None,
        help="extra text hashed into the model version (default: the current artifacts' revision)",
    )
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a training parameter other than the reference one, e.g. logreg.C=2.0 (repeatable)",
    )
    p.add_argument(
        "--alias",
        default=None,
        help="point this registry alias at the model's version (stable, candidate, ...)",
    )
    p.add_argument(
        "--alias-new",
        default=None,
        metavar="ALIAS",
        help="point this alias at the model's version only if it is newly registered",
    )
    p.add_argument(
        "--registry-store",
        type=Path,
        default=None,
        help="embedded registry directory (default .mlgate/mlflow; MLFLOW_TRACKING_URI wins)",
    )
    p.add_argument(
        "--no-register", action="store_true", help="do not register the model in the registry"
    )
    return p.parse_args(argv)


def register(out_dir: Path, args: argparse.Namespace) -> None:
    """Register the artifact (a new registry version only if its model version is new)."""
    from model.registry import Registry

    registry = Registry(store=args.registry_store)
    version, created = registry.register(out_dir, alias=args.alias, alias_if_new=args.alias_new)
    aliases = " ".join(f"@{a}" for a in version.aliases) or "no alias"
    print(
        f"registry: {'registered' if created else 'already registered'} as "
        f"{registry.model_name} version {version.number} ({aliases}) in {registry.where}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.monotonic()

    def progress(msg: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {msg}", flush=True)

    try:
        params = parse_params(args.param)
        dataset = load_dataset(args.data)
    except (DatasetError, ValueError) as exc:
        print(f"model.train: {exc}", file=sys.stderr)
        return 2
    out_dir: Path = args.out.resolve()
    # Without --revision, keep the revision of the current artifacts: a model forced by
    # a revision stays current for later deployments until an input really changes.
    revision = args.revision
    if revision is None:
        revision = str(existing_card(out_dir).get("revision") or "")
    version = compute_version(
        dataset.sha256, code_sha256(), params, current_sklearn_version(), revision
    )
    from model.registry import RegistryError

    if args.if_stale and existing_version(out_dir) == version:
        print(f"model up to date: version {version} in {out_dir}")
    else:
        progress(
            f"dataset {dataset.path}: {dataset.rows_read} rows read, {dataset.rows_dropped} "
            f"empty dropped, {len(set(dataset.labels))} labels"
        )
        try:
            pipeline, card = train(dataset, params, revision, progress)
        except ValueError as exc:  # scikit-learn's verdict on a parameter value
            print(f"model.train: training failed with these parameters: {exc}", file=sys.stderr)
            return 2
        save_artifacts(out_dir, pipeline, card)
        m = card["metrics"]
        progress(f"wrote {out_dir / MODEL_FILENAME} and {CARD_FILENAME}")
        print(
            f"model version {version}: accuracy {m['held_out_accuracy']:.4f}, "
            f"macro-F1 {m['held_out_macro_f1']:.4f}, trained in {card['training_seconds']}s"
        )
    if not args.no_register:
        try:
            register(out_dir, args)
        except RegistryError as exc:
            print(f"model.train: {exc}", file=sys.stderr)
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
