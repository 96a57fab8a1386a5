"""The mlgate role's topology filter: where every API container runs, at which address, and
where the gateway reaches it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError

_PATH = Path(__file__).parents[2] / "roles/mlgate/filter_plugins/mlgate_topology.py"
_spec = importlib.util.spec_from_file_location("mlgate_topology", _PATH)
mlgate_topology = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mlgate_topology)
topology = mlgate_topology.mlgate_api_topology


def settings(**changes) -> dict:
    """The default single-host stack's settings, with changes."""
    base = {
        "stack": "mlgate",
        "replicas": 3,
        "nodes": ["localhost"],
        "gateway": "localhost",
        "internal": {"localhost": "localhost"},
        "subnet": "172.30.57.0/24",
        "api_subnet": "172.31.57.0/24",
        "network": "mlgate-net",
        "api_network": "mlgate-api-net",
        "api_port": 8000,
        "port_base": 8100,
    }
    return {**base, **changes}


def test_one_host_every_container_on_the_internal_api_network_unpublished() -> None:
    got = topology(settings())
    assert got["v1"] == [
        {
            "name": f"mlgate-api-v1-{i}",
            "address": f"172.31.57.{10 + i}",
            "node": "localhost",
            "network": "mlgate-api-net",
            "publish": "",
            "endpoint": f"172.31.57.{10 + i}:8000",
        }
        for i in (1, 2, 3)
    ]
    assert got["v2"] == [
        {
            "name": "mlgate-api-v2-1",
            "address": "172.31.57.30",
            "node": "localhost",
            "network": "mlgate-api-net",
            "publish": "",
            "endpoint": "172.31.57.30:8000",
            "surge": {
                "name": "mlgate-api-v2-1-surge",
                "address": "172.31.57.31",
                "network": "mlgate-api-net",
                "publish": "",
                "endpoint": "172.31.57.31:8000",
            },
        }
    ]


def test_a_fleet_round_robin_published_on_each_nodes_internal_address() -> None:
    # the gateway host is not an API node: every container is published on its node
    got = topology(
        settings(
            stack="s",
            nodes=["api-1", "api-2"],
            gateway="gw",
            internal={"api-1": "10.0.0.11", "api-2": "10.0.0.12"},
            network="s-net",
            api_network="s-api-net",
        )
    )
    placed = [(r["name"], r["node"], r["address"], r["publish"], r["endpoint"]) for r in got["v1"]]
    assert placed == [
        ("s-api-v1-1", "api-1", "172.30.57.11", "10.0.0.11:8101", "10.0.0.11:8101"),
        ("s-api-v1-2", "api-2", "172.30.57.12", "10.0.0.12:8102", "10.0.0.12:8102"),
        ("s-api-v1-3", "api-1", "172.30.57.13", "10.0.0.11:8103", "10.0.0.11:8103"),
    ]
    assert all(r["network"] == "s-net" for r in got["v1"])
    (v2,) = got["v2"]
    # v2 on the next node of the round robin, its twin beside it on the next port
    assert (v2["node"], v2["address"], v2["publish"]) == ("api-2", "172.30.57.30", "10.0.0.12:8200")
    assert (v2["surge"]["address"], v2["surge"]["endpoint"]) == ("172.30.57.31", "10.0.0.12:8201")


def test_a_node_that_is_also_the_gateway_keeps_its_containers_internal() -> None:
    got = topology(settings(nodes=["gw", "api-1"], gateway="gw", internal={"api-1": "10.0.0.11"}))
    by_name = {r["name"]: r for r in got["v1"] + got["v2"]}
    assert by_name["mlgate-api-v1-1"]["network"] == "mlgate-api-net"
    assert by_name["mlgate-api-v1-1"]["publish"] == ""
    assert by_name["mlgate-api-v1-2"]["endpoint"] == "10.0.0.11:8102"
    # 3 replicas over 2 nodes: v2 goes to nodes[3 % 2], the second
    assert by_name["mlgate-api-v2-1"]["node"] == "api-1"


def test_an_unknown_internal_address_falls_back_to_the_node_name() -> None:
    got = topology(settings(nodes=["api-1"], gateway="gw", internal={}))
    assert got["v1"][0]["endpoint"] == "api-1:8101"


def test_changing_the_replica_count_moves_no_other_container() -> None:
    three, five = topology(settings(replicas=3)), topology(settings(replicas=5))
    assert five["v1"][:3] == three["v1"]
    assert five["v2"][0]["address"] == three["v2"][0]["address"]


def test_nineteen_replicas_fit_and_a_twentieth_would_take_v2s_address() -> None:
    got = topology(settings(replicas=19))
    addresses = [r["address"] for r in got["v1"]] + [got["v2"][0]["address"]]
    assert len(set(addresses)) == 20
    with pytest.raises(AnsibleFilterError, match=r"between 1 and 19 \(got 20\).*\.30 is v2's"):
        topology(settings(replicas=20))
    with pytest.raises(AnsibleFilterError, match="between 1 and 19"):
        topology(settings(replicas=0))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"replicas": "three"}, "mlgate_api_v1_replicas must be a whole number"),
        ({"nodes": []}, "mlgate_api_nodes is empty"),
        ({"subnet": "172.30.0.0/16"}, "mlgate_network_subnet must be a /24"),
        ({"api_subnet": "nonsense"}, "mlgate_api_network_subnet must be an IPv4 /24"),
        ({"port_base": 65500}, "mlgate_api_node_port_base must be between 1 and 65434"),
        ({"api_port": None}, "mlgate_api_port must be a whole number"),
    ],
)
def test_bad_settings_are_refused_with_a_sentence_naming_the_setting(changes, message) -> None:
    with pytest.raises(AnsibleFilterError, match=message):
        topology(settings(**changes))


def test_a_missing_setting_is_named() -> None:
    incomplete = settings()
    del incomplete["gateway"]
    with pytest.raises(AnsibleFilterError, match=r"missing settings \['gateway'\]"):
        topology(incomplete)
