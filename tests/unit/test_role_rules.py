"""Rules the roles' task files keep, checked on the files themselves."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _tasks(node):
    if isinstance(node, list):
        for item in node:
            yield from _tasks(item)
    elif isinstance(node, dict):
        yield node
        for key in ("block", "rescue", "always"):
            yield from _tasks(node.get(key, []))


def test_no_docker_container_task_sets_comparisons() -> None:
    """Under Mitogen (ansible.cfg's strategy) modules run in a long-lived interpreter, and
    docker_container stores `comparisons` in module-level objects: one task's
    `comparisons: {image: ignore}` made every later docker_container task of the run blind to
    a new image (measured: a rebuilt gateway image was reported `ok`, not replaced)."""
    found = []
    for path in sorted((ROOT / "roles").glob("*/tasks/*.yml")):
        for task in _tasks(yaml.safe_load(path.read_text()) or []):
            args = task.get("community.docker.docker_container")
            if isinstance(args, dict) and "comparisons" in args:
                found.append(f"{path.relative_to(ROOT)}: {task.get('name')}")
    assert found == []
