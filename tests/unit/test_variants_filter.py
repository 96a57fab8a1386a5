"""Variants as data (mlgate_variants): the topology filter's placement of every variant, its
validation, and the gateway's routing plan (header, weighted, sticky, shadow)."""

from __future__ import annotations

import copy
from decimal import Decimal

import pytest
from ansible.errors import AnsibleFilterError

from tests.unit.test_topology_filter import mlgate_topology, settings, topology

default_variants = mlgate_topology.default_variants
routing_plan = mlgate_topology.routing_plan

DEBUG = {"header": "X-Experiment-Group", "value": "debug"}
ISSUE_EXAMPLE = [
    {"name": "v1", "model": "@stable", "replicas": 3, "route": "default"},
    {"name": "v2", "model": "@stable", "replicas": 1, "debug": True, "route": DEBUG},
    {"name": "canary", "model": "@candidate", "replicas": 1, "route": {"weight": 10}},
    {"name": "shadow", "model": "@candidate", "replicas": 1, "route": {"shadow": 100}},
]


def with_variants(variants, **changes) -> dict:
    return topology(settings(variants=copy.deepcopy(variants), **changes))


def test_the_default_list_is_todays_stack() -> None:
    legacy = topology(settings())
    explicit = with_variants(default_variants(3))
    assert explicit == legacy
    v1, v2 = legacy["variants"]
    assert (v1["name"], v1["model"], v1["debug"], v1["slot"]) == ("v1", "@stable", False, 0)
    assert (v2["name"], v2["model"], v2["debug"], v2["slot"]) == ("v2", "@stable", True, 1)
    assert legacy["v1"] == v1["instances"] and legacy["v2"] == v2["instances"]
    assert [(r["name"], r["variant"], r["debug"], r["model"]) for r in legacy["instances"]] == [
        ("mlgate-api-v1-1", "v1", False, "@stable"),
        ("mlgate-api-v1-2", "v1", False, "@stable"),
        ("mlgate-api-v1-3", "v1", False, "@stable"),
        ("mlgate-api-v2-1", "v2", True, "@stable"),
    ]
    assert legacy["instances"][3]["surge"] == v2["instances"][0]["surge"]
    assert legacy["routes"] == {
        "headers": [
            {
                "variant": "v2",
                "header": "X-Experiment-Group",
                "var": "http_x_experiment_group",
                "value": "debug",
                "regex": "^debug$",
            }
        ],
        "sticky": [],
        "split": [],
        "default": "v1",
        "shadows": [],
    }


def test_the_issues_example_on_one_host_and_on_a_fleet() -> None:
    got = with_variants(ISSUE_EXAMPLE)
    by = {v["name"]: v for v in got["variants"]}
    assert [v["slot"] for v in got["variants"]] == [0, 1, 2, 3]
    canary, shadow = by["canary"]["instances"], by["shadow"]["instances"]
    assert [(r["name"], r["address"]) for r in canary] == [("mlgate-api-canary-1", "172.31.57.50")]
    assert canary[0]["surge"]["address"] == "172.31.57.51"
    assert (
        shadow[0]["address"] == "172.31.57.60" and shadow[0]["surge"]["address"] == "172.31.57.61"
    )
    assert by["canary"]["model"] == "@candidate"
    assert got["routes"]["split"] == [{"variant": "canary", "percent": "10.00"}]
    assert got["routes"]["shadows"] == [{"variant": "shadow", "percent": "100"}]
    # a shadow compares with the default route's model; no other variant has a reference
    assert {r["variant"]: r["reference"] for r in got["instances"]} == {
        "v1": "",
        "v2": "",
        "canary": "",
        "shadow": "@stable",
    }
    pinned = with_variants([{**ISSUE_EXAMPLE[0], "model": "4"}, *ISSUE_EXAMPLE[1:]])
    assert [r["reference"] for r in pinned["instances"] if r["variant"] == "shadow"] == ["4"]
    # the gateway's upstream group per variant: its replicas, its surge twin as the backup
    assert got["upstreams"] == [
        {
            "variant": "v1",
            "servers": [f"172.31.57.{11 + i}:8000" for i in range(3)],
            "backup": [],
        },
        {"variant": "v2", "servers": ["172.31.57.30:8000"], "backup": ["172.31.57.31:8000"]},
        {"variant": "canary", "servers": ["172.31.57.50:8000"], "backup": ["172.31.57.51:8000"]},
        {"variant": "shadow", "servers": ["172.31.57.60:8000"], "backup": ["172.31.57.61:8000"]},
    ]
    # over two nodes that are not the gateway: slot 2 -> node port base + 110, slot 3 -> + 120
    fleet = with_variants(
        ISSUE_EXAMPLE,
        nodes=["api-1", "api-2"],
        gateway="gw",
        internal={"api-1": "10.0.0.11", "api-2": "10.0.0.12"},
    )
    placed = {
        r["name"]: (r["node"], r["address"], r["endpoint"])
        for v in fleet["variants"]
        for r in v["instances"]
    }
    assert placed == {
        "mlgate-api-v1-1": ("api-1", "172.30.57.11", "10.0.0.11:8101"),
        "mlgate-api-v1-2": ("api-2", "172.30.57.12", "10.0.0.12:8102"),
        "mlgate-api-v1-3": ("api-1", "172.30.57.13", "10.0.0.11:8103"),
        "mlgate-api-v2-1": ("api-2", "172.30.57.30", "10.0.0.12:8200"),
        "mlgate-api-canary-1": ("api-1", "172.30.57.50", "10.0.0.11:8210"),
        "mlgate-api-shadow-1": ("api-2", "172.30.57.60", "10.0.0.12:8220"),
    }
    canary_twin = fleet["variants"][2]["instances"][0]["surge"]
    assert (canary_twin["name"], canary_twin["endpoint"]) == (
        "mlgate-api-canary-1-surge",
        "10.0.0.11:8211",
    )


def test_adding_or_removing_a_variant_moves_no_other_container() -> None:
    fleet = {"nodes": ["a", "b", "c"], "gateway": "gw", "internal": {}}
    base = with_variants(default_variants(3), **fleet)
    grown = with_variants(ISSUE_EXAMPLE, **fleet)
    assert grown["variants"][:2] == base["variants"]  # v1 and v2 where they were
    # the canary removed, the shadow pinned to the slot it had: it stays
    pinned = [*ISSUE_EXAMPLE[:2], {**ISSUE_EXAMPLE[3], "slot": 3}]
    shrunk = with_variants(pinned, **fleet)
    assert shrunk["variants"][2]["instances"] == grown["variants"][3]["instances"]


def test_several_replicas_of_a_variant_have_no_surge_twin() -> None:
    got = with_variants(
        [*default_variants(2), {"name": "b", "replicas": 10, "route": {"weight": 50}}]
    )
    b = got["variants"][2]["instances"]
    assert [r["address"] for r in b] == [f"172.31.57.{50 + i}" for i in range(10)]
    assert all("surge" not in r for r in b)


def test_a_variant_without_a_model_takes_the_deployments_default() -> None:
    got = topology(settings(variants=default_variants(1), model="7"))
    assert [v["model"] for v in got["variants"]] == ["7", "7"]
    got = with_variants([{"name": "only", "route": "default", "model": 12}])
    assert got["variants"][0]["model"] == "12" and got["v2"] == []


def shares(plan: dict) -> dict[str, Decimal]:
    """Each weighted variant's share of the requests no header took, from the nginx plan:
    the sticky split first (the client key's hash), then the request-id split of the rest."""
    sticky = {s["variant"]: Decimal(s["percent"]) / 100 for s in plan["sticky"]}
    rest = 1 - sum(sticky.values(), Decimal(0))
    free = {s["variant"]: rest * Decimal(s["percent"]) / 100 for s in plan["split"]}
    return {**sticky, **free}


@pytest.mark.parametrize(
    "weights",
    [
        [("a", 10, False)],
        [("a", 50, False)],
        [("a", 10, True), ("b", 10, False)],
        [("a", 33.33, False), ("b", 33.33, False), ("c", 33.34, False)],
        [("a", 12.5, True), ("b", 7.25, True), ("c", 1, False), ("d", 0.01, False)],
        [("a", 60, True), ("b", 40, True)],
        [("a", 99.99, True), ("b", 0.01, False)],
    ],
)
def test_each_weighted_variant_gets_its_weight_within_nginxs_precision(weights) -> None:
    variants = [{"name": "main", "route": "default"}] + [
        {"name": n, "route": {"weight": w, "sticky": s}} for n, w, s in weights
    ]
    plan = with_variants(variants)["routes"]
    got = shares(plan)
    for name, weight, _ in weights:
        assert abs(got[name] - Decimal(str(weight)) / 100) <= Decimal("0.0001"), (name, got)
    assert sum(Decimal(s["percent"]) for s in plan["split"]) <= 100
    assert plan["default"] == "main"


def test_header_routes_keep_list_order_and_exact_values() -> None:
    variants = [
        {"name": "main", "route": "default"},
        {"name": "beta", "route": {"header": "X-Cohort", "value": "Beta"}},
        {"name": "beta2", "route": {"header": "X-Cohort", "value": "beta"}},  # case matters
        {"name": "dbg", "route": DEBUG, "debug": True},
    ]
    plan = routing_plan(with_variants(variants)["variants"])
    assert [(h["variant"], h["var"], h["value"]) for h in plan["headers"]] == [
        ("beta", "http_x_cohort", "Beta"),
        ("beta2", "http_x_cohort", "beta"),
        ("dbg", "http_x_experiment_group", "debug"),
    ]


@pytest.mark.parametrize("value", ["debug", "a.b", "1+1", "x*(y)|z^", "[a-z]?"])
def test_a_header_routes_regex_matches_its_value_exactly_and_case_sensitively(value) -> None:
    import re

    variants = [
        {"name": "main", "route": "default"},
        {"name": "b", "route": {"header": "X-A", "value": value}},
    ]
    regex = with_variants(variants)["routes"]["headers"][0]["regex"]
    assert re.search(regex, value)
    for other in (
        value.upper() if value.upper() != value else value + "x",
        "x" + value,
        value + " ",
        "",
    ):
        assert not re.search(regex, other), other


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ([], "must be a non-empty list"),
        ([{"name": "a", "route": {"weight": 10}}], "no variant has route: default"),
        (
            [{"name": "a", "route": "default"}, {"name": "b", "route": "default"}],
            r"one default route only, not 2 \(a, b\)",
        ),
        (
            [
                {"name": "a", "route": "default"},
                {"name": "b", "route": {"weight": 60}},
                {"name": "c", "route": {"weight": 50.5}},
            ],
            r"the weights sum to 110.5 % \(b 60, c 50.5\): at most 100",
        ),
        ([{"name": "a", "route": "default"}, {"name": "a", "route": DEBUG}], r"\(a repeated\)"),
        (
            [
                {"name": "a", "route": "default"},
                {"name": "b", "route": {"header": "x-experiment-group", "value": "debug"}},
                {"name": "c", "route": DEBUG},
            ],
            "b and c both route X-Experiment-Group: debug",
        ),
        ([{"name": "V1", "route": "default"}], "name must be 1-20 lowercase"),
        ([{"name": "v_1", "route": "default"}], "name must be 1-20 lowercase"),
        ([{"name": "a-", "route": "default"}], "name must be 1-20 lowercase"),
        ([{"name": "a" * 21, "route": "default"}], "name must be 1-20 lowercase"),
        ([{"name": "a", "route": "default", "weight": 3}], r"unknown keys \['weight'\]"),
        ([{"name": "a"}], "variant a has no route"),
        ([{"name": "a", "route": "main"}], "route must be default, {header: NAME"),
        ([{"name": "a", "route": {"weight": 1, "shadow": 2}}], "must name one of header, weight"),
        (
            [{"name": "a", "route": {"weight": 1, "value": "x"}}],
            r"\['value'\] do not go with weight",
        ),
        ([{"name": "a", "route": {"weight": 0}}], "more than 0 and at most 100 percent"),
        ([{"name": "a", "route": {"weight": 100.5}}], "more than 0 and at most 100 percent"),
        ([{"name": "a", "route": {"weight": 0.001}}], "at most 2 decimals"),
        ([{"name": "a", "route": {"weight": "ten"}}], "must be a number of percent"),
        ([{"name": "a", "route": {"weight": True}}], "must be a number of percent"),
        ([{"name": "a", "route": {"shadow": 0}}], r"route.shadow must be more than 0"),
        ([{"name": "a", "route": {"weight": 5, "sticky": "yes"}}], "sticky must be true or false"),
        (
            [{"name": "a", "route": {"header": "X Bad", "value": "x"}}],
            "must be an HTTP header name",
        ),
        ([{"name": "a", "route": {"header": "X-A", "value": "~re"}}], "must be the exact header"),
        ([{"name": "a", "route": {"header": "X-A", "value": 'a"b'}}], "must be the exact header"),
        ([{"name": "a", "route": {"header": "X-A", "value": "a b"}}], "must be the exact header"),
        ([{"name": "a", "route": {"header": "X-A", "value": "$x"}}], "must be the exact header"),
        ([{"name": "a", "route": "default", "model": "stable"}], "model must be @alias"),
        ([{"name": "a", "route": "default", "debug": "yes"}], "debug must be true or false"),
        (
            [
                {"name": "a", "route": "default"},
                {"name": "s", "route": {"shadow": 5}, "debug": True},
            ],
            "a shadow's answers are discarded",
        ),
        (
            [{"name": "a", "route": "default"}, {"name": "b", "route": DEBUG, "replicas": 11}],
            r"replicas must be between 1 and 10 \(got 11\)",
        ),
        (
            [{"name": "a", "route": "default", "replicas": 20}],
            r"variant a: replicas must be between 1 and 19",
        ),
        (
            [
                {"name": "a", "route": "default"},
                {"name": "b", "route": DEBUG, "slot": 4},
                {"name": "c", "route": {"shadow": 1}, "slot": 4},
            ],
            "variants b and c both have slot 4",
        ),
        (
            [{"name": "a", "route": "default"}, {"name": "b", "route": DEBUG, "slot": 22}],
            "between 1 and 21",
        ),
        ([{"name": "a", "route": "default", "slot": 3}], "the default route's variant has no slot"),
        (
            [{"name": "a", "route": "default"}]
            + [{"name": f"s{i}", "route": {"shadow": 1}} for i in range(22)],
            "more than 21 variants besides the default route's",
        ),
    ],
)
def test_impossible_variants_are_refused_with_a_sentence(variants, message) -> None:
    with pytest.raises(AnsibleFilterError, match=message):
        with_variants(variants)


def test_a_slot_whose_node_ports_do_not_fit_names_the_port_base() -> None:
    variants = [{"name": "a", "route": "default"}, {"name": "b", "route": DEBUG, "slot": 21}]
    got = with_variants(variants, nodes=["n"], gateway="gw", port_base=65226)
    assert got["variants"][1]["instances"][0]["publish"] == "n:65526"  # base + 300; twin + 301
    with pytest.raises(
        AnsibleFilterError,
        match=r"variant b \(slot 21\) needs node ports up to 65536: lower mlgate_api_node_port",
    ):
        with_variants(variants, nodes=["n"], gateway="gw", port_base=65227)
