"""gunicorn configuration for the mlgate API (``gunicorn -c api/gunicorn_conf.py api.main:app``).

Values come from :mod:`api.settings` (the environment); this file only maps them.
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from api.settings import Settings  # noqa: E402

# One request at a time per worker: BLAS thread pools would only fight the other workers
# for the cores (measured: fewer req/s and a fatter tail). Set before numpy is imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

_settings = Settings.from_env()
_multiproc = _settings.multiproc_dir or _settings.default_multiproc_dir()
# Must be in the environment before prometheus_client is imported by the app.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_multiproc)
_multiproc.mkdir(parents=True, exist_ok=True, mode=0o700)
# Wipe metric files of a previous run. Done here, at config load in the master, because
# preload_app loads the app (and writes mlgate_model_info) before any server hook runs.
# The marker keeps a config reload (SIGHUP) of the same master from wiping live values.
if os.environ.get("MLGATE_METRICS_OWNER") != str(os.getpid()):
    for _f in _multiproc.glob("*.db"):
        _f.unlink(missing_ok=True)
    os.environ["MLGATE_METRICS_OWNER"] = str(os.getpid())

chdir = _ROOT
bind = [_settings.bind]
workers = _settings.workers
worker_class = "uvicorn_worker.UvicornWorker"
# Longer than nginx's upstream keepalive_timeout (60 s) so the proxy always closes first
# and never reuses a connection the worker is closing.
keepalive = 75
timeout = 30
graceful_timeout = 20
# Recycle workers now and then (guards against slow leaks). Not every 10k requests: at
# ~2.5k req/s per worker that is every 4 s, and each recycle closes keep-alive connections,
# which a proxy cannot retry for a POST.
max_requests = _settings.max_requests
max_requests_jitter = _settings.max_requests // 10
# Load the model once in the master; workers share its pages copy-on-write and a
# recycled worker (max_requests) starts instantly. Measured with 2 workers: 173 MB total
# PSS with preload vs 259 MB without (each worker ~47 MB instead of ~121 MB).
preload_app = True
worker_tmp_dir = (
    "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
)
# No $HOME/.gunicorn/gunicorn.ctl control socket: HOME may be unset or read-only.
control_socket_disable = True
proc_name = f"mlgate-api-{_settings.variant}"
accesslog = "-" if _settings.access_log else None
errorlog = "-"
loglevel = "info"
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "api.jsonlog.JsonFormatter"}},
    "handlers": {
        "stdout": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stdout",
        }
    },
    "loggers": {
        "gunicorn.error": {"handlers": ["stdout"], "level": "INFO", "propagate": False},
        # uvicorn_worker copies this logger's handlers and level to "uvicorn.access".
        "gunicorn.access": {
            "handlers": ["stdout"],
            "level": "INFO" if _settings.access_log else "CRITICAL",
            "propagate": False,
        },
    },
    "root": {"handlers": ["stdout"], "level": "WARNING"},
}


def child_exit(server: object, worker: object) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]


def pre_fork(server: object, worker: object) -> None:
    """Move the preloaded app's objects (model, vocabulary, libraries) out of the garbage
    collector's reach: collections stay cheap and the shared pages stay shared."""
    gc.collect()
    gc.freeze()
