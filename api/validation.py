"""Pure request validation for ``POST /predict`` (no I/O, easy to test).

Every problem raises :class:`ApiError` carrying the HTTP status, a machine code and a
human sentence. Decisions:

* Content-Type must be ``application/json`` (``charset=utf-8`` allowed) -> else 415;
* body larger than the limit (default 64 KiB) -> 413;
* body not valid UTF-8 -> 400 ``invalid_encoding``; not JSON -> 400 ``invalid_json``;
  ``NaN``/``Infinity`` literals (not JSON per RFC 8259) -> 400 ``invalid_json``;
* JSON that is not an object, a missing ``sentence``, a non-string ``sentence``, a blank
  one, one longer than ``max_chars`` (counted in Unicode code points) or **any extra
  field** -> 422 with a specific code (extra fields are rejected so that a typo such as
  ``{"sentance": ...}`` or a client expecting another API version fails loudly).
"""

from __future__ import annotations

import json
from typing import Any

# Whitespace as understood by ECMA-262 "\s" (the regex dialect of JSON Schema), so that the
# OpenAPI pattern "\S" and this check agree exactly on what "blank" means.
ECMA_WHITESPACE = (
    "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
)
ALLOWED_FIELDS = ("sentence",)


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail

    def body(self) -> bytes:
        return error_body(self.code, self.detail)


def error_body(code: str, detail: str) -> bytes:
    return json.dumps({"error": code, "detail": detail}).encode()


def check_content_type(value: str | None) -> None:
    """Accept ``application/json`` with an optional ``charset=utf-8`` parameter only."""
    if not value:
        raise ApiError(
            415, "unsupported_media_type", "Content-Type header is missing; send application/json"
        )
    media, _, params = value.partition(";")
    if media.strip().lower() != "application/json":
        raise ApiError(
            415, "unsupported_media_type",
            f"Content-Type {media.strip()!r} is not supported; send application/json",
        )  # fmt: skip
    for param in params.split(";"):
        name, _, val = param.partition("=")
        if name.strip().lower() == "charset" and val.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            raise ApiError(
                415, "unsupported_media_type",
                f"charset {val.strip()!r} is not supported; the body must be UTF-8 JSON",
            )  # fmt: skip


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed (NaN/Infinity are not JSON numbers)")


def parse_sentence(body: bytes, max_chars: int) -> str:
    """Decode and validate a ``/predict`` body; return the sentence."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(
            400, "invalid_encoding", f"request body is not valid UTF-8 (byte {exc.start})"
        ) from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:  # JSONDecodeError and the NaN/Infinity rejection
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise ApiError(
            422, "not_an_object",
            f'request body must be a JSON object like {{"sentence": "..."}}, got {_kind(data)}',
        )  # fmt: skip
    extra = sorted(k for k in data if k not in ALLOWED_FIELDS)
    if extra:
        raise ApiError(
            422, "unknown_field",
            f"unknown field(s) {', '.join(repr(k) for k in extra)}; only 'sentence' is accepted",
        )  # fmt: skip
    if "sentence" not in data:
        raise ApiError(422, "missing_field", "field 'sentence' is required")
    sentence = data["sentence"]
    if not isinstance(sentence, str):
        raise ApiError(
            422, "wrong_type", f"field 'sentence' must be a string, got {_kind(sentence)}"
        )
    if not sentence.strip(ECMA_WHITESPACE):
        raise ApiError(422, "empty_sentence", "field 'sentence' is empty or only whitespace")
    if len(sentence) > max_chars:
        raise ApiError(
            422, "sentence_too_long",
            f"field 'sentence' has {len(sentence)} characters; the limit is {max_chars}",
        )  # fmt: skip
    return sentence


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
