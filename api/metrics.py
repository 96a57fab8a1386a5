"""Prometheus metrics, correct across several gunicorn workers.

When ``PROMETHEUS_MULTIPROC_DIR`` is set (the launcher and ``gunicorn_conf.py`` make
sure it is, before this module is imported), prometheus_client stores every value in
per-process mmap files and ``/metrics`` merges them with a fresh ``MultiProcessCollector``
per scrape. Without it (unit tests in one process) the default registry is used.

``mlgate_model_info`` uses ``multiprocess_mode="max"``: every worker sets the same 1, so
``max`` yields one series with value 1 whatever the number of workers (``sum``/``livesum``
would say 2 with 2 workers, ``all``/``liveall`` would add a ``pid`` label per worker).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

HANDLERS = ("predict", "health", "metrics", "model", "other")
PATH_TO_HANDLER = {
    "/predict": "predict",
    "/health": "health",
    "/metrics": "metrics",
    "/model": "model",
}
BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip

# Every series carries the variant and the model version it serves (the registry version), so
# that versions side by side (and one variant across a rollout) are told apart.
REQUESTS = Counter(
    "mlgate_requests_total", "HTTP requests by variant, model version, handler and status",
    ["variant", "model_version", "handler", "status"],
)  # fmt: skip
LATENCY = Histogram(
    "mlgate_request_duration_seconds",
    "Request duration in seconds by variant, model version and handler",
    ["variant", "model_version", "handler"], buckets=BUCKETS,
)  # fmt: skip
PREDICTIONS = Counter(
    "mlgate_predictions_total", "Predictions by predicted label, variant and model version",
    ["variant", "model_version", "label"],
)  # fmt: skip
MODEL_INFO = Gauge(
    "mlgate_model_info", "Model served by this API (value is always 1)",
    ["variant", "model_version", "sklearn_version"], multiprocess_mode="max",
)  # fmt: skip
AUDIT_ERRORS = Counter(
    "mlgate_audit_log_errors_total", "Audit log records that could not be written",
    ["variant", "model_version"],
)  # fmt: skip
# A variant with a reference model (a shadow: the default route's model beside its own)
# compares every prediction with the reference's on the same input: agreement per pair of
# versions, and the pairs of labels (13 x 13 at most per pair of versions).
AGREEMENT = Counter(
    "mlgate_agreement_total",
    "Predictions compared with the reference model's on the same input, by agreement",
    ["variant", "model_version", "reference_version", "agree"],
)  # fmt: skip
LABEL_PAIRS = Counter(
    "mlgate_agreement_labels_total",
    "Predictions compared with the reference model's, by pair of labels",
    ["variant", "model_version", "reference_version", "label", "reference_label"],
)  # fmt: skip


def handler_for(path: str) -> str:
    return PATH_TO_HANDLER.get(path, "other")


class RequestMetrics:
    """Caches labelled children: ``.labels()`` costs more than the increment itself."""

    def __init__(self, variant: str, model_version: str) -> None:
        self.variant, self.model_version = variant, model_version
        self._requests: dict[tuple[str, int], object] = {}
        self._latency = {h: LATENCY.labels(variant, model_version, h) for h in HANDLERS}
        self._predictions: dict[str, object] = {}
        self._compared: dict[tuple[str, str, str], tuple[object, object]] = {}
        self.audit_errors = AUDIT_ERRORS.labels(variant, model_version)

    def observe(self, handler: str, status: int, seconds: float) -> None:
        key = (handler, status)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = REQUESTS.labels(
                self.variant, self.model_version, handler, str(status)
            )
        child.inc()  # type: ignore[attr-defined]
        self._latency[handler].observe(seconds)

    def compared(self, reference_version: str, label: str, reference_label: str) -> None:
        key = (reference_version, label, reference_label)
        children = self._compared.get(key)
        if children is None:
            labels = (self.variant, self.model_version, reference_version)
            agree = "true" if label == reference_label else "false"
            children = self._compared[key] = (
                AGREEMENT.labels(*labels, agree),
                LABEL_PAIRS.labels(*labels, label, reference_label),
            )
        for child in children:
            child.inc()  # type: ignore[attr-defined]

    def predicted(self, label: str) -> None:
        child = self._predictions.get(label)
        if child is None:
            child = self._predictions[label] = PREDICTIONS.labels(
                self.variant, self.model_version, label
            )
        child.inc()  # type: ignore[attr-defined]


def set_model_info(variant: str, model_version: str, sklearn_version: str) -> None:
    MODEL_INFO.labels(variant, model_version, sklearn_version).set(1)


def render() -> tuple[bytes, str]:
    """Exposition text of all metrics, merged across worker processes if needed."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
