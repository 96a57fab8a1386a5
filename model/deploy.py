"""A deployment's model step, in one process (MLflow is imported once: seconds saved per run).

Usage: ``python -m model.deploy --cache DIR [--no-train] [--out DIR] [--data PATH]
[--revision TEXT] [--registry-store DIR] REF [REF ...]``

1. Unless ``--no-train``: ``model.train --if-stale --alias-new stable`` into ``--out`` (train
   when the data, code or parameters changed; register the artifact; a version new to the
   registry becomes ``@stable``).
2. Check out every ``REF`` (``@alias``, a version number, ``latest``) into ``--cache``
   (``model.registry checkout``: resolved, sha256 and card verified, a verified copy reused).

Prints training's lines, then one JSON line: ``{REF: {number, path, fetched, ...}}``. Exit code
2 (a reference the registry lacks, a registry that does not answer, a checksum that does not
match; one sentence on stderr) or training's own exit code; nothing is checked out then.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from model import train
from model.registry import Registry, RegistryError


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
    if not args.no_train:
        train_argv = ["--if-stale", "--out", str(args.out), "--alias-new", "stable"]
        if args.registry_store is not None:
            train_argv += ["--registry-store", str(args.registry_store)]
        if args.data:
            train_argv += ["--data", args.data]
        if args.revision:
            train_argv += ["--revision", args.revision]
        code = train.main(train_argv)
        if code != 0:
            return code
    registry = Registry(store=args.registry_store)
    out = {}
    try:
        for ref in dict.fromkeys(args.refs):
            v, path, fetched = registry.checkout(ref, args.cache)
            out[ref] = {**v.as_dict(), "path": str(path), "fetched": fetched}
    except RegistryError as exc:
        print(f"model.deploy: {exc}", file=sys.stderr)
        return 2
    sys.stdout.flush()
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
