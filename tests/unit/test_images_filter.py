"""The mlgate role's filter that builds each API image on one node and ships it to the others."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError

_PATH = Path(__file__).parents[2] / "roles/mlgate/filter_plugins/mlgate_images.py"
_spec = importlib.util.spec_from_file_location("mlgate_images", _PATH)
mlgate_images = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mlgate_images)
distribute = mlgate_images.mlgate_image_distribution


def plan(**refs: tuple[str, bool]) -> dict:
    return {key: {"ref": ref, "present": present} for key, (ref, present) in refs.items()}


def test_a_new_image_is_built_on_the_first_node_that_needs_it_and_shipped_to_the_others() -> None:
    plans = {
        "a": plan(stable=("api:1", False)),
        "b": plan(stable=("api:1", False)),
        "c": plan(stable=("api:1", False)),
    }
    assert distribute(plans, ["b", "a", "c"]) == {
        "build": {"b": ["stable"], "a": [], "c": []},
        "ship": [{"ref": "api:1", "source": "b", "targets": ["a", "c"]}],
    }


def test_a_node_that_has_the_image_is_the_source_and_nothing_is_built() -> None:
    plans = {"a": plan(stable=("api:1", False)), "b": plan(stable=("api:1", True))}
    assert distribute(plans, ["a", "b"]) == {
        "build": {"a": [], "b": []},
        "ship": [{"ref": "api:1", "source": "b", "targets": ["a"]}],
    }


def test_nothing_moves_when_every_node_has_its_images() -> None:
    plans = {
        "a": plan(stable=("api:1", True)),
        "b": plan(stable=("api:1", True), c=("api:2", True)),
    }
    assert distribute(plans, ["a", "b"]) == {"build": {"a": [], "b": []}, "ship": []}


def test_images_only_some_nodes_need_go_only_there_and_a_lone_node_builds_its_own() -> None:
    # a canary on node b only, a shadow on c only; the key names may differ between nodes
    plans = {
        "a": plan(stable=("api:1", True)),
        "b": plan(stable=("api:1", False), candidate=("api:2", False)),
        "c": plan(stable=("api:1", False), shadow=("api:3", False)),
    }
    assert distribute(plans, ["a", "b", "c"]) == {
        "build": {"a": [], "b": ["candidate"], "c": ["shadow"]},
        "ship": [{"ref": "api:1", "source": "a", "targets": ["b", "c"]}],
    }
    # one host (localhost): it builds what it lacks, ships nothing
    assert distribute({"localhost": plan(s=("api:1", False))}, ["localhost"]) == {
        "build": {"localhost": ["s"]},
        "ship": [],
    }


def test_two_keys_with_the_same_ref_on_a_node_build_it_once() -> None:
    plans = {"a": plan(x=("api:1", False), y=("api:1", False)), "b": plan(z=("api:1", False))}
    assert distribute(plans, ["a", "b"]) == {
        "build": {"a": ["x"], "b": []},
        "ship": [{"ref": "api:1", "source": "a", "targets": ["b"]}],
    }


@pytest.mark.parametrize(
    ("plans", "message"),
    [
        ({"a": plan(s=("api:1", True))}, "no image plan for host(s) b"),
        ({"a": {"s": {"ref": "api:1"}}, "b": {}}, "image plan 's' of a is malformed"),
    ],
)
def test_a_missing_or_malformed_plan_is_refused(plans: dict, message: str) -> None:
    with pytest.raises(AnsibleFilterError, match=re.escape(message)):
        distribute(plans, ["a", "b"])
