"""Ansible filter of the mlgate role: where every API container runs (the topology).

``mlgate_api_topology(settings)`` turns the stack's settings into one record per API
container, for each variant: the node (inventory host) it runs on, the Docker network it joins
there, its fixed address, what it publishes, and ``endpoint``, where the gateway host reaches
it. It replaces a Jinja program of the role's defaults; the roles read its result through
``mlgate_api_v1_instances`` and ``mlgate_api_v2_instances``.

The layout (unchanged from the Jinja version, so no container moves on an upgrade):

* v1 replica i (1..replicas) runs on node ``nodes[(i - 1) % len(nodes)]``, address ``.(10 + i)``,
  node port ``port_base + i``;
* v2 runs on the next node of the round robin, ``nodes[replicas % len(nodes)]``, address ``.30``,
  node port ``port_base + 100``; its surge twin (the gateway's backup for the debug route during
  a rollout) ``.31``, ``port_base + 101``;
* on the gateway host a container joins the internal API network (its address in that
  network's subnet, unpublished, endpoint = address:api_port); on another node it joins the
  node's stack network and publishes its port on the node's internal address (endpoint =
  internal address:node port).

A configuration whose containers would collide (a 20th replica would take v2's address, a port
base with no room for the node ports) is refused with a sentence that names the setting.
"""

from __future__ import annotations

import ipaddress

from ansible.errors import AnsibleFilterError

# Host numbers in the /24s: .10 is the gateway, .40-.44 the monitoring containers (and .1 the
# host); v1 replicas take .11 upwards, v2 and its twin .30 and .31.
V1_FIRST = 11
V2_ADDRESS = 30
V2_PORT_OFFSET = 100
MAX_V1_REPLICAS = V2_ADDRESS - V1_FIRST  # 19: a 20th replica would take v2's address

REQUIRED = (
    "stack",
    "replicas",
    "nodes",
    "gateway",
    "internal",
    "subnet",
    "api_subnet",
    "network",
    "api_network",
    "api_port",
    "port_base",
)


def _prefix(subnet: str, setting: str) -> str:
    try:
        net = ipaddress.IPv4Network(str(subnet), strict=True)
    except ValueError as exc:
        raise AnsibleFilterError(
            f"{setting} must be an IPv4 /24 like 172.30.57.0/24 (got {subnet!r})"
        ) from exc
    if net.prefixlen != 24:
        raise AnsibleFilterError(
            f"{setting} must be a /24 (got {subnet!r}): every container has a fixed address in it"
        )
    return str(net.network_address).rsplit(".", 1)[0]


def _int(value, setting: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise AnsibleFilterError(f"{setting} must be a whole number (got {value!r})") from exc


def mlgate_api_topology(settings: dict) -> dict:
    """{"v1": [record, ...], "v2": [record]} from the settings (see REQUIRED): stack (name),
    replicas (v1), nodes (API nodes in order), gateway (the gateway host), internal ({node:
    address the gateway host reaches it at}), subnet and api_subnet (the two /24s), network
    and api_network (their Docker names), api_port (inside the containers), port_base (node
    ports of the API containers on nodes other than the gateway host)."""
    missing = [key for key in REQUIRED if key not in settings]
    if missing:
        raise AnsibleFilterError(f"mlgate_api_topology: missing settings {missing}")
    stack = str(settings["stack"])
    replicas = _int(settings["replicas"], "mlgate_api_v1_replicas")
    nodes = list(settings["nodes"] or [])
    gateway = str(settings["gateway"])
    internal = dict(settings["internal"] or {})
    api_port = _int(settings["api_port"], "mlgate_api_port")
    port_base = _int(settings["port_base"], "mlgate_api_node_port_base")
    prefix = _prefix(settings["subnet"], "mlgate_network_subnet")
    api_prefix = _prefix(settings["api_subnet"], "mlgate_api_network_subnet")
    if not 1 <= replicas <= MAX_V1_REPLICAS:
        raise AnsibleFilterError(
            f"mlgate_api_v1_replicas must be between 1 and {MAX_V1_REPLICAS} (got {replicas}): "
            f"replica i gets the address .(10 + i), and .{V2_ADDRESS} is v2's"
        )
    if not nodes:
        raise AnsibleFilterError("mlgate_api_nodes is empty: name at least one API node")
    if not 1 <= port_base <= 65535 - V2_PORT_OFFSET - 1:
        raise AnsibleFilterError(
            f"mlgate_api_node_port_base must be between 1 and {65535 - V2_PORT_OFFSET - 1} "
            f"(got {port_base}): the node ports are base + 1 .. base + {V2_PORT_OFFSET + 1}"
        )

    def place(name: str, node: str, host_number: int, port: int) -> dict:
        local = node == gateway
        address = f"{api_prefix if local else prefix}.{host_number}"
        reach = internal.get(node, node)
        return {
            "name": name,
            "address": address,
            "node": node,
            "network": settings["api_network"] if local else settings["network"],
            "publish": "" if local else f"{reach}:{port}",
            "endpoint": f"{address}:{api_port}" if local else f"{reach}:{port}",
        }

    v1 = [
        place(f"{stack}-api-v1-{i}", nodes[(i - 1) % len(nodes)], 10 + i, port_base + i)
        for i in range(1, replicas + 1)
    ]
    v2_node = nodes[replicas % len(nodes)]
    v2 = place(f"{stack}-api-v2-1", v2_node, V2_ADDRESS, port_base + V2_PORT_OFFSET)
    twin = place(f"{stack}-api-v2-1-surge", v2_node, V2_ADDRESS + 1, port_base + V2_PORT_OFFSET + 1)
    v2["surge"] = {key: twin[key] for key in ("name", "address", "network", "publish", "endpoint")}
    return {"v1": v1, "v2": [v2]}


class FilterModule:
    def filters(self):
        return {"mlgate_api_topology": mlgate_api_topology}
