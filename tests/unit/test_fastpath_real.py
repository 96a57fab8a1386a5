"""Fast path == scikit-learn pipeline on the whole held-out split of the real dataset."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model.dataset import DatasetError, load_dataset
from model.predictor import Predictor
from model.train import PARAMS, build_pipeline, split


@pytest.mark.slow
def test_fast_path_equals_pipeline_on_real_held_out_split() -> None:
    try:
        data = load_dataset()
    except DatasetError as exc:  # pragma: no cover - depends on the machine
        pytest.skip(str(exc))
    x_train, x_test, y_train, _ = split(data.texts, data.labels, PARAMS)
    pipe = build_pipeline(PARAMS).fit(x_train, y_train)
    fast = Predictor(pipe)

    labels = pipe.predict(x_test)
    proba = pipe.predict_proba(x_test)
    mismatches = []
    worst = 0.0
    for i, text in enumerate(x_test):
        label, p = fast.predict_proba(text)
        if label != labels[i] or fast.predict(text) != labels[i]:
            mismatches.append(text)
        worst = max(worst, float(np.max(np.abs(p - proba[i]))))
    assert len(x_test) == math.ceil(PARAMS["split"]["test_size"] * data.rows_used)
    assert mismatches == []
    assert worst < 1e-9
