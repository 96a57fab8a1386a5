from __future__ import annotations

from pathlib import Path

import pytest

from api.settings import ROOT, Settings, SettingsError


def test_defaults() -> None:
    s = Settings.from_env({})
    assert s.variant == "v1"
    assert s.bind == "127.0.0.1:8000" and s.port == 8000
    assert s.workers == 2 and s.max_chars == 5000 and s.max_body_bytes == 65536
    assert s.model_dir == ROOT / "model" / "artifacts"
    assert s.audit_dir == ROOT / "logs"
    assert s.log_text is False and s.access_log is False
    assert s.replica  # hostname
    assert s.multiproc_dir is None
    assert str(s.default_multiproc_dir()).endswith("-8000")


def test_values_from_env() -> None:
    s = Settings.from_env({
        "MLGATE_VARIANT": "V2", "MLGATE_BIND": "0.0.0.0:9000", "MLGATE_WORKERS": "4",
        "MLGATE_MAX_CHARS": "100", "MLGATE_AUDIT_DIR": "/var/log/mlgate", "MLGATE_LOG_TEXT": "1",
        "MLGATE_REPLICA": "api-v2-1", "MLGATE_ACCESS_LOG": "true", "MLGATE_MODEL_DIR": "/m",
        "PROMETHEUS_MULTIPROC_DIR": "/tmp/p", "MLGATE_AUDIT_BACKUPS": "0",
    })  # fmt: skip
    assert (s.variant, s.bind, s.port, s.workers, s.max_chars) == (
        "v2",
        "0.0.0.0:9000",
        9000,
        4,
        100,
    )
    assert s.audit_dir == Path("/var/log/mlgate") and s.model_dir == Path("/m")
    assert s.log_text and s.access_log and s.replica == "api-v2-1"
    assert s.multiproc_dir == Path("/tmp/p") and s.audit_backups == 0


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("MLGATE_VARIANT", "v_3", "lowercase letters and digits"),
        ("MLGATE_VARIANT", "canary-", "joined by single hyphens"),
        ("MLGATE_DEBUG", "sometimes", "0 or 1"),
        ("MLGATE_WORKERS", "two", "not an integer"),
        ("MLGATE_WORKERS", "0", "out of range"),
        ("MLGATE_MAX_CHARS", "-5", "out of range"),
        ("MLGATE_BIND", "8000", "HOST:PORT"),
        ("MLGATE_BIND", "127.0.0.1:99999", "HOST:PORT"),
        ("MLGATE_LOG_TEXT", "maybe", "0 or 1"),
        ("MLGATE_AUDIT_MAX_BYTES", "10", "out of range"),
    ],
)
def test_invalid_values_name_the_variable(name: str, value: str, words: str) -> None:
    with pytest.raises(SettingsError) as err:
        Settings.from_env({name: value})
    assert name in str(err.value) and words in str(err.value)


def test_audit_key_is_read_from_its_file_and_never_shown(tmp_path: Path) -> None:
    key_file = tmp_path / "audit.key"
    key_file.write_text("ab" * 32 + "\n")
    s = Settings.from_env({"MLGATE_AUDIT_KEY_FILE": str(key_file)})
    assert s.audit_key == b"ab" * 32
    assert "abab" not in repr(s)
    assert Settings.from_env({}).audit_key is None


@pytest.mark.parametrize(
    ("content", "words"),
    [(None, "cannot be read"), ("short-key\n", "holds 9 bytes"), ("   \n", "holds 0 bytes")],
)
def test_a_missing_or_short_audit_key_is_refused_without_showing_it(
    tmp_path: Path, content: str | None, words: str
) -> None:
    key_file = tmp_path / "audit.key"
    if content is not None:
        key_file.write_text(content)
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"MLGATE_AUDIT_KEY_FILE": str(key_file)})
    assert "MLGATE_AUDIT_KEY_FILE" in str(err.value) and words in str(err.value)
    assert "short-key" not in str(err.value)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ("v1", False)),
        ({"MLGATE_VARIANT": "v2"}, ("v2", True)),  # the exam's debug variant
        ({"MLGATE_VARIANT": "v2", "MLGATE_DEBUG": "0"}, ("v2", False)),
        ({"MLGATE_VARIANT": "canary"}, ("canary", False)),
        ({"MLGATE_VARIANT": "shadow-b2", "MLGATE_DEBUG": "1"}, ("shadow-b2", True)),
    ],
)
def test_any_variant_name_and_debug_defaulting_to_v2(env: dict, expected: tuple) -> None:
    s = Settings.from_env(env)
    assert (s.variant, s.debug) == expected
