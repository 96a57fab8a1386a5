"""The FastAPI application. One code base; the variant (its name, and whether it answers with
the debug fields: v2 by default) is a setting.

``create_app`` is a factory so tests can inject settings and a predictor; ``api.main``
builds the served instance from the environment.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.audit import AuditLog
from api.metrics import RequestMetrics, handler_for, render, set_model_info
from api.settings import Settings
from api.validation import ApiError, check_content_type, error_body, parse_sentence
from model.predictor import Predictor, current_sklearn_version, load_predictor

JSON = "application/json"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._~:/+=@-]{1,128}$")
STATUS_CODES = {
    400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
    415: "unsupported_media_type", 422: "unprocessable_entity", 500: "internal_error",
}  # fmt: skip


# ---- OpenAPI models (documentation only: bodies are parsed and built by hand) -----------
class ErrorBody(BaseModel):
    error: str = Field(description="machine-readable code, e.g. missing_field")
    detail: str = Field(description="human sentence naming the problem")


class V1Prediction(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    prediction_value: str = Field(alias="prediction value", description="predicted emotion")


class V2Prediction(V1Prediction):
    prediction_proba_dict: dict[str, float] = Field(description="probability of every class")
    model_version: str
    variant: str
    replica: str
    inference_ms: float


class Health(BaseModel):
    status: str
    variant: str
    model_version: str
    replica: str


def _err(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


PREDICT_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _err(
        "body is not UTF-8 (invalid_encoding) or not JSON, NaN/Infinity included (invalid_json)"
    ),
    413: _err("body larger than MLGATE_MAX_BODY_BYTES (payload_too_large)"),
    415: _err("Content-Type is not application/json (unsupported_media_type)"),
    422: _err(
        "not an object (not_an_object), sentence missing (missing_field), not a string "
        "(wrong_type), blank (empty_sentence), too long (sentence_too_long), or extra fields "
        "(unknown_field)"
    ),
    500: _err("internal error (a bug; never caused by input)"),
}


def request_schema(max_chars: int) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["sentence"],
        "additionalProperties": False,
        "properties": {
            "sentence": {
                "type": "string",
                "minLength": 1,
                "maxLength": max_chars,
                "pattern": r"\S",
                "description": "text to classify; not blank",
                "examples": ["I love sunny mornings"],
            }
        },
    }


class PredictHandler:
    """The whole ``POST /predict`` logic, independent of the web framework:
    (content type, body bytes, request id) -> (status, JSON body bytes)."""

    def __init__(
        self,
        settings: Settings,
        predictor: Predictor,
        audit: AuditLog,
        metrics: RequestMetrics,
        reference: Predictor | None = None,
    ) -> None:
        self.predictor, self.audit, self.metrics = predictor, audit, metrics
        self.reference = reference
        self.variant, self.replica = settings.variant, settings.replica
        self.debug = settings.debug
        self.max_chars = settings.max_chars
        self.max_body = settings.max_body_bytes
        self.version = predictor.version
        self.classes = predictor.classes

    def handle(self, content_type: str | None, body: bytes, request_id: str) -> tuple[int, bytes]:
        try:
            check_content_type(content_type)
            if len(body) > self.max_body:
                raise ApiError(
                    413, "payload_too_large", f"request body exceeds {self.max_body} bytes"
                )
            sentence = parse_sentence(body, self.max_chars)
        except ApiError as exc:
            return exc.status, exc.body()
        t0 = time.perf_counter()
        if self.debug:
            label, proba = self.predictor.predict_proba(sentence)
        else:
            label = self.predictor.predict(sentence)
        ms = (time.perf_counter() - t0) * 1000.0
        if self.debug:
            out: dict[str, Any] = {
                "prediction value": label,
                "prediction_proba_dict": dict(zip(self.classes, proba.tolist(), strict=True)),
                "model_version": self.version,
                "variant": self.variant,
                "replica": self.replica,
                "inference_ms": round(ms, 4),
            }
        else:
            out = {"prediction value": label}
        self.metrics.predicted(label)
        compared: dict[str, str] = {}
        if self.reference is not None:
            # the same input through the reference model: agreement counted exactly, per
            # request, and kept in the audit record beside the label
            compared = {
                "reference_version": self.reference.version,
                "reference_label": self.reference.predict(sentence),
            }
            self.metrics.compared(self.reference.version, label, compared["reference_label"])
        if not self.audit.record(
            request_id=request_id,
            variant=self.variant,
            replica=self.replica,
            label=label,
            latency_ms=ms,
            sentence=sentence,
            model_version=self.version,
            **compared,
        ):
            self.metrics.audit_errors.inc()
        return 200, json.dumps(out).encode()


# ---- pure-ASGI middleware: request id, variant/replica headers, request metrics ---------
class MlgateMiddleware:
    """Outermost ASGI layer. Adds ``X-Mlgate-Variant``, ``X-Mlgate-Replica``,
    ``X-Model-Version`` (the model's registry version, else its card version) and
    ``X-Request-ID`` to every response and records request metrics.

    With ``predict_handler`` set, ``POST /predict`` is answered right here (same
    :class:`PredictHandler` as the FastAPI route, which stays for OpenAPI and is used when
    the shortcut is off): it skips the Starlette middleware/routing stack, which costs
    more than the prediction itself.
    """

    def __init__(
        self,
        app: Any,
        variant: str,
        replica: str,
        metrics: RequestMetrics,
        predict_handler: PredictHandler | None = None,
        model_version: str = "",
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.predict_handler = predict_handler
        self.static_headers = [
            (b"x-mlgate-variant", variant.encode()),
            (b"x-mlgate-replica", replica.encode("utf-8", "replace")),
        ]
        if model_version:
            self.static_headers.append((b"x-model-version", model_version.encode()))

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        rid = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                rid = value.decode("latin-1")
                break
        if rid is None or not _REQUEST_ID_RE.match(rid):
            rid = uuid.uuid4().hex
        scope["mlgate.request_id"] = rid
        extra = [*self.static_headers, (b"x-request-id", rid.encode())]
        status = 500

        async def send_with_headers(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        try:
            if (
                self.predict_handler is not None
                and scope["path"] == "/predict"
                and scope["method"] == "POST"
            ):
                status = await self._predict(scope, receive, send, rid, extra)
            else:
                await self.app(scope, receive, send_with_headers)
        finally:
            self.metrics.observe(handler_for(scope["path"]), status, time.perf_counter() - start)

    async def _predict(
        self, scope: dict, receive: Any, send: Any, rid: str, extra: list[tuple[bytes, bytes]]
    ) -> int:
        handler = self.predict_handler
        assert handler is not None
        content_type = None
        length = None
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value.decode("latin-1")
            elif key == b"content-length":
                length = value
        limit = handler.max_body
        if length is not None and length.isdigit() and int(length) > limit:
            status, body = (
                413,
                error_body("payload_too_large", f"request body exceeds {limit} bytes"),
            )
        else:
            chunks: list[bytes] = []
            size = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return 499  # client went away; nothing to send
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    break
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            if size > limit:
                status, body = (
                    413,
                    error_body("payload_too_large", f"request body exceeds {limit} bytes"),
                )
            else:
                try:
                    status, body = handler.handle(content_type, b"".join(chunks), rid)
                except Exception:
                    logging.getLogger("mlgate").exception("predict failed")
                    status, body = (
                        500,
                        error_body("internal_error", "internal error; see the server log"),
                    )
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return status


async def read_body(request: Request, limit: int) -> bytes:
    """Read the body, refusing (413) as soon as it exceeds ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError(413, "payload_too_large", f"request body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "payload_too_large", f"request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    settings: Settings | None = None,
    predictor: Predictor | None = None,
    audit: AuditLog | None = None,
    fast_route: bool = True,
    reference: Predictor | None = None,
) -> Any:
    """Build the ASGI app: a FastAPI app wrapped in :class:`MlgateMiddleware`.

    The wrapper is outermost so that even a 500 from Starlette's error middleware carries
    the headers and is counted. The FastAPI instance is available as ``.fastapi``.
    """
    settings = settings or Settings.from_env()
    predictor = predictor or load_predictor(settings.model_dir)
    if reference is None and settings.reference_model_dir is not None:
        reference = load_predictor(settings.reference_model_dir)
    audit = audit or AuditLog(
        settings.audit_dir,
        settings.audit_max_bytes,
        settings.audit_backups,
        settings.log_text,
        key=settings.audit_key,
    )
    variant, replica, version = settings.variant, settings.replica, predictor.version
    debug = settings.debug
    max_chars, max_body = settings.max_chars, settings.max_body_bytes
    metrics = RequestMetrics(variant, version)
    handler = PredictHandler(settings, predictor, audit, metrics, reference)
    set_model_info(variant, version, current_sklearn_version())
    card_body = json.dumps(
        {**predictor.card, **({"registry": predictor.registry} if predictor.registry else {})}
    ).encode()
    health_body = json.dumps(
        {
            "status": "ok",
            "variant": variant,
            "model_version": version,
            "replica": replica,
            **({"reference_version": reference.version} if reference is not None else {}),
        }
    ).encode()

    app = FastAPI(
        title="mlgate prediction API",
        version=version,
        description=f"Tweet emotion classifier, variant {variant} "
        f"({'debug' if debug else 'standard'}). Errors are JSON: "
        '{"error": "<code>", "detail": "<sentence>"}.',
    )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = STATUS_CODES.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else code
        if exc.status_code == 404:
            detail = f"no route for {request.url.path}"
        elif exc.status_code == 405:
            detail = f"method {request.method} is not allowed on {request.url.path}"
        return Response(
            error_body(code, detail), exc.status_code, headers=exc.headers, media_type=JSON
        )

    async def validation_error(request: Request, exc: Exception) -> Response:
        return Response(error_body("invalid_request", str(exc)), 422, media_type=JSON)

    async def internal_error(request: Request, exc: Exception) -> Response:
        return Response(
            error_body("internal_error", "internal error; see the server log"), 500, media_type=JSON
        )

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)

    @app.post(
        "/predict",
        summary="Predict the emotion of one sentence",
        response_model=None,
        responses={
            200: {
                "model": V2Prediction if debug else V1Prediction,
                "description": "predicted label"
                + (" with probabilities and debug fields" if debug else ""),
            },
            **PREDICT_ERRORS,
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {JSON: {"schema": request_schema(max_chars)}},
            }
        },
    )
    async def predict(request: Request) -> Response:
        try:
            body = await read_body(request, max_body)
        except ApiError as exc:
            return Response(exc.body(), exc.status, media_type=JSON)
        rid = request.scope.get("mlgate.request_id", "")
        status, out = handler.handle(request.headers.get("content-type"), body, rid)
        return Response(out, status, media_type=JSON)

    @app.get("/health", response_model=Health, summary="Readiness: 200 once the model is loaded")
    async def health() -> Response:
        return Response(health_body, media_type=JSON)

    @app.get(
        "/metrics",
        summary="Prometheus metrics (merged across workers)",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics_endpoint() -> Response:
        data, content_type = render()
        return Response(data, media_type=content_type)

    @app.get(
        "/model",
        summary="The model card (with its registry record when it came from the registry)",
        responses={200: {"content": {JSON: {"schema": {"type": "object"}}}}},
    )
    async def model_card() -> Response:
        return Response(card_body, media_type=JSON)

    wrapped = MlgateMiddleware(
        app, variant, replica, metrics, handler if fast_route else None, model_version=version
    )
    wrapped.fastapi = app  # type: ignore[attr-defined]
    wrapped.settings = settings  # type: ignore[attr-defined]
    wrapped.predictor = predictor  # type: ignore[attr-defined]
    wrapped.audit = audit  # type: ignore[attr-defined]
    return wrapped
