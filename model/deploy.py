"""A deployment's model step, in one process (MLflow is imported once: seconds saved per run).

Usage: ``python -m model.deploy --cache DIR [--no-train] [--out DIR] [--data PATH]
[--revision TEXT] [--registry-store DIR] REF [REF ...]``

1. Unless ``--no-train``: ``model.train --if-stale --alias-new stable`` into ``--out`` (train
   when the data, code or parameters changed; register the artifact; a version new to the
   registry becomes ``@stable``).
2. Check out every ``REF`` (``@alias``, a version number, ``latest``) into ``--cache``
   (``model.registry checkout``: resolved, sha256 and card verified, a verified copy reused).

A no-change run does not import MLflow (seconds): with the embedded store, the answers of the
last run are kept in ``CACHE/.deploy-stamp.json`` with the store's file signature (path, mtime,
size of ``mlflow.db`` and its journal) and reused only while nothing has written the store since
and the copies they name still hold the registered bytes (sha256); any write (a training, an
alias moved, another stack's registration) sends the next run the slow way. A server
(``MLFLOW_TRACKING_URI``) is always asked.

Prints training's lines, then one JSON line: ``{REF: {number, path, fetched, ...}}``. Exit code
2 (a reference the registry lacks, a registry that does not answer, a checksum that does not
match; one sentence on stderr) or training's own exit code; nothing is checked out then.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from model import train
from model.predictor import CARD_FILENAME
from model.registry import Registry, RegistryError

STAMP = ".deploy-stamp.json"


def _signature(registry: Registry) -> list | None:
    """What changes whenever the embedded store is written (None for a server: never cached)."""
    if registry.store is None:
        return None
    sig = []
    for name in ("mlflow.db", "mlflow.db-wal", "mlflow.db-journal"):
        with contextlib.suppress(FileNotFoundError):
            st = (registry.store / name).stat()
            sig.append([name, st.st_mtime_ns, st.st_size])
    return [str(registry.store), *sig]


def _read_stamp(cache: Path, signature: list | None) -> dict:
    """The last run's answers, if the store has not been written since (else {})."""
    if signature is None:
        return {}
    try:
        stamp = json.loads((cache / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) and stamp.get("signature") == signature else {}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.deploy", description=__doc__.split("\n")[0])
    p.add_argument("--cache", type=Path, required=True, help="where verified copies are kept")
    p.add_argument("--no-train", action="store_true", help="train nothing; check out only")
    p.add_argument("--out", type=Path, default=train.DEFAULT_OUT_DIR, help="training's output")
    p.add_argument("--data", default=None, help="dataset CSV (training's search order if unset)")
    p.add_argument("--revision", default=None, help="training's --revision")
    p.add_argument("--registry-store", type=Path, default=None, help="embedded registry directory")
    p.add_argument("refs", nargs="+", metavar="REF", help="model versions to deploy")
    args = p.parse_args(argv)
    registry = Registry(store=args.registry_store)
    before = _signature(registry)
    stamp = _read_stamp(args.cache, before)
    trained = None
    if not args.no_train:
        train_argv = ["--if-stale", "--out", str(args.out), "--alias-new", "stable"]
        if args.registry_store is not None:
            train_argv += ["--registry-store", str(args.registry_store)]
        if args.data:
            train_argv += ["--data", args.data]
        if args.revision:
            train_argv += ["--revision", args.revision]
        code = train.main([*train_argv, "--no-register"])
        if code != 0:
            return code
        trained = json.loads((args.out / CARD_FILENAME).read_text(encoding="utf-8"))["version"]
        # registered by an earlier run into this very store, unwritten since: nothing to do
        if stamp.get("registered") != trained:
            stamp = {}
            try:
                train.register(args.out.resolve(), train.parse_args(train_argv))
            except RegistryError as exc:
                print(f"model.deploy: {exc}", file=sys.stderr)
                return 3
    refs = list(dict.fromkeys(args.refs))
    known = stamp.get("refs", {})
    if all(ref in known and registry.copy_still_there(known[ref]) for ref in refs):
        out = {ref: {**known[ref], "fetched": False} for ref in refs}
    else:
        try:
            out = registry.checkout_all(refs, args.cache)
        except RegistryError as exc:
            print(f"model.deploy: {exc}", file=sys.stderr)
            return 2
        # remembered only when nothing wrote the store meanwhile (not even this run)
        if before is not None and _signature(registry) == before:
            args.cache.mkdir(parents=True, exist_ok=True)
            (args.cache / STAMP).write_text(
                json.dumps({"signature": before, "registered": trained, "refs": out}),
                encoding="utf-8",
            )
    sys.stdout.flush()
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
