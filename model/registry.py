"""The model registry: MLflow, embedded by default, a server when ``MLFLOW_TRACKING_URI`` says.

Usage: ``python -m model.registry [--store DIR] {list,resolve,fetch,alias} ...``

Embedded (the default): a SQLite tracking store and a local artifact root in one directory on
the controller (``.mlgate/mlflow``: ``mlflow.db`` and ``artifacts/``; never committed). With
``MLFLOW_TRACKING_URI`` set (``http://mlflow.example:5000``, ``postgresql://...``), the same
calls go to that server instead: one code path.

A registered version of the model ``mlgate-emotions`` is one trained artifact
(``model.joblib`` + ``model_card.json``, logged under ``model/`` in its training run), tagged
``mlgate.version`` (the card's version: a hash of every training input) and ``mlgate.sha256``
(of ``model.joblib``). A new version is registered only when no version has that
``mlgate.version``. Aliases name what is deployed: ``stable`` (the default route) and
``candidate`` (a model under test).

References (``REF``): ``@alias``, a version number, or ``latest``.

A deployment takes its versions with ``checkout --cache DIR REF...`` (``model.deploy``, after
training): each artifact lands, verified (sha256 and card against the registry's record), in
``DIR/<version>-<sha256[:12]>/`` with a ``registry.json`` beside it
(``model.predictor.REGISTRY_FILENAME``: the API reports that version as its ``model_version``
and ``X-Model-Version``); a verified copy already there is reused.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from model.predictor import CARD_FILENAME, MODEL_FILENAME, REGISTRY_FILENAME, sha256_file

REPO_DIR = Path(__file__).resolve().parents[1]
DEFAULT_STORE = REPO_DIR / ".mlgate" / "mlflow"
MODEL_NAME = "mlgate-emotions"
EXPERIMENT = "mlgate-emotions"
STABLE, CANDIDATE = "stable", "candidate"
ARTIFACT_PATH = "model"
TAG_VERSION, TAG_SHA256 = "mlgate.version", "mlgate.sha256"
_ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")


class RegistryError(Exception):
    """The registry cannot do what was asked; the message says what and why, in one sentence."""


@dataclass(frozen=True)
class Version:
    """One registered version of the model."""

    number: int
    mlgate_version: str
    sha256: str
    aliases: tuple[str, ...]
    run_id: str
    metrics: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["aliases"] = list(self.aliases)
        return d

    def record(self, model_name: str) -> dict[str, Any]:
        """What a deployed copy carries in ``registry.json`` (no aliases: they move without a
        new artifact, and a deployment's image must not change when they do)."""
        return {
            "model": model_name,
            "version": self.number,
            "mlgate_version": self.mlgate_version,
            "sha256": self.sha256,
        }


def git_revision(repo: Path = REPO_DIR) -> str:
    """The checkout's commit (with ``+dirty`` when it has changes), or ``unknown``."""
    try:
        rev = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> dict[str, str]:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def _metric_key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_./ -]", "_", name)


class Registry:
    """The model registry at ``tracking_uri`` (default: ``$MLFLOW_TRACKING_URI``, else the
    embedded store in ``store``)."""

    def __init__(
        self,
        store: Path | None = None,
        tracking_uri: str | None = None,
        model_name: str = MODEL_NAME,
    ) -> None:
        self.model_name = model_name
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
        self.store: Path | None = None
        if not uri:
            self.store = (store or DEFAULT_STORE).resolve()
            uri = f"sqlite:///{self.store / 'mlflow.db'}"
        self.tracking_uri = uri
        self._client_obj = None

    # --- plumbing -------------------------------------------------------------------------

    @property
    def _client(self):
        if self._client_obj is None:
            # A server that does not answer should fail a deployment's preflight in seconds,
            # not after MLflow's default 7 retries with backoff (the user's settings win).
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            # MLflow 3 reports usage to its makers unless told not to: a deployment tool does
            # not phone home on its users' behalf (MLFLOW_DISABLE_TELEMETRY=false opts in).
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
            if self.store is not None:
                self.store.mkdir(parents=True, exist_ok=True, mode=0o700)
            from mlflow.tracking import MlflowClient

            self._client_obj = MlflowClient(
                tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
            )
        return self._client_obj

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Serialise writers of the embedded store (parallel deployments share one SQLite
        file); a server serialises its own writers."""
        if self.store is None:
            yield
            return
        self.store.mkdir(parents=True, exist_ok=True, mode=0o700)
        with (self.store / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        from mlflow.exceptions import MlflowException

        try:
            yield
        except MlflowException as exc:
            msg = str(exc.message if hasattr(exc, "message") else exc).splitlines()[0]
            raise RegistryError(f"{doing}: the registry at {self.where} said: {msg}") from exc
        except OSError as exc:
            raise RegistryError(f"{doing}: the registry at {self.where} failed: {exc}") from exc

    @property
    def where(self) -> str:
        return str(self.store) if self.store is not None else self.tracking_uri

    def _metrics(self, run_id: str) -> dict[str, float]:
        if not run_id:
            return {}
        with contextlib.suppress(Exception):
            return dict(self._client.get_run(run_id).data.metrics)
        return {}

    def _version(self, mv, aliases: dict[str, str], with_metrics: bool) -> Version:
        metrics = self._metrics(mv.run_id) if with_metrics else {}
        return Version(
            number=int(mv.version),
            mlgate_version=mv.tags.get(TAG_VERSION, ""),
            sha256=mv.tags.get(TAG_SHA256, ""),
            aliases=tuple(sorted(a for a, n in aliases.items() if str(n) == str(mv.version))),
            run_id=mv.run_id or "",
            metrics=metrics,
        )

    def _experiment_id(self) -> str:
        exp = self._client.get_experiment_by_name(EXPERIMENT)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.store is not None:
            location = (self.store / "artifacts").as_uri()
        return self._client.create_experiment(EXPERIMENT, artifact_location=location)

    def _registered(self):
        """The registered model (None before its first version)."""
        from mlflow.exceptions import MlflowException

        try:
            return self._client.get_registered_model(self.model_name)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    # --- reading --------------------------------------------------------------------------

    def versions(self, with_metrics: bool = False) -> list[Version]:
        """Every version, newest first (their runs' metrics too when asked: a query each)."""
        with self._errors("listing the model's versions"):
            model = self._registered()
            if model is None:
                return []
            aliases = dict(getattr(model, "aliases", None) or {})
            found = self._client.search_model_versions(f"name='{self.model_name}'")
            return sorted(
                (self._version(mv, aliases, with_metrics) for mv in found), key=lambda v: -v.number
            )

    def find(self, mlgate_version: str) -> Version | None:
        """The version registered for this artifact version, if any."""
        return next((v for v in self.versions() if v.mlgate_version == mlgate_version), None)

    def resolve(self, ref: str) -> Version:
        """``@alias``, a version number, or ``latest`` -> that version with its metrics;
        RegistryError names an unknown reference and what exists."""
        v = self._resolve(ref)
        with self._errors(f"reading model version {v.number}'s metrics"):
            return replace(v, metrics=self._metrics(v.run_id))

    def _resolve(self, ref: str) -> Version:
        ref = str(ref).strip()
        versions = self.versions()
        if not versions:
            raise RegistryError(
                f"model {self.model_name!r} has no version in the registry at {self.where}: "
                "train one first (make model)"
            )
        known = ", ".join(
            f"{v.number}" + (f" (@{', @'.join(v.aliases)})" if v.aliases else "") for v in versions
        )
        if ref == "latest":
            return versions[0]
        if ref.startswith("@"):
            alias = ref[1:]
            for v in versions:
                if alias in v.aliases:
                    return v
            raise RegistryError(
                f"model {self.model_name!r} has no alias {ref!r} in the registry at {self.where} "
                f"(versions: {known})"
            )
        if ref.isdigit():
            for v in versions:
                if v.number == int(ref):
                    return v
            raise RegistryError(
                f"model {self.model_name!r} has no version {ref} in the registry at {self.where} "
                f"(versions: {known})"
            )
        raise RegistryError(
            f"{ref!r} names no model version: use @alias (e.g. @stable), a number, or latest"
        )

    # --- writing --------------------------------------------------------------------------

    def register(
        self,
        model_dir: Path,
        *,
        alias: str | None = None,
        alias_if_new: str | None = None,
        stable_if_none: bool = True,
        code_revision: str | None = None,
    ) -> tuple[Version, bool]:
        """Register the artifact in model_dir unless a version with its ``mlgate.version``
        exists; then point ``alias`` at it, ``alias_if_new`` only if it is a new version (what
        a deployment's training does: an artifact registered before keeps the aliases the
        user gave), and ``stable`` when no version has it yet. Returns (version, whether it
        is new)."""
        card = json.loads((model_dir / CARD_FILENAME).read_text(encoding="utf-8"))
        model_file = model_dir / MODEL_FILENAME
        digest = sha256_file(model_file)
        with self._writing(), self._errors(f"registering model version {card['version']}"):
            existing = self.find(card["version"])
            created = existing is None
            if created:
                number = self._log_and_register(model_dir, card, digest, code_revision)
            else:
                number = existing.number
            aliases = [alias] if alias else []
            if alias_if_new and created:
                aliases.append(alias_if_new)
            if stable_if_none and not any(STABLE in v.aliases for v in self.versions()):
                aliases.append(STABLE)
            for name in dict.fromkeys(aliases):
                self._client.set_registered_model_alias(self.model_name, name, str(number))
            return self.resolve(str(number)), created

    def _log_and_register(
        self, model_dir: Path, card: dict, digest: str, code_revision: str | None
    ) -> int:
        from mlflow.entities import Metric, Param

        client = self._client
        metrics = card.get("metrics", {})
        values = {
            "accuracy": metrics.get("held_out_accuracy"),
            "macro_f1": metrics.get("held_out_macro_f1"),
        }
        for label, f1 in (metrics.get("per_class_f1") or {}).items():
            values[_metric_key(f"f1.{label}")] = f1
        tags = {
            TAG_VERSION: card["version"],
            TAG_SHA256: digest,
            "mlgate.dataset_sha256": card.get("data", {}).get("sha256", ""),
            "mlgate.dataset_file": card.get("data", {}).get("file", ""),
            "mlgate.code_sha256": card.get("code_sha256", ""),
            "mlgate.code_revision": code_revision or git_revision(),
            "mlgate.revision": card.get("revision", ""),
            "mlgate.sklearn_version": card.get("sklearn_version", ""),
            "mlflow.runName": f"train-{card['version']}",
        }
        run = client.create_run(self._experiment_id(), tags=tags)
        run_id = run.info.run_id
        params = _flatten("", card.get("params", {}), {})
        params["rows.train"] = str(card.get("rows", {}).get("train", ""))
        params["rows.held_out"] = str(card.get("rows", {}).get("held_out", ""))
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), 0, 0) for k, v in values.items() if v is not None],
            params=[Param(k, v) for k, v in params.items()],
        )
        for name in (MODEL_FILENAME, CARD_FILENAME):
            client.log_artifact(run_id, str(model_dir / name), ARTIFACT_PATH)
        client.set_terminated(run_id)
        if self._registered() is None:
            client.create_registered_model(
                self.model_name, description="mlgate: TF-IDF + logistic regression, 13 emotions"
            )
        mv = client.create_model_version(
            self.model_name,
            source=f"runs:/{run_id}/{ARTIFACT_PATH}",
            run_id=run_id,
            tags={TAG_VERSION: card["version"], TAG_SHA256: digest},
        )
        return int(mv.version)

    def set_alias(self, alias: str, ref: str) -> Version:
        """Point ``alias`` at the version ``ref`` names (``make promote``)."""
        if not _ALIAS_RE.match(alias) or alias.isdigit() or alias == "latest":
            raise RegistryError(
                f"{alias!r} is not a usable alias: a letter, then letters, digits, _ or -"
            )
        with self._writing():
            version = self._resolve(ref)
            with self._errors(f"setting @{alias} to version {version.number}"):
                self._client.set_registered_model_alias(self.model_name, alias, str(version.number))
            return self._resolve(str(version.number))

    def fetch(self, ref: str, dest: Path) -> Version:
        """The artifact of ``ref`` into ``dest`` with its ``registry.json`` (replaced whole,
        only once its checksum and card match the registered version)."""
        return self._fetch(self._resolve(ref), dest)

    def checkout(self, ref: str, cache: Path) -> tuple[Version, Path, bool]:
        """The verified artifact of ``ref`` in ``cache/<version>-<sha256[:12]>``: reused when a
        verified copy is there, else fetched. Returns (version, directory, whether fetched)."""
        version = self._resolve(ref)
        if not re.fullmatch(r"[0-9a-f]{64}", version.sha256):
            raise RegistryError(
                f"model version {version.number} has no sha256 recorded in the registry at "
                f"{self.where} ({TAG_SHA256}): refusing to deploy an artifact it cannot verify"
            )
        cache = cache.resolve()
        dest = cache / f"{version.number}-{version.sha256[:12]}"
        cache.mkdir(parents=True, exist_ok=True)
        with (cache / ".lock").open("w") as lock:  # deployments sharing a cache take turns
            fcntl.flock(lock, fcntl.LOCK_EX)
            if _verified_copy(dest, version, self.model_name):
                return version, dest, False
            return self._fetch(version, dest), dest, True

    def checkout_all(self, refs: Sequence[str], cache: Path) -> dict[str, dict[str, Any]]:
        """:meth:`checkout` of each reference: {ref: version as a dict, path, fetched}."""
        out = {}
        for ref in dict.fromkeys(refs):
            v, path, fetched = self.checkout(ref, cache)
            out[ref] = {**v.as_dict(), "path": str(path), "fetched": fetched}
        return out

    def copy_still_there(self, record: dict[str, Any]) -> bool:
        """Whether the copy a :meth:`checkout_all` record names still holds that version."""
        try:
            fields = {k: record[k] for k in ("number", "mlgate_version", "sha256", "run_id")}
            path = Path(record["path"])
        except (KeyError, TypeError):  # not a record this code wrote
            return False
        version = Version(**fields, aliases=(), metrics={})
        return _verified_copy(path, version, self.model_name)

    def _fetch(self, version: Version, dest: Path) -> Version:
        dest = dest.resolve()
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp:
            with self._errors(f"downloading model version {version.number}"):
                got = Path(self._client.download_artifacts(version.run_id, ARTIFACT_PATH, tmp))
            model_file, card_file = got / MODEL_FILENAME, got / CARD_FILENAME
            if not model_file.is_file() or not card_file.is_file():
                raise RegistryError(
                    f"model version {version.number} has no {MODEL_FILENAME} and "
                    f"{CARD_FILENAME} under {ARTIFACT_PATH}/ in the registry at {self.where}"
                )
            digest = sha256_file(model_file)
            if digest != version.sha256:
                raise RegistryError(
                    f"model version {version.number}: {MODEL_FILENAME} has sha256 {digest}, "
                    f"the registry recorded {version.sha256 or 'none'}: refusing it"
                )
            card = json.loads(card_file.read_text(encoding="utf-8"))
            if card.get("version") != version.mlgate_version:
                raise RegistryError(
                    f"model version {version.number}: its card says version "
                    f"{card.get('version')!r}, the registry recorded {version.mlgate_version!r}"
                )
            staged = Path(tmp) / "staged"
            staged.mkdir()
            for f in (model_file, card_file):
                shutil.copy2(f, staged / f.name)
                os.chmod(staged / f.name, 0o644)
            record = staged / REGISTRY_FILENAME
            record.write_text(
                json.dumps(version.record(self.model_name), indent=2, sort_keys=True) + "\n",
                encoding="utf-8",
            )
            os.chmod(record, 0o644)
            old = Path(tmp) / "old"
            if dest.exists():
                os.replace(dest, old)
            os.replace(staged, dest)
            os.chmod(dest, 0o755)
        return version


def _verified_copy(dest: Path, version: Version, model_name: str) -> bool:
    """Whether dest holds exactly this version's artifact (record, card and checksum)."""
    try:
        record = json.loads((dest / REGISTRY_FILENAME).read_text(encoding="utf-8"))
        card = json.loads((dest / CARD_FILENAME).read_text(encoding="utf-8"))
        return (
            record == version.record(model_name)
            and isinstance(card, dict)
            and card.get("version") == version.mlgate_version
            and sha256_file(dest / MODEL_FILENAME) == version.sha256
        )
    except (OSError, ValueError):
        return False


def _print_table(versions: Sequence[Version]) -> None:
    print(f"{'version':>7}  {'aliases':<20} {'mlgate version':<14} {'accuracy':>8} {'macro-F1':>8}")
    for v in versions:
        aliases = " ".join(f"@{a}" for a in v.aliases) or "-"
        acc = v.metrics.get("accuracy")
        f1 = v.metrics.get("macro_f1")
        print(
            f"{v.number:>7}  {aliases:<20} {v.mlgate_version:<14} "
            f"{'' if acc is None else f'{acc:.4f}':>8} {'' if f1 is None else f'{f1:.4f}':>8}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.registry", description=__doc__.split("\n")[0])
    p.add_argument(
        "--store",
        type=Path,
        default=None,
        help=f"embedded store (default {DEFAULT_STORE}; ignored with MLFLOW_TRACKING_URI)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="every version, newest first")
    ls.add_argument("--json", action="store_true")
    res = sub.add_parser("resolve", help="the version a reference names, as JSON")
    res.add_argument("ref")
    fe = sub.add_parser("fetch", help="download and verify a version's artifact into a directory")
    fe.add_argument("ref")
    fe.add_argument("dest", type=Path)
    co = sub.add_parser(
        "checkout",
        help="the verified artifacts of versions in CACHE/<version>-<sha12>/ (reused when there); "
        "prints {REF: version} as JSON",
    )
    co.add_argument("--cache", type=Path, required=True)
    co.add_argument("refs", nargs="+", metavar="REF")
    al = sub.add_parser("alias", help="point an alias at a version (e.g. alias stable 3)")
    al.add_argument("alias")
    al.add_argument("ref")
    args = p.parse_args(argv)
    registry = Registry(store=args.store)
    try:
        if args.command == "list":
            versions = registry.versions(with_metrics=True)
            if args.json:
                print(json.dumps([v.as_dict() for v in versions], indent=2))
            else:
                _print_table(versions)
        elif args.command == "resolve":
            print(json.dumps(registry.resolve(args.ref).as_dict(), sort_keys=True))
        elif args.command == "fetch":
            v = registry.fetch(args.ref, args.dest)
            print(json.dumps({**v.as_dict(), "path": str(args.dest.resolve())}, sort_keys=True))
        elif args.command == "checkout":
            print(json.dumps(registry.checkout_all(args.refs, args.cache), sort_keys=True))
        elif args.command == "alias":
            v = registry.set_alias(args.alias, args.ref)
            print(f"@{args.alias} -> version {v.number} ({v.mlgate_version})")
    except RegistryError as exc:
        print(f"model.registry: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
