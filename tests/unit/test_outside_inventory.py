"""The documented defaults travel with the roles and the playbooks: an inventory kept outside
the repository (as Ansible users keep theirs) needs only the hosts and the groups.

These runs need no Docker: `--tags mlgate-none` selects only the tasks tagged `always` (the
site's host sorting, its check of the shared settings and every role's argument validation,
which template every default)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run(*args: str, callback: str = "default") -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        ANSIBLE_STDOUT_CALLBACK=callback,
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_DEPRECATION_WARNINGS="0",
    )
    return subprocess.run(
        [str(BIN / "ansible-playbook"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


LOCAL = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}


def _checks_only_site(tmp_path: Path) -> tuple[str, ...]:
    """ansible-playbook arguments: the site on an inventory of localhost alone, outside the
    repo, with only the tasks tagged always (the checks)."""
    inv = tmp_path / "hosts.yml"
    inv.write_text(json.dumps({"mlgate": {"hosts": {"localhost": LOCAL}}}))
    return ("-i", str(inv), "playbooks/site.yml", "--tags", "mlgate-none")


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    """An inventory outside the repo: a gateway and two API nodes (all local, so that facts
    can be gathered), with the user's own group_vars/all.yml."""
    inv = tmp_path / "infra"
    (inv / "group_vars").mkdir(parents=True)
    hosts = {
        "mlgate": {
            "children": {
                "mlgate_gateway": {"hosts": {"gw-1": None}},
                "mlgate_api": {"hosts": {"api-1": None, "api-2": None}},
            },
            "hosts": {
                "gw-1": dict(LOCAL, ansible_host="10.0.0.1"),
                "api-1": dict(LOCAL, ansible_host="10.0.0.11"),
                "api-2": dict(LOCAL, ansible_host="10.0.0.12", mlgate_internal_address="10.1.0.12"),
            },
        }
    }
    (inv / "hosts.yml").write_text(json.dumps(hosts))
    (inv / "group_vars" / "all.yml").write_text(
        json.dumps({"mlgate_stack_name": "outside", "mlgate_api_v1_replicas": 4})
    )
    return inv


def test_the_site_needs_only_hosts_and_groups_from_an_outside_inventory(tmp_path: Path) -> None:
    inv = tmp_path / "hosts.yml"
    run = _run(*_checks_only_site(tmp_path))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    # the shared settings were checked once, by the site's first play, not again by each role
    # that depends on them; every role's own arguments were validated: every default templated
    assert run.stdout.count("TASK [Check the shared settings against") == 1
    assert "TASK [mlgate : Validating arguments" not in run.stdout
    for role in ("docker_host", "certs", "htpasswd", "api", "nginx", "monitoring"):
        assert f"TASK [{role} : Validating arguments" in run.stdout, role
    teardown = _run("-i", str(inv), "playbooks/teardown.yml", "--tags", "mlgate-none")
    assert teardown.returncode == 0, teardown.stdout[-3000:]


def test_roles_derive_the_topology_from_the_users_inventory(fleet: Path, tmp_path: Path) -> None:
    # A playbook of the user's own that uses the roles: their tasks are not run (tag never),
    # only their defaults are read.
    play = tmp_path / "show.yml"
    play.write_text(
        json.dumps(
            [
                {
                    "hosts": "mlgate",
                    "gather_facts": False,
                    "roles": [
                        {"role": "api", "tags": ["never"]},
                        {"role": "nginx", "tags": ["never"]},
                    ],
                    "tasks": [
                        {
                            "ansible.builtin.debug": {
                                "msg": {
                                    "upstreams": "{{ nginx_upstreams }}",
                                    "routes": "{{ nginx_routes }}",
                                    "here": "{{ api_instances | map(attribute='name') }}",
                                    "image": "{{ api_image_name }}",
                                }
                            }
                        }
                    ],
                }
            ]
        )
    )
    run = _run("-i", str(fleet / "hosts.yml"), str(play), callback="json")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    tasks = json.loads(run.stdout)["plays"][0]["tasks"]
    shown = {
        host: result["msg"]
        for task in tasks
        if task["task"]["name"] == "ansible.builtin.debug"
        for host, result in task["hosts"].items()
    }
    # the user's group_vars/all.yml wins over the defaults: 4 replicas, stack "outside";
    # round robin over the API nodes in inventory order; the gateway reaches each replica on
    # its node's internal address (ansible_host, or mlgate_internal_address when set)
    v1, v2 = shown["gw-1"]["upstreams"]
    assert v1 == {
        "variant": "v1",
        "servers": ["10.0.0.11:8101", "10.1.0.12:8102", "10.0.0.11:8103", "10.1.0.12:8104"],
        "backup": [],
    }
    # v2 on the node after the last v1 replica, its surge twin beside it as the backup
    assert v2 == {"variant": "v2", "servers": ["10.0.0.11:8200"], "backup": ["10.0.0.11:8201"]}
    assert shown["gw-1"]["routes"]["default"] == "v1"
    assert [h["variant"] for h in shown["gw-1"]["routes"]["headers"]] == ["v2"]
    assert shown["api-1"]["here"] == ["outside-api-v1-1", "outside-api-v1-3", "outside-api-v2-1"]
    assert shown["api-2"]["here"] == ["outside-api-v1-2", "outside-api-v1-4"]
    assert shown["gw-1"]["here"] == []
    assert {s["image"] for s in shown.values()} == {"outside-api"}


def test_replica_counts_that_would_collide_are_refused_in_preflight(tmp_path: Path) -> None:
    site = _checks_only_site(tmp_path)
    refused = _run(*site, "-e", "mlgate_api_v1_replicas=20")
    assert refused.returncode != 0
    assert "between 1 and 19" in refused.stdout and "a 20th replica would take it" in refused.stdout
    assert _run(*site, "-e", "mlgate_api_v1_replicas=19").returncode == 0


def test_a_shared_setting_of_the_wrong_type_is_refused_naming_it(tmp_path: Path) -> None:
    site = _checks_only_site(tmp_path)
    refused = _run(*site, "-e", "mlgate_http_port=notaport")
    assert refused.returncode != 0
    assert "TASK [Check the shared settings against" in refused.stdout
    assert "mlgate_http_port" in refused.stdout, refused.stdout[-3000:]
    assert "cannot be converted to an int" in refused.stdout, refused.stdout[-3000:]


def test_impossible_variants_are_refused_before_any_host_changes(tmp_path: Path) -> None:
    """mlgate_variants is checked in the site's first tasks (tag always): a list the gateway
    cannot route fails with the filter's sentence; a list it can route passes."""
    site = _checks_only_site(tmp_path)
    two_defaults = [
        {"name": "a", "route": "default"},
        {"name": "b", "route": "default"},
    ]
    refused = _run(*site, "-e", json.dumps({"mlgate_variants": two_defaults}))
    assert refused.returncode != 0
    assert "one default route only, not 2 (a, b)" in refused.stdout, refused.stdout[-3000:]
    over = [
        {"name": "v1", "route": "default"},
        {"name": "a", "route": {"weight": 60}},
        {"name": "b", "route": {"weight": 50, "sticky": True}},
    ]
    refused = _run(*site, "-e", json.dumps({"mlgate_variants": over}))
    assert refused.returncode != 0
    assert "the weights sum to 110 % (a 60, b 50): at most 100" in refused.stdout
    fine = [*over[:2], {"name": "b", "route": {"shadow": 100}}]
    ok = _run(*site, "-e", json.dumps({"mlgate_variants": fine}))
    assert ok.returncode == 0, ok.stdout[-3000:]
