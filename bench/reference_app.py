"""Reference API written the exam's way, for comparison only (not shipped).

Single uvicorn process, a pydantic request model, and ``pipeline.predict`` +
``pipeline.predict_proba`` on every request. Uses the same model artifact as the real API:
``MLGATE_MODEL_DIR`` (default ``model/artifacts``).

The endpoint is ``async def``: on this machine that reference is faster (~490 req/s) than
the same code as a plain ``def`` run in the thread pool (~290 req/s), so comparing with it
gives the conservative ratio.

Run: ``python -m uvicorn bench.reference_app:app --host 127.0.0.1 --port 8001``
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from pydantic import BaseModel

from model.predictor import load_predictor

MODEL_DIR = Path(
    os.environ.get("MLGATE_MODEL_DIR")
    or Path(__file__).resolve().parent.parent / "model" / "artifacts"
)
pipeline = load_predictor(MODEL_DIR).pipeline

app = FastAPI(title="reference (exam-style) API")


class Sentence(BaseModel):
    sentence: str


@app.post("/predict")
async def predict(body: Sentence) -> dict:
    label = pipeline.predict([body.sentence])[0]
    proba = pipeline.predict_proba([body.sentence])[0]
    return {
        "prediction value": str(label),
        "prediction_proba_dict": {
            str(c): float(p) for c, p in zip(pipeline.classes_, proba, strict=True)
        },
    }
