#!/usr/bin/python
"""Build a stack image once per content hash, or prune its old tags: one task, one round trip.

The image role ran six tasks per image (two asserts, the base image lookup, a shell hash, the
build, a fact) and two per prune (a host inventory, a removal loop): on a no-change run of the
site that is about 60 tasks, each a round trip to the host (about 1 s each over SSH on a busy
machine). This module does the same work on the target in one invocation, with the docker CLI.

The tag is the same as the shell pipeline's the role used before, so a deployment's images keep
their tags across this change:
    { find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum; echo "FROM <base id>"; }
    | sha256sum | cut -c1-<tag_length>
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: mlgate_image
short_description: Build an image tagged by the hash of its context and base, or prune old tags
description:
  - C(state=present) hashes every file of O(context) and the ID of O(base), and builds
    O(name):<hash> with the docker CLI unless that tag is on the host already. Returns RV(ref).
  - C(state=pruned) removes the tags of O(name) beyond the newest O(keep) (by creation time), except
    O(current) and every image a container of the host uses (running or not).
options:
  name: {type: str, description: Repository name of the image (or O(images)).}
  images:
    type: list
    elements: dict
    description: Several images at once (state=present), each {name, context, labels (default
      O(labels)), base (default O(base))}; the missing ones are built side by side, at most
      O(parallel) at a time.
  parallel: {type: int, default: 4, description: Builds at once with O(images).}
  state: {type: str, default: present, choices: [present, pruned], description: Build or prune.}
  context: {type: path, description: Build context directory with its Dockerfile (state=present).}
  base: {type: str, default: "", description: The image the Dockerfile builds FROM; "" = none.}
  labels: {type: dict, default: {}, description: Labels put on a new image.}
  tag_length: {type: int, default: 12, description: Hex digits of the hash used as tag.}
  keep: {type: int, default: 3, description: Tags kept by state=pruned, the newest first.}
  current: {type: str, default: "", description: A tag (name:tag) state=pruned never removes.}
"""

RETURN = r"""
ref: {description: name:tag of the image (state=present, O(name))., type: str}
refs: {description: name -> name:tag of every image (state=present)., type: dict}
images: {description: Per image - name, ref, tag, built, present (state=present)., type: list}
tag: {description: The content hash tag (state=present)., type: str}
built: {description: Whether the image was built by this task (state=present)., type: bool}
present: {description: Whether the host has RV(ref) after the task (state=present)., type: bool}
removed: {description: The tags removed (state=pruned)., type: list}
retry: {description: On failure, false when a retry cannot help (a build may)., type: bool}
"""


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sum_line(digest: str, name: bytes) -> bytes:
    """One line of GNU sha256sum's output: a name with a backslash or a newline is escaped and
    the line starts with a backslash."""
    if b"\\" in name or b"\n" in name:
        escaped = name.replace(b"\\", b"\\\\").replace(b"\n", b"\\n")
        return b"\\" + digest.encode() + b"  " + escaped + b"\n"
    return digest.encode() + b"  " + name + b"\n"


def context_files(context: str) -> list[bytes]:
    """Every regular file under context (symbolic links are not followed nor counted, as
    `find -type f`), as find prints it ("./sub/file"), sorted byte-wise (LC_ALL=C sort)."""
    found = []
    root = os.fsencode(context)
    for top, _dirs, files in os.walk(root):
        rel = os.path.relpath(top, root)
        prefix = b"." if rel == b"." else b"./" + rel
        for name in files:
            full = os.path.join(top, name)
            if not os.path.islink(full) and os.path.isfile(full):
                found.append(prefix + b"/" + name)
    return sorted(found)


def context_hash(context: str, base_id: str, length: int) -> str:
    """The content tag: the hash of sha256sum's listing of every file, then "FROM <base id>"."""
    listing = hashlib.sha256()
    root = os.fsencode(context)
    for name in context_files(context):
        listing.update(_sum_line(_sha256_file(os.path.join(root, name[2:])), name))
    listing.update(f"FROM {base_id}\n".encode())
    return listing.hexdigest()[:length]


def _created_key(created: str) -> tuple[str, str]:
    """Docker's RFC 3339 creation time, comparable: the fraction has no fixed width."""
    match = re.match(r"^([0-9-]+T[0-9:]+)(?:\.([0-9]+))?(.*)$", created)
    if not match:
        return (created, "")
    return (match.group(1), (match.group(2) or "").ljust(9, "0"))


def tags_to_prune(
    images: list[dict], in_use: set[str], name: str, keep: int, current: str
) -> list[str]:
    """The tags of name to remove: beyond the newest keep images, not used by a container, not
    current. images: `docker image inspect` records (Id, Created, RepoTags)."""
    newest_first = sorted(images, key=lambda i: _created_key(i["Created"]), reverse=True)
    removed = []
    for image in newest_first[max(keep, 0) :]:
        if image["Id"] in in_use:
            continue
        removed += [
            tag
            for tag in image.get("RepoTags") or []
            if tag.startswith(name + ":") and tag != current
        ]
    return removed


class Docker:
    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.bin = module.get_bin_path("docker", required=True)

    def run(self, *argv: str, check: bool = True) -> tuple[int, str, str]:
        rc, out, err = self.module.run_command([self.bin, *argv])
        if check and rc != 0:
            self.module.fail_json(
                msg=f"docker {' '.join(argv[:2])} failed: {err.strip()[-2000:]}", retry=False
            )
        return rc, out, err

    def image_id(self, ref: str) -> str | None:
        rc, out, _ = self.run("image", "inspect", "--format", "{{.Id}}", ref, check=False)
        return out.strip() if rc == 0 else None

    def inspect(self, refs: list[str]) -> list[dict]:
        if not refs:
            return []
        return json.loads(self.run("image", "inspect", *refs)[1])


def _build(docker_bin: str, plan: dict) -> tuple[int, str]:
    """docker build of one plan (a thread each: subprocess, not run_command, which edits
    os.environ around each call)."""
    # --force-rm: the builder's step containers go even when a step fails (--rm keeps a failed
    # one; a step that cannot start at all would leave a "Created" container behind each time)
    argv = [docker_bin, "build", "--pull=false", "--force-rm", "--tag", plan["ref"]]
    for key, value in sorted(plan["labels"].items()):
        argv += ["--label", f"{key}={value}"]
    done = subprocess.run([*argv, plan["context"]], capture_output=True, text=True, check=False)
    return done.returncode, (done.stdout + done.stderr).strip()


def present(module: AnsibleModule, docker: Docker) -> dict:
    params = module.params
    single = not params["images"]
    specs = (
        [{k: params[k] for k in ("name", "context", "base", "labels")}]
        if single
        else [
            {"base": params["base"], "labels": params["labels"], **spec}
            for spec in params["images"]
        ]
    )
    base_ids: dict[str, str] = {}
    plans = []
    for spec in specs:
        name, context, base = spec.get("name"), spec.get("context"), spec.get("base") or ""
        if not name or not context:
            module.fail_json(
                msg="The image role needs image_name and image_context_dir "
                f"(got '{name}', '{context}').",
                retry=False,
            )
        if not os.path.isfile(os.path.join(context, "Dockerfile")):
            module.fail_json(
                msg=f"{name}: the build context {context} has no Dockerfile.", retry=False
            )
        if base and base not in base_ids:
            base_ids[base] = docker.image_id(base)
            if base_ids[base] is None:
                module.fail_json(
                    msg=f"{name} builds FROM {base}, which is not on this host "
                    "(the docker_host role provides it).",
                    retry=False,
                )
        tag = context_hash(context, base_ids[base] if base else "none", params["tag_length"])
        ref = f"{name}:{tag}"
        plans.append(
            {
                "name": name,
                "context": context,
                "labels": dict(spec.get("labels") or {}),
                "ref": ref,
                "tag": tag,
                "built": False,
                "present": docker.image_id(ref) is not None,
            }
        )
    missing = [plan for plan in plans if not plan["present"]]
    if missing and not module.check_mode:
        # Independent builds at once: most of each is waiting on Debian's mirror (apt inside).
        workers = max(1, min(len(missing), params["parallel"]))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            outcomes = list(pool.map(lambda plan: _build(docker.bin, plan), missing))
        failed = []
        for plan, (rc, out) in zip(missing, outcomes):  # noqa: B905 (a host's Python may be < 3.10)
            plan.update(built=rc == 0, present=rc == 0)
            if rc != 0:
                failed.append((plan, out))
        if failed:
            module.fail_json(
                msg="; ".join(
                    f"building {plan['ref']} failed: {out[-3000:]}" for plan, out in failed
                ),
                ref=failed[0][0]["ref"],
                images=plans,
            )
    elif missing:  # check mode: what would be
        for plan in missing:
            plan.update(built=True, present=True)
    result = {
        "images": plans,
        "refs": {plan["name"]: plan["ref"] for plan in plans},
        "changed": bool(missing),
    }
    if single:
        result.update({k: plans[0][k] for k in ("ref", "tag", "built", "present")})
    return result


def pruned(module: AnsibleModule, docker: Docker) -> dict:
    params = module.params
    name = params["name"]
    ids = docker.run("image", "ls", "--no-trunc", "--quiet", "--filter", f"reference={name}")[1]
    images = docker.inspect(sorted(set(ids.split())))
    containers = docker.run("container", "ls", "--all", "--quiet", "--no-trunc")[1].split()
    in_use = set()
    if containers:
        _rc, out, _ = docker.run(
            "container", "inspect", "--format", "{{.Image}}", *containers, check=False
        )
        # a container removed meanwhile makes inspect fail for it only: the others are printed
        in_use = set(out.split())
    removed = tags_to_prune(images, in_use, name, params["keep"], params["current"])
    if removed and not module.check_mode:
        docker.run("image", "rm", *removed)
    return {"removed": removed, "changed": bool(removed)}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str"},
            "images": {"type": "list", "elements": "dict", "default": []},
            "parallel": {"type": "int", "default": 4},
            "state": {"type": "str", "default": "present", "choices": ["present", "pruned"]},
            "context": {"type": "path"},
            "base": {"type": "str", "default": ""},
            "labels": {"type": "dict", "default": {}},
            "tag_length": {"type": "int", "default": 12},
            "keep": {"type": "int", "default": 3},
            "current": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
        required_one_of=[("name", "images")],
        mutually_exclusive=[("name", "images")],
    )
    docker = Docker(module)
    handler = present if module.params["state"] == "present" else pruned
    module.exit_json(**handler(module, docker))


if __name__ == "__main__":
    main()
