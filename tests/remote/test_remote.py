"""The site deployed over SSH to one gateway host and two API nodes (molecule `remote`).

Tests run in file order: the last one powers an API node off.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from tests.bounded import run_bounded
from tests.remote.conftest import Remote, on_host, run_site


def containers_on(host: str) -> dict[str, str]:
    """{container name: published ports} of the mlgate containers running on a host."""
    out = on_host(host, "docker", "ps", "--format", "{{.Names}}\t{{.Ports}}")
    rows = [[*line.split("\t"), ""] for line in out.splitlines() if line.strip()]
    return {row[0]: row[1] for row in rows}


def test_gateway_answers_over_https_with_auth(remote: Remote) -> None:
    answer = remote.predict("I am so happy today")
    assert answer.status_code == 200, answer.text
    assert set(answer.json()) == {"prediction value"}
    debug = remote.predict("I am so happy today", headers={"X-Experiment-Group": "debug"})
    assert debug.status_code == 200, debug.text
    assert abs(sum(debug.json()["prediction_proba_dict"].values()) - 1) < 1e-6
    anonymous = remote.client.post("/predict", json={"sentence": "hi"})
    assert anonymous.status_code == 401
    plain = httpx.get(remote.cfg["http"] + "/predict", follow_redirects=False, timeout=10)
    assert plain.status_code == 301
    assert plain.headers["location"].startswith("https://")


def _ping(remote: Remote, host: str, known_hosts: str) -> subprocess.CompletedProcess:
    """`ansible <host> -m ping` over SSH with the scenario's inventory and a known_hosts file."""
    ssh_args = f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes -o LogLevel=ERROR"
    cmd = [str(Path(sys.executable).parent / "ansible"), host, "-i", remote.cfg["inventory"]]
    for path in remote.cfg["extra_vars"]:
        cmd += ["-e", f"@{path}"]
    cmd += ["-e", json.dumps({"ansible_ssh_common_args": ssh_args}), "-m", "ansible.builtin.ping"]
    # A fresh SSH connection each time: an OpenSSH master connection (ControlPersist) left by an
    # earlier run to the same host would be reused without any host key check.
    env = dict(os.environ, ANSIBLE_SSH_ARGS="-o ControlMaster=no -o ControlPath=none")
    return run_bounded(cmd, 120, env=env)


def test_ssh_checks_host_keys_and_refuses_a_host_with_another_key(
    remote: Remote, tmp_path: Path
) -> None:
    known = Path(remote.cfg["known_hosts"])
    addresses = remote.cfg["addresses"]
    lines = dict(line.split(" ", 1) for line in known.read_text().splitlines() if line)
    assert set(lines) == set(addresses.values())  # one key per host, by the address Ansible uses
    node = remote.cfg["api_nodes"][0]
    assert _ping(remote, node, str(known)).returncode == 0
    # the node's address with the gateway's key: what an impostor at that address would show
    impostor = tmp_path / "known_hosts"
    impostor.write_text(f"{addresses[node]} {lines[addresses[remote.cfg['gateway']]]}\n")
    refused = _ping(remote, node, str(impostor))
    out = refused.stdout + refused.stderr
    assert refused.returncode != 0, out
    refusals = ("Host key verification failed", "mismatching host key", "HAS CHANGED")
    assert any(words in out for words in refusals), out[-2000:]
    # and an unknown host is refused too, never added on first use
    unknown = tmp_path / "empty_known_hosts"
    unknown.write_text("")
    refused = _ping(remote, node, str(unknown))
    assert refused.returncode != 0 and unknown.read_text() == ""


def test_ca_and_credentials_came_back_to_the_controller(remote: Remote) -> None:
    controller = Path(remote.cfg["controller_dir"])
    assert (controller / "ca.crt").read_text().startswith("-----BEGIN CERTIFICATE-----")
    secret = controller / "credentials" / "mlgate.password"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert len(remote.password) >= 32
    # The CA stays with the operator: its key on the controller (0600 in a 0700 directory), none
    # on the gateway, which holds only its own key; the certificate it serves chains to the CA.
    ca_key = controller / "ca" / "ca.key"
    assert stat.S_IMODE(ca_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(ca_key.parent.stat().st_mode) == 0o700
    gateway, stack = remote.cfg["gateway"], remote.cfg["stack"]
    found = on_host(gateway, "find", f"/opt/mlgate/{stack}", "-name", "ca.key")
    assert found.strip() == "", found
    served = on_host(gateway, "sh", "-c", f"cat /opt/mlgate/{stack}/certs/server.crt")
    check = subprocess.run(
        ["openssl", "verify", "-CAfile", str(controller / "ca.crt"), "-purpose", "sslserver"],
        input=served, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr


def test_replicas_run_on_the_nodes_the_inventory_gives(remote: Remote) -> None:
    cfg = remote.cfg
    gateway = cfg["gateway"]
    for node in cfg["api_nodes"]:
        running = containers_on(node)
        expected = {i["name"] for i in remote.instances if i["node"] == node}
        assert expected, f"no replica placed on {node}"
        api = {name for name in running if "-api-" in name}
        assert api == expected, f"{node} runs {sorted(api)}, inventory says {sorted(expected)}"
        for name in api:
            # Published on the node's internal address only (not 0.0.0.0), on the expected port.
            instance = next(i for i in remote.instances if i["name"] == name)
            assert instance["endpoint"].split(":")[0] == cfg["addresses"][node]
            assert running[name].startswith(instance["endpoint"] + "->8000/tcp"), running[name]
        assert not any(name.endswith("-nginx") for name in running), f"{node} runs nginx"
    at_gateway = containers_on(gateway)
    assert f"{cfg['stack']}-nginx" in at_gateway
    assert f"{cfg['stack']}-prometheus" in at_gateway
    assert not any("-api-" in name for name in at_gateway)
    # Both API nodes carry replicas of v1.
    v1_nodes = {i["node"] for i in remote.instances if i["variant"] == "v1"}
    assert v1_nodes == set(cfg["api_nodes"])


def test_traffic_reaches_replicas_on_every_node(remote: Remote) -> None:
    seen = set()
    for _ in range(30):
        answer = remote.predict("spread the load")
        assert answer.status_code == 200, answer.text
        seen.add(answer.headers["x-mlgate-replica"])
    v1 = {i["name"] for i in remote.instances if i["variant"] == "v1"}
    assert seen == v1, f"replicas answering: {sorted(seen)}"
    assert {remote.node_of(r) for r in seen} == set(remote.cfg["api_nodes"])
    debug = remote.predict("which node?", headers={"X-Experiment-Group": "debug"})
    v2 = next(i for i in remote.instances if i["variant"] == "v2")
    assert debug.headers["x-mlgate-replica"] == v2["name"]


def test_prometheus_scrapes_every_replica_on_every_node(remote: Remote) -> None:
    """Every replica on every node is an `up` target. Waiting covers the first scrapes (and
    Prometheus still starting); a Prometheus that crashed meanwhile fails the test (its
    restart count), with its state and last log lines."""
    gateway, stack = remote.cfg["gateway"], remote.cfg["stack"]
    url = "http://127.0.0.1:9090/api/v1/targets?state=active"
    query = (
        "import json, urllib.request; print(json.dumps(json.load(urllib.request.urlopen("
        f"'{url}', timeout=5))['data']['activeTargets']))"
    )
    wanted = {i["endpoint"] for i in remote.instances}
    api: dict[str, str] = {}
    refused = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        done = subprocess.run(
            ["docker", "exec", gateway, "python3", "-c", query],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            refused.append(done.stderr.strip().splitlines()[-1:])
        else:
            targets = json.loads(done.stdout)
            api = {
                t["labels"]["instance"]: t["health"] for t in targets if t["labels"]["job"] == "api"
            }
            if set(api) == wanted and set(api.values()) == {"up"}:
                break
        time.sleep(3)
    state = json.loads(on_host(gateway, "docker", "inspect", f"{stack}-prometheus"))[0]
    logs = on_host(gateway, "sh", "-c", f"docker logs --tail 20 {stack}-prometheus 2>&1")
    context = (
        f"Prometheus {state['State']}, restarts {state['RestartCount']}, unanswered queries "
        f"{refused[-3:]}; logs: {logs}"
    )
    assert state["RestartCount"] == 0 and state["State"]["Running"], context
    assert set(api) == wanted, context
    assert set(api.values()) == {"up"}, (api, context)


BOTH_COHORTS = ({}, {"X-Experiment-Group": "debug"})


def api_containers(host: str) -> set[str]:
    return {name for name in containers_on(host) if "-api-" in name}


def task_results(out: str, task: str) -> list[tuple[int, str]]:
    """The outcome word (ok, changed, skipping, ...) of each run of a task, in the order they
    ran, with the position of its header in ansible-playbook's output: [(pos, outcome)]."""
    found = []
    header = f"TASK [{task}]"
    pos = out.find(header)
    while pos >= 0:
        end = out.find("TASK [", pos + len(header))
        body = out[pos : end if end >= 0 else len(out)]
        outcome = next(
            (w for w in ("changed", "ok", "skipping", "fatal", "failed") if f"{w}: [" in body),
            "?",
        )
        found.append((pos, outcome))
        pos = out.find(header, pos + len(header))
    return found


def test_reshaping_the_fleet_leaves_no_orphan_and_serves_both_cohorts(remote: Remote) -> None:
    """Fewer replicas and a node taken out of mlgate_api (still in the inventory): v1-2 moves
    to the first node, v1-3 goes, v2 moves from the second node to the first; the second node
    ends with no API container (a leftover would serve an unauthenticated API on its internal
    address). Under load of both cohorts, no request fails: the gateway is reloaded onto the
    new placement before anything is removed. Then back to the inventory's placement. Both runs
    re-run the roles a placement touches (--tags api,nginx,monitoring: the replicas, the
    gateway's upstreams, Prometheus' targets, the removal of the unwanted containers and the
    smoke test); the engines, certificates and credentials do not change."""
    cfg, stack = remote.cfg, remote.cfg["stack"]
    first, second = cfg["api_nodes"]
    reshape = json.dumps({"mlgate_api_v1_replicas": 2, "mlgate_api_nodes": [first]})
    placement = ("--tags", "api,nginx,monitoring")
    with remote.load(headers=BOTH_COHORTS) as load:
        done = run_site(cfg, *placement, "-e", reshape)
    assert done.returncode == 0, done.stdout[-6000:]
    print(f"\nfleet reshaped: {load.report()}")
    # one gateway reload (new upstreams): it may close the idle keep-alive connection once
    load.assert_no_failure(max_retried=1)
    assert all(cohort[200] >= 20 for cohort in load.by_cohort), load.report()
    assert api_containers(first) == {f"{stack}-api-v1-1", f"{stack}-api-v1-2", f"{stack}-api-v2-1"}
    assert api_containers(second) == set(), containers_on(second)
    debug = remote.predict("where is v2 now?", headers={"X-Experiment-Group": "debug"})
    assert debug.status_code == 200 and debug.headers["x-mlgate-replica"] == f"{stack}-api-v2-1"
    assert containers_on(first)[f"{stack}-api-v2-1"].startswith(cfg["addresses"][first])
    # v1-2 and v2-1, new on the first node, were both started before either was waited for
    moved = (f"{stack}-api-v1-2", f"{stack}-api-v2-1")
    wait = "api : Wait until it serves the model, before the next replica is touched, for "
    started = [task_results(done.stdout, f"api : Run the API container {n}")[0] for n in moved]
    assert [outcome for _, outcome in started] == ["changed", "changed"], started
    waited = [
        p for n in moved for p, outcome in task_results(done.stdout, wait + n) if outcome == "ok"
    ]
    assert len(waited) == 2 and max(p for p, _ in started) < min(waited), (started, waited)

    with remote.load(headers=BOTH_COHORTS) as load:
        done = run_site(cfg, *placement)
    assert done.returncode == 0, done.stdout[-6000:]
    print(f"fleet restored: {load.report()}")
    load.assert_no_failure(max_retried=1)
    for node in (first, second):
        wanted = {i["name"] for i in remote.instances if i["node"] == node}
        assert api_containers(node) == wanted, (node, containers_on(node))


def test_rolling_update_replaces_one_replica_at_a_time_across_the_fleet(remote: Remote) -> None:
    revision = f"fleet-{uuid.uuid4().hex[:8]}"
    with remote.load(headers=BOTH_COHORTS) as load:
        done = run_site(remote.cfg, "--tags", "api", "-e", f"api_model_revision={revision}")
    assert done.returncode == 0, done.stdout[-6000:]
    print(f"\nfleet rolling update: {load.report()}")
    assert load.sent > 50
    load.assert_no_failure()
    # both cohorts served throughout; v2 was replaced while its surge twin answered
    assert all(cohort[200] >= 20 for cohort in load.by_cohort), load.report()
    v2 = next(i["name"] for i in remote.instances if i["variant"] == "v2")
    assert any(replica == f"{v2}-surge" for _, replica in load.seen), "the surge twin never served"
    # Replaced one at a time: the API play is serial per node and each node waits for a healthy
    # replica before the next; so the replicas restarted in inventory order, never together.
    starts = []
    for node in remote.cfg["api_nodes"]:
        for name in (i["name"] for i in remote.instances if i["node"] == node):
            info = json.loads(on_host(node, "docker", "inspect", name))[0]
            assert info["Config"]["Labels"]["io.mlgate.model-version"], name
            starts.append((info["State"]["StartedAt"], node, name))
    versions = set()
    for node in remote.cfg["api_nodes"]:
        for name in (i["name"] for i in remote.instances if i["node"] == node):
            health = on_host(
                node,
                "docker",
                "exec",
                name,
                "python",
                "-c",
                "import urllib.request; print(urllib.request.urlopen("
                "'http://127.0.0.1:8000/health', timeout=5).read().decode())",
            )
            versions.add(json.loads(health)["model_version"])
    assert len(versions) == 1, versions
    ordered_nodes = [node for _, node, _ in sorted(starts)]
    # All replicas of one node restarted before any of the next node's.
    assert ordered_nodes == sorted(ordered_nodes, key=remote.cfg["api_nodes"].index), sorted(starts)


def test_losing_a_whole_api_node_loses_no_requests(remote: Remote) -> None:
    victim = remote.cfg["api_nodes"][-1]
    with remote.load() as load:
        time.sleep(4)
        killed_at = time.monotonic()
        kill = subprocess.run(
            ["docker", "kill", victim], capture_output=True, text=True, check=False
        )
        assert kill.returncode == 0, kill.stderr
        # Requests caught on the dead node wait for nginx's read timeout (10 s) and are retried
        # elsewhere; from 12 s on, count answers (not seconds: a busy machine answers fewer).
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            after = [r for t, r in list(load.seen) if t > killed_at + 12]
            if len(after) >= 24:
                break
            time.sleep(0.5)
    print(f"\nnode {victim} powered off: {load.report()}")
    load.assert_no_failure()
    after = [r for t, r in load.seen if t > killed_at + 12]
    assert len(after) >= 24, f"only {len(after)} answers from 12 s after the node died on"
    assert {remote.node_of(r) for r in after} == set(remote.cfg["api_nodes"]) - {victim}
