"""Prediction audit log: one JSON line per prediction, size-rotated, multi-process safe.

Design (several gunicorn workers share one directory and one file ``predictions.jsonl``):

* each process keeps one ``O_APPEND`` file descriptor and writes every record with a single
  ``os.write`` (appends of a line are atomic with respect to other appenders on a local
  file system, so lines never interleave);
* after a write, ``fstat`` tells the size of the file *this fd* points to; when it reaches
  ``max_bytes`` the process takes an exclusive ``flock`` on ``predictions.jsonl.lock``,
  re-checks that the path still has the inode of its fd (another worker may have rotated
  already: then it just reopens), otherwise shifts ``.1 .. .N`` and renames the file to
  ``.1``, then reopens. A worker still holding the renamed file sees its size over the
  limit on its next write and reopens the new file, so no line is lost, at most a few
  land in ``.1``;
* the sentence is never stored in clear unless ``log_text`` is on. With a key (a per-stack
  secret, ``MLGATE_AUDIT_KEY_FILE``), each record carries ``sentence_hmac_sha256``, an
  HMAC-SHA256 of the sentence under that key, and ``audit_key_id``, a fingerprint of the key:
  records of one stack can be matched by sentence, and a dictionary of short texts does not
  reverse them without the key (an unsalted SHA-256 would be). Without a key, no hash at all;
* any OSError (directory missing or not writable, disk full, ...) is swallowed: it is
  counted, logged once (JSON on stdout under gunicorn), and opening is retried at most every 30 s.
  Logging never fails a prediction.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

FILENAME = "predictions.jsonl"
RETRY_SECONDS = 30


class AuditLog:
    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_bytes: int = 10 * 1024 * 1024,
        backups: int = 5,
        log_text: bool = False,
        key: bytes | None = None,
    ) -> None:
        self.directory = Path(directory)
        self._key = key
        self.key_id = key_id(key) if key else None
        self.path = self.directory / FILENAME
        self.lock_path = self.directory / (FILENAME + ".lock")
        self.max_bytes = max_bytes
        self.backups = backups
        self.log_text = log_text
        self.errors = 0
        self._fd: int | None = None
        self._pid = -1
        self._retry_at = 0.0
        self._warned = False

    # -- public -------------------------------------------------------------------
    def record(
        self,
        *,
        request_id: str,
        variant: str,
        replica: str,
        label: str,
        latency_ms: float,
        sentence: str,
        model_version: str,
        reference_version: str | None = None,
        reference_label: str | None = None,
    ) -> bool:
        """Append one record; return False (never raise) when it could not be written."""
        try:
            entry: dict[str, Any] = {
                "ts": _utc_now(),
                "request_id": request_id,
                "variant": variant,
                "replica": replica,
                "model_version": model_version,
                "label": label,
                "latency_ms": round(latency_ms, 3),
                "sentence_chars": len(sentence),
            }
            if reference_label is not None:
                entry["reference_version"] = reference_version
                entry["reference_label"] = reference_label
            if self._key:
                entry["sentence_hmac_sha256"] = hmac.new(
                    self._key, sentence.encode("utf-8", "surrogatepass"), hashlib.sha256
                ).hexdigest()
                entry["audit_key_id"] = self.key_id
            if self.log_text:
                entry["sentence"] = sentence
            line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8", "replace")
            return self.write_line(line)
        except Exception as exc:  # noqa: BLE001 - logging must never fail a prediction
            self._failed(exc)
            return False

    def write_line(self, line: bytes) -> bool:
        try:
            fd = self._ensure_open()
            if fd is None:
                return False
            os.write(fd, line)
            if os.fstat(fd).st_size >= self.max_bytes:
                self._rotate()
            return True
        except OSError as exc:
            self._failed(exc)
            self._close()
            return False

    def close(self) -> None:
        self._close()

    # -- internals ------------------------------------------------------------------
    def _ensure_open(self) -> int | None:
        if self._fd is not None and self._pid == os.getpid():
            return self._fd
        if self._pid != os.getpid():
            self._fd = None  # inherited across fork: reopen our own
        now = time.monotonic()
        if now < self._retry_at:
            return None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
            self._pid = os.getpid()
        except OSError as exc:
            self._retry_at = now + RETRY_SECONDS
            self._failed(exc)
            return None
        return self._fd

    def _close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd = None

    def _rotate(self) -> None:
        assert self._fd is not None
        lock_fd = os.open(self.lock_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            mine = os.fstat(self._fd)
            try:
                current = os.stat(self.path)
                same = (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev)
            except FileNotFoundError:
                same = False
            if same and current.st_size >= self.max_bytes:
                if self.backups > 0:
                    for i in range(self.backups - 1, 0, -1):
                        src = self.path.with_name(f"{FILENAME}.{i}")
                        if src.exists():
                            os.replace(src, self.path.with_name(f"{FILENAME}.{i + 1}"))
                    os.replace(self.path, self.path.with_name(f"{FILENAME}.1"))
                else:
                    os.unlink(self.path)
            self._close()
            self._ensure_open()
        finally:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            os.close(lock_fd)

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if not self._warned:
            self._warned = True
            logging.getLogger("mlgate.audit").warning(
                "audit log disabled for now (retried every %ds): %s", RETRY_SECONDS, exc
            )


def key_id(key: bytes) -> str:
    """A fingerprint naming a key (the first 12 hex digits of its SHA-256), not revealing it."""
    return hashlib.sha256(key).hexdigest()[:12]


def _utc_now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"
