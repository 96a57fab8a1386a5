"""All API settings, read once from the environment (the one place settings live).

| variable                   | default                               |
|----------------------------|---------------------------------------|
| MLGATE_VARIANT             | v1 (the variant's name: v1, v2, canary, ...) |
| MLGATE_DEBUG               | 1 for v2, else 0 (answers add probabilities and debug fields) |
| MLGATE_MODEL_DIR           | model/artifacts beside the package    |
| MLGATE_REFERENCE_MODEL_DIR | unset (a model each prediction is compared with) |
| MLGATE_BIND                | 127.0.0.1:8000                        |
| MLGATE_WORKERS             | 2                                     |
| MLGATE_MAX_CHARS           | 5000                                  |
| MLGATE_MAX_BODY_BYTES      | 65536                                 |
| MLGATE_MAX_REQUESTS        | 100000 (worker recycled after; 0 = never), jitter 10% |
| MLGATE_AUDIT_DIR           | logs/ beside the package              |
| MLGATE_AUDIT_MAX_BYTES     | 10485760 (10 MiB)                     |
| MLGATE_AUDIT_BACKUPS       | 5                                     |
| MLGATE_LOG_TEXT            | 0                                     |
| MLGATE_AUDIT_KEY_FILE      | unset (no sentence hash in the audit) |
| MLGATE_REPLICA             | socket.gethostname()                  |
| MLGATE_ACCESS_LOG          | 0                                     |
| PROMETHEUS_MULTIPROC_DIR   | <tmp>/mlgate-metrics-<uid>-<port>     |
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# A variant's name, as mlgate_variants allows it (it is a metric label and a container name).
_VARIANT_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
AUDIT_KEY_MIN_BYTES = 32
_BIND_RE = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.\-]+):(?P<port>\d{1,5})$")


class SettingsError(ValueError):
    """An environment variable has an invalid value; the message names it."""


@dataclass(frozen=True)
class Settings:
    variant: str = "v1"
    debug: bool = False
    model_dir: Path = ROOT / "model" / "artifacts"
    reference_model_dir: Path | None = None
    bind: str = "127.0.0.1:8000"
    workers: int = 2
    max_chars: int = 5000
    max_body_bytes: int = 64 * 1024
    max_requests: int = 100_000
    audit_dir: Path = ROOT / "logs"
    audit_max_bytes: int = 10 * 1024 * 1024
    audit_backups: int = 5
    log_text: bool = False
    # the audit log's hash key: never printed (repr=False), never logged
    audit_key: bytes | None = field(default=None, repr=False)
    replica: str = ""
    access_log: bool = False
    multiproc_dir: Path | None = None

    @property
    def port(self) -> int:
        return int(self.bind.rsplit(":", 1)[1])

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables; raise SettingsError on a bad value."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value is not None and value.strip() != "" else None

        def integer(name: str, default: int, lo: int, hi: int) -> int:
            raw = get(name)
            if raw is None:
                return default
            try:
                value = int(raw)
            except ValueError:
                raise SettingsError(f"{name}={raw!r} is not an integer") from None
            if not lo <= value <= hi:
                raise SettingsError(f"{name}={value} is out of range [{lo}, {hi}]")
            return value

        def flag(name: str, default: bool = False) -> bool:
            raw = get(name)
            if raw is None:
                return default
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise SettingsError(f"{name}={raw!r} must be 0 or 1")

        variant = (get("MLGATE_VARIANT") or "v1").lower()
        if len(variant) > 20 or not _VARIANT_RE.match(variant):
            raise SettingsError(
                f"MLGATE_VARIANT={variant!r} must be 1-20 lowercase letters and digits in words "
                "joined by single hyphens, starting with a letter (v1, v2, canary, ...)"
            )
        bind = get("MLGATE_BIND") or cls.bind
        m = _BIND_RE.match(bind)
        if not m or not 1 <= int(m["port"]) <= 65535:
            raise SettingsError(f"MLGATE_BIND={bind!r} must be HOST:PORT with PORT in 1..65535")
        replica = get("MLGATE_REPLICA") or socket.gethostname()
        if len(replica) > 253 or not replica.isprintable():
            raise SettingsError("MLGATE_REPLICA must be a printable name of at most 253 chars")
        model_dir = Path(get("MLGATE_MODEL_DIR") or cls.model_dir)
        reference = get("MLGATE_REFERENCE_MODEL_DIR")
        audit_dir = Path(get("MLGATE_AUDIT_DIR") or cls.audit_dir)
        multiproc = get("PROMETHEUS_MULTIPROC_DIR")
        key_file = get("MLGATE_AUDIT_KEY_FILE")
        return cls(
            variant=variant,
            # v2 is the debug variant unless told otherwise (the exam's contract)
            debug=flag("MLGATE_DEBUG", default=variant == "v2"),
            model_dir=model_dir,
            reference_model_dir=Path(reference) if reference else None,
            bind=bind,
            workers=integer("MLGATE_WORKERS", cls.workers, 1, 64),
            max_chars=integer("MLGATE_MAX_CHARS", cls.max_chars, 1, 1_000_000),
            max_body_bytes=integer("MLGATE_MAX_BODY_BYTES", cls.max_body_bytes, 1024, 16 << 20),
            max_requests=integer("MLGATE_MAX_REQUESTS", cls.max_requests, 0, 1 << 40),
            audit_dir=audit_dir,
            audit_max_bytes=integer("MLGATE_AUDIT_MAX_BYTES", cls.audit_max_bytes, 1024, 1 << 40),
            audit_backups=integer("MLGATE_AUDIT_BACKUPS", cls.audit_backups, 0, 1000),
            log_text=flag("MLGATE_LOG_TEXT"),
            audit_key=read_audit_key(key_file) if key_file else None,
            replica=replica,
            access_log=flag("MLGATE_ACCESS_LOG"),
            multiproc_dir=Path(multiproc) if multiproc else None,
        )

    def default_multiproc_dir(self) -> Path:
        """Per-user, per-port metrics directory used when PROMETHEUS_MULTIPROC_DIR is unset."""
        uid = os.getuid() if hasattr(os, "getuid") else 0
        return Path(tempfile.gettempdir()) / f"mlgate-metrics-{uid}-{self.port}"


def read_audit_key(path: str) -> bytes:
    """The audit hash key from a file (surrounding whitespace ignored); SettingsError if the
    file cannot be read or holds fewer than AUDIT_KEY_MIN_BYTES bytes. The message names the
    variable and the file, never the content."""
    try:
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        raise SettingsError(
            f"MLGATE_AUDIT_KEY_FILE={path!r} cannot be read: {exc.strerror}"
        ) from None
    if len(key) < AUDIT_KEY_MIN_BYTES:
        raise SettingsError(
            f"MLGATE_AUDIT_KEY_FILE={path!r} holds {len(key)} bytes; "
            f"the key needs at least {AUDIT_KEY_MIN_BYTES}"
        )
    return key
