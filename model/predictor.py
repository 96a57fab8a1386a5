"""Run-time side of the model: artifact loading/validation and the fast prediction path.

This is the only module of ``model`` the API imports. It needs numpy, joblib and
scikit-learn (to unpickle the pipeline), never the dataset or the training code.

Fast path: ``Pipeline.predict`` on one sentence spends ~0.8 ms in input validation and
sparse-matrix plumbing. :class:`Predictor` does the same arithmetic directly:

1. the vectorizer's own fitted analyzer (same preprocessing, tokens, stop words, n-grams);
2. vocabulary lookup and term counts;
3. ``tf * idf`` then L2 normalisation (``TfidfTransformer`` with ``norm='l2'``);
4. ``scores = intercept + w @ coef.T[idx]`` with ``coef.T`` stored C-contiguous;
5. probabilities like ``LogisticRegression.predict_proba`` in scikit-learn 1.9:
   softmax of the decision function for 3+ classes, logistic sigmoid for 2 classes.

``tests/unit/test_fastpath_real.py`` proves it equal to the pipeline on the whole
held-out split.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MODEL_FILENAME = "model.joblib"
CARD_FILENAME = "model_card.json"
# Written beside the two files by ``model.registry`` when a deployment takes a registered
# version: {"model": name, "version": N, "mlgate_version": card version, "sha256": of the model}.
REGISTRY_FILENAME = "registry.json"
PAYLOAD_FORMAT = 1


class ModelError(Exception):
    """The model artifacts are missing, unreadable or incompatible; message says why."""


def current_sklearn_version() -> str:
    """The installed scikit-learn's version, from its package metadata: without importing
    scikit-learn (seconds), which a deployment's up-to-date check does not otherwise need."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("scikit-learn")
    except PackageNotFoundError:  # not installed as a distribution (a source checkout)
        import sklearn

        return sklearn.__version__


@dataclass
class Predictor:
    """Fast single-sentence predictor built from a fitted TF-IDF + LogisticRegression pipeline."""

    pipeline: Any
    # What the API reports as model_version: the registry version ("3") when the artifact came
    # from the registry, else the card's version (a hash of every training input).
    version: str = "unknown"
    card: dict[str, Any] = field(default_factory=dict)
    registry: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        vec = self.pipeline.steps[0][1]
        clf = self.pipeline.steps[-1][1]
        if getattr(vec, "sublinear_tf", False) or getattr(vec, "binary", False):
            raise ModelError("fast path supports TfidfVectorizer without sublinear_tf/binary")
        if getattr(vec, "norm", "l2") not in ("l2", None):
            raise ModelError(f"fast path supports norm='l2' or None, not {vec.norm!r}")
        self._analyzer = vec.build_analyzer()
        self._vocab: dict[str, int] = dict(vec.vocabulary_)
        self._idf = np.asarray(vec.idf_, dtype=np.float64) if vec.use_idf else None
        self._l2 = vec.norm == "l2"
        self._coef_t = np.ascontiguousarray(np.asarray(clf.coef_, dtype=np.float64).T)
        self._intercept = np.asarray(clf.intercept_, dtype=np.float64)
        self.classes: list[str] = [str(c) for c in clf.classes_]
        self._binary = len(self.classes) == 2
        self._n_outputs = self._coef_t.shape[1]

    # -- core arithmetic ---------------------------------------------------------------
    def decision(self, text: str) -> np.ndarray:
        """Decision-function values, same as ``pipeline.decision_function([text])[0]``."""
        vocab_get = self._vocab.get
        counts: dict[int, int] = {}
        for token in self._analyzer(text):
            j = vocab_get(token)
            if j is not None:
                counts[j] = counts.get(j, 0) + 1
        if not counts:
            return self._intercept.copy()
        idx = np.fromiter(counts.keys(), dtype=np.intp, count=len(counts))
        w = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
        if self._idf is not None:
            w *= self._idf[idx]
        if self._l2:
            norm = math.sqrt(float(w @ w))
            if norm > 0.0:
                w /= norm
        return w @ self._coef_t[idx] + self._intercept

    def predict(self, text: str) -> str:
        """Predicted label for one sentence."""
        scores = self.decision(text)
        if self._binary:
            return self.classes[int(scores[0] > 0)]
        return self.classes[int(scores.argmax())]

    def predict_proba(self, text: str) -> tuple[str, np.ndarray]:
        """(label, probabilities in ``self.classes`` order) for one sentence."""
        scores = self.decision(text)
        if self._binary:
            p1 = 1.0 / (1.0 + math.exp(-float(scores[0])))
            proba = np.array([1.0 - p1, p1])
            return self.classes[int(scores[0] > 0)], proba
        return self.classes[int(scores.argmax())], softmax(scores)


def softmax(scores: np.ndarray) -> np.ndarray:
    """Numerically stable softmax, same operations as ``sklearn.utils.extmath.softmax``."""
    e = np.exp(scores - scores.max())
    return e / e.sum()


def read_card(model_dir: Path) -> dict[str, Any]:
    path = model_dir / CARD_FILENAME
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelError(f"model card {path} is missing (run `make model`)") from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"model card {path} is unreadable: {exc}") from exc
    if not isinstance(card, dict) or not isinstance(card.get("version"), str):
        raise ModelError(f"model card {path} has no 'version' string")
    return card


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_registry_record(model_dir: Path, card: dict[str, Any]) -> dict[str, Any]:
    """The registry record beside the artifact ({} when there is none), checked against the
    card and the model file's sha256: a container serves exactly the registered artifact."""
    path = model_dir / REGISTRY_FILENAME
    if not path.exists():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"registry record {path} is unreadable: {exc}") from exc
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("version"), int)
        or isinstance(record.get("version"), bool)
        or record["version"] < 1
        or not isinstance(record.get("sha256"), str)
    ):
        raise ModelError(f"registry record {path} has no version number and sha256")
    if record.get("mlgate_version") != card["version"]:
        raise ModelError(
            f"registry record {path} is for model version {record.get('mlgate_version')!r}, "
            f"{CARD_FILENAME} says {card['version']!r}"
        )
    digest = sha256_file(model_dir / MODEL_FILENAME)
    if digest != record["sha256"]:
        raise ModelError(
            f"{model_dir / MODEL_FILENAME} has sha256 {digest}, registry version "
            f"{record['version']} recorded {record['sha256']}"
        )
    return record


def load_predictor(model_dir: str | Path) -> Predictor:
    """Load and validate ``model.joblib`` + ``model_card.json`` (+ ``registry.json`` when the
    artifact came from the registry) from ``model_dir``.

    Raises :class:`ModelError` with a one-line reason when the directory or a file is
    missing or unreadable, the payload is not ours, the files disagree on the model
    version or checksum, or the model was trained with another scikit-learn version.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(f"model directory {model_dir} does not exist (run `make model`)")
    card = read_card(model_dir)
    running = current_sklearn_version()
    card_sk = card.get("sklearn_version")
    if card_sk != running:
        raise ModelError(
            f"model was trained with scikit-learn {card_sk}, this process runs {running} "
            "(retrain with `make retrain`)"
        )
    path = model_dir / MODEL_FILENAME
    if not path.is_file():
        raise ModelError(f"model file {path} is missing (run `make model`)")
    import joblib

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            payload = joblib.load(path)
    except Exception as exc:
        raise ModelError(
            f"model file {path} is unreadable: {type(exc).__name__}: {exc}".splitlines()[0]
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != PAYLOAD_FORMAT:
        raise ModelError(f"model file {path} is not an mlgate model payload")
    if payload.get("sklearn_version") != running:
        raise ModelError(
            f"model was trained with scikit-learn {payload.get('sklearn_version')}, this "
            f"process runs {running} (retrain with `make retrain`)"
        )
    if payload.get("version") != card["version"]:
        raise ModelError(
            f"{path} (version {payload.get('version')}) does not match {CARD_FILENAME} "
            f"(version {card['version']})"
        )
    record = read_registry_record(model_dir, card)
    version = str(record["version"]) if record else card["version"]
    try:
        return Predictor(payload["pipeline"], version=version, card=card, registry=record)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"model file {path} holds an unsupported pipeline: {exc}") from exc
