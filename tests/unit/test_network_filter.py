"""The mlgate role's filter that derives the API network's subnet from the stack's."""

from __future__ import annotations

import importlib.util
import ipaddress
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError

_PATH = Path(__file__).parents[2] / "roles/mlgate/filter_plugins/mlgate_network.py"
_spec = importlib.util.spec_from_file_location("mlgate_network", _PATH)
mlgate_network = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mlgate_network)
api_subnet = mlgate_network.mlgate_api_subnet


@pytest.mark.parametrize(
    ("subnet", "expected"),
    [
        ("172.30.57.0/24", "172.31.57.0/24"),
        ("172.31.57.0/24", "172.30.57.0/24"),
        ("172.16.0.0/24", "172.17.0.0/24"),
        ("10.0.5.0/24", "10.1.5.0/24"),
        ("10.255.5.0/24", "10.254.5.0/24"),
        ("192.168.1.0/24", "192.168.129.0/24"),
        ("192.168.200.0/24", "192.168.72.0/24"),
    ],
)
def test_pairs_each_private_subnet_with_another_in_its_range(subnet: str, expected: str) -> None:
    got = api_subnet(subnet)
    assert got == expected
    assert api_subnet(got) == subnet  # the pairing is symmetric
    pair = ipaddress.ip_network(got)
    assert pair.is_private and not pair.overlaps(ipaddress.ip_network(subnet))


def test_every_scenario_stack_gets_a_pair_no_other_stack_uses() -> None:
    root = Path(__file__).parents[2]
    import yaml

    files = list(root.glob("molecule/*/vars/stack.yml")) + list(root.glob("tests/e2e/stack*.yml"))
    subnets = [yaml.safe_load(f.read_text()).get("mlgate_network_subnet") for f in files]
    subnets = [s for s in subnets if s] + ["172.30.57.0/24"]  # and the default stack
    pairs = {api_subnet(s) for s in subnets}
    assert len(pairs) == len(set(subnets))
    assert not pairs & set(subnets)


@pytest.mark.parametrize(
    ("subnet", "message"),
    [
        ("172.30.0.0/16", "must be a /24"),
        ("172.30.57.1/24", "IPv4 /24"),
        ("not a subnet", "IPv4 /24"),
        ("8.8.8.0/24", "set mlgate_api_network_subnet"),
        ("172.32.0.0/24", "set mlgate_api_network_subnet"),
    ],
)
def test_refuses_what_it_cannot_pair_with_a_sentence(subnet: str, message: str) -> None:
    with pytest.raises(AnsibleFilterError, match=message):
        api_subnet(subnet)
