"""Launcher: ``python -m api``.

Validates the settings and the model, then becomes the gunicorn master in the same process
(``api/gunicorn_conf.py``, app ``api.main:app``): the libraries the validation imported stay
loaded, so a container serves about as soon as the model is loaded once more by the app
(an ``exec`` of a new Python, importing everything again, took ~3 s more per start).
On any problem it prints one line, ``mlgate-api: refusing to start: <reason>``, to stderr and
exits 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ROOT = PACKAGE_DIR.parent
GUNICORN_CONF = PACKAGE_DIR / "gunicorn_conf.py"
APP = "api.main:app"


def refuse(reason: str) -> int:
    reason = " ".join(str(reason).split())  # exactly one line
    print(f"mlgate-api: refusing to start: {reason}", file=sys.stderr, flush=True)
    return 2


def gunicorn_argv() -> list[str]:
    return ["gunicorn", "--config", str(GUNICORN_CONF), APP]


def main() -> int:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from api.settings import Settings, SettingsError

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        return refuse(f"invalid setting: {exc}")
    try:
        from model.predictor import ModelError, load_predictor
    except ImportError as exc:
        return refuse(f"cannot import the model runtime: {exc}")
    try:
        predictor = load_predictor(settings.model_dir)
    except ModelError as exc:
        return refuse(str(exc))
    if settings.reference_model_dir is not None:
        try:
            reference = load_predictor(settings.reference_model_dir)
        except ModelError as exc:
            return refuse(f"reference model (MLGATE_REFERENCE_MODEL_DIR): {exc}")
        if list(reference.classes) != list(predictor.classes):
            return refuse(
                f"the reference model in {settings.reference_model_dir} predicts other labels "
                f"than the model in {settings.model_dir}: they cannot be compared"
            )
        del reference
    multiproc = settings.multiproc_dir or settings.default_multiproc_dir()
    try:
        multiproc.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = multiproc / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return refuse(f"metrics directory {multiproc} is not writable: {exc.strerror or exc}")
    try:
        import gunicorn  # noqa: F401
        import uvicorn_worker  # noqa: F401
    except ImportError as exc:
        return refuse(f"cannot import the server: {exc}")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc)
    print(
        f"mlgate-api: starting variant {settings.variant}, model {predictor.version}, "
        f"{settings.workers} workers on {settings.bind}",
        file=sys.stderr,
        flush=True,
    )
    del predictor  # the app loads its own (api.main); this one would only take memory
    os.chdir(ROOT)
    from gunicorn.app.wsgiapp import WSGIApplication

    sys.argv = gunicorn_argv()
    WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]", prog="gunicorn").run()  # exits
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
