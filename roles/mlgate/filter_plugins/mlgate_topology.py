"""Ansible filter of the mlgate role: the model variants, where every API container runs (the
topology) and how the gateway routes to them.

``mlgate_api_topology(settings)`` turns the stack's settings into

* ``variants``: one record per variant (``settings["variants"]``, default: today's pair, v1 x
  ``replicas`` on the default route and v2 on the debug header), normalised: name, model
  (a registry reference), debug, replicas, route, slot, and ``instances``, one record per API
  container: the node (inventory host) it runs on, the Docker network it joins there, its fixed
  address, what it publishes, and ``endpoint``, where the gateway host reaches it; a variant
  with one replica that is not the default route also has a ``surge`` twin (the gateway's
  backup for its route while it is replaced);
* ``instances``: every API container (the default route's first), each with its variant's
  name, debug flag and model, and ``reference``: for a shadow, the default route's model (the
  shadow compares each prediction with it), else "";
* ``routes``: the gateway's routing plan (see :func:`routing_plan`);
* ``upstreams``: per variant, the endpoints of its replicas (``servers``) and of its surge twin
  (``backup``), the gateway's upstream group;
* ``v1`` and ``v2``: the instances of the default route's variant and of the variants routed by
  the debug header (what the roles read through ``mlgate_api_v1_instances`` and
  ``mlgate_api_v2_instances``).

The layout (unchanged from the earlier Jinja program, so no container moves on an upgrade):

* round robin over the nodes: v1 (the default route's variant) replica i (1..replicas) runs on
  ``nodes[(i - 1) % len(nodes)]``, v2 on the next node, ``nodes[replicas % len(nodes)]``; the
  variant in slot s, replica i (1..) on ``nodes[(replicas + s + i - 2) % len(nodes)]`` (so a
  variant stays where it is when others are added or removed); a surge twin beside its
  variant's lone replica;
* the default route's variant has the block ``.11``-``.29`` (replica i: ``.(10 + i)``, node port
  ``port_base + i``); every other variant a block of 10 addresses by its ``slot``: slot 1 (v2's)
  ``.30``-``.39``, node ports ``port_base + 100``..``+ 109``; slot s >= 2 ``.(30 + 10 s)``..,
  node ports ``port_base + 100 + 10 (s - 1)``.. (``.40``-``.49`` are the monitoring's);
* on the gateway host a container joins the internal API network (its address in that
  network's subnet, unpublished, endpoint = address:api_port); on another node it joins the
  node's stack network and publishes its port on the node's internal address (endpoint =
  internal address:node port).

A configuration that cannot work (colliding names, addresses or routes, two default routes or
none, weights over 100 %, a port base with no room for the node ports) is refused with a
sentence that names the setting.
"""

from __future__ import annotations

import ipaddress
import re
from decimal import ROUND_DOWN, Decimal

from ansible.errors import AnsibleFilterError

# Host numbers in the /24s: .10 is the gateway, .40-.44 the monitoring containers (and .1 the
# host); the default route's replicas take .11 upwards, v2 and its twin .30 and .31.
V1_FIRST = 11
V2_ADDRESS = 30
V2_PORT_OFFSET = 100
MAX_V1_REPLICAS = V2_ADDRESS - V1_FIRST  # 19: a 20th replica would take v2's address
BLOCK = 10  # addresses (and node ports) per variant outside the default route
MAX_SLOT = 21  # slot 21: .240-.249
DEBUG_HEADER, DEBUG_VALUE = "X-Experiment-Group", "debug"

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
VARIANT_KEYS = {"name", "model", "replicas", "route", "debug", "slot"}
_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_HEADER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
# visible ASCII but the characters nginx would read as syntax or a variable, not leading "~"
_VALUE_RE = re.compile(r"^[^~\"\\$;{}\s][^\"\\$;{}\s]*$")
_MODEL_RE = re.compile(r"^(@[A-Za-z][A-Za-z0-9_-]*|[0-9]+|latest)$")


def _fail(message: str) -> AnsibleFilterError:
    return AnsibleFilterError(message)


def _prefix(subnet: str, setting: str) -> str:
    try:
        net = ipaddress.IPv4Network(str(subnet), strict=True)
    except ValueError as exc:
        raise _fail(f"{setting} must be an IPv4 /24 like 172.30.57.0/24 (got {subnet!r})") from exc
    if net.prefixlen != 24:
        raise _fail(
            f"{setting} must be a /24 (got {subnet!r}): every container has a fixed address in it"
        )
    return str(net.network_address).rsplit(".", 1)[0]


def _int(value, setting: str) -> int:
    if isinstance(value, bool):
        raise _fail(f"{setting} must be a whole number (got {value!r})")
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise _fail(f"{setting} must be a whole number (got {value!r})") from exc


def _percent(value, setting: str) -> Decimal:
    """A share in percent: > 0, <= 100, at most 2 decimals (nginx's precision)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _fail(f"{setting} must be a number of percent (got {value!r})")
    try:
        share = Decimal(str(value))
    except ArithmeticError as exc:
        raise _fail(f"{setting} must be a number of percent (got {value!r})") from exc
    if not share.is_finite() or not 0 < share <= 100 or share != share.quantize(Decimal("0.01")):
        raise _fail(
            f"{setting} must be more than 0 and at most 100 percent, with at most 2 decimals "
            f"(got {value!r})"
        )
    return share


def default_variants(replicas) -> list[dict]:
    """Today's pair: v1 (``replicas``) on the default route, v2 (debug) on the debug header."""
    return [
        {"name": "v1", "replicas": replicas, "route": "default"},
        {
            "name": "v2",
            "replicas": 1,
            "debug": True,
            "route": {"header": DEBUG_HEADER, "value": DEBUG_VALUE},
        },
    ]


def _route(raw, where: str) -> dict:
    """{"kind": default|header|weight|shadow, ...} from a variant's ``route``."""
    if raw == "default":
        return {"kind": "default"}
    if not isinstance(raw, dict):
        raise _fail(
            f"{where}.route must be default, {{header: NAME, value: VALUE}}, {{weight: PERCENT}} "
            f"or {{shadow: PERCENT}} (got {raw!r})"
        )
    kinds = [k for k in ("header", "weight", "shadow") if k in raw]
    if len(kinds) != 1:
        raise _fail(f"{where}.route must name one of header, weight or shadow (got {sorted(raw)})")
    kind = kinds[0]
    allowed = {"header": {"header", "value"}, "weight": {"weight", "sticky"}, "shadow": {"shadow"}}
    extra = sorted(set(raw) - allowed[kind])
    if extra:
        raise _fail(
            f"{where}.route: {extra} do not go with {kind} (allowed: {sorted(allowed[kind])})"
        )
    if kind == "header":
        header, value = raw.get("header"), raw.get("value")
        if not isinstance(header, str) or not _HEADER_RE.match(header):
            raise _fail(f"{where}.route.header must be an HTTP header name (got {header!r})")
        if not isinstance(value, str) or not _VALUE_RE.match(value):
            raise _fail(
                f"{where}.route.value must be the exact header value, visible ASCII without "
                f"quotes, backslashes, $, ;, braces or a leading ~ (got {value!r})"
            )
        return {"kind": "header", "header": header, "value": value}
    if kind == "weight":
        sticky = raw.get("sticky", False)
        if not isinstance(sticky, bool):
            raise _fail(f"{where}.route.sticky must be true or false (got {sticky!r})")
        return {
            "kind": "weight",
            "weight": str(_percent(raw["weight"], f"{where}.route.weight")),
            "sticky": sticky,
        }
    return {"kind": "shadow", "shadow": str(_percent(raw["shadow"], f"{where}.route.shadow"))}


def _variants(raw, default_model: str) -> list[dict]:
    """Validated, normalised variants (slots not yet given)."""
    if not isinstance(raw, list) or not raw:
        raise _fail(f"mlgate_variants must be a non-empty list of variants (got {raw!r})")
    out: list[dict] = []
    for i, v in enumerate(raw):
        where = f"mlgate_variants[{i}]"
        if not isinstance(v, dict):
            raise _fail(f"{where} must be a mapping with name, replicas and route (got {v!r})")
        unknown = sorted(set(v) - VARIANT_KEYS)
        if unknown:
            raise _fail(f"{where} has unknown keys {unknown} (known: {sorted(VARIANT_KEYS)})")
        name = v.get("name")
        if not isinstance(name, str) or len(name) > 20 or not _NAME_RE.match(name):
            raise _fail(
                f"{where}.name must be 1-20 lowercase letters and digits in words joined by "
                f"single hyphens, starting with a letter (got {name!r})"
            )
        where = f"variant {name}"
        model = v.get("model", default_model)
        if isinstance(model, int) and not isinstance(model, bool):
            model = str(model)
        if not isinstance(model, str) or not _MODEL_RE.match(model):
            raise _fail(
                f"{where}: model must be @alias, a version number or latest (got {model!r})"
            )
        debug = v.get("debug", False)
        if not isinstance(debug, bool):
            raise _fail(f"{where}: debug must be true or false (got {debug!r})")
        if "route" not in v:
            raise _fail(f"{where} has no route (default, header, weight or shadow)")
        out.append(
            {
                "name": name,
                "model": model,
                "debug": debug,
                "replicas": _int(v.get("replicas", 1), f"{where}: replicas"),
                "route": _route(v["route"], where),
                "slot": None if v.get("slot") is None else _int(v["slot"], f"{where}: slot"),
            }
        )
    _check_routes(out)
    return out


def _check_routes(variants: list[dict]) -> None:
    names = [v["name"] for v in variants]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise _fail(f"mlgate_variants: variant names must be unique ({', '.join(dup)} repeated)")
    defaults = [v["name"] for v in variants if v["route"]["kind"] == "default"]
    if not defaults:
        raise _fail(
            "mlgate_variants: no variant has route: default (the requests no other route takes "
            "need one)"
        )
    if len(defaults) > 1:
        raise _fail(
            f"mlgate_variants: one default route only, not {len(defaults)} ({', '.join(defaults)})"
        )
    seen: dict[tuple[str, str], str] = {}
    for v in variants:
        r = v["route"]
        if r["kind"] != "header":
            continue
        # nginx reads $http_<name>: header names differing in case or -/_ are the same header
        key = (r["header"].lower().replace("_", "-"), r["value"])
        if key in seen:
            raise _fail(
                f"mlgate_variants: {seen[key]} and {v['name']} both route "
                f"{r['header']}: {r['value']}"
            )
        seen[key] = v["name"]
    weighted = [
        (v["name"], Decimal(v["route"]["weight"]))
        for v in variants
        if v["route"]["kind"] == "weight"
    ]
    total = sum((w for _, w in weighted), Decimal(0))
    if total > 100:
        shares = ", ".join(f"{n} {w}" for n, w in weighted)
        raise _fail(f"mlgate_variants: the weights sum to {total} % ({shares}): at most 100")
    for v in variants:
        if v["debug"] and v["route"]["kind"] == "shadow":
            raise _fail(
                f"variant {v['name']}: a shadow's answers are discarded, debug makes no sense"
            )


def routing_plan(variants: list[dict]) -> dict:
    """The gateway's routing, in precedence order: an exact header match, then the weighted
    split, then the default route; shadows mirror a sample of what the default route takes.

    * ``headers``: [{variant, header, var (nginx's $http_ name), value, regex (the exact,
      case-sensitive match for nginx's map)}], in list order;
    * ``sticky``: [{variant, percent}] of the sticky key's hash space (the client id header,
      else the basic-auth user): a client keeps its variant;
    * ``split``: [{variant, percent}] of the request id's hash space, taken by the requests the
      sticky split left: percent = weight * 100 / (100 - sticky total), rounded down to nginx's
      0.01, so each variant's share is its weight within 0.01 %;
    * ``default``: the default route's variant;
    * ``shadows``: [{variant, percent}], each an independent sample of the default route's
      requests.
    """
    headers = [
        {
            "variant": v["name"],
            "header": v["route"]["header"],
            "var": "http_" + v["route"]["header"].lower().replace("-", "_"),
            "value": v["route"]["value"],
            # nginx's map compares plain strings case-insensitively: a case-sensitive regex
            # is the exact match
            "regex": "^" + re.escape(v["route"]["value"]) + "$",
        }
        for v in variants
        if v["route"]["kind"] == "header"
    ]
    weighted = [v for v in variants if v["route"]["kind"] == "weight"]
    sticky = [
        {"variant": v["name"], "percent": v["route"]["weight"]}
        for v in weighted
        if v["route"]["sticky"]
    ]
    taken = sum((Decimal(s["percent"]) for s in sticky), Decimal(0))
    split = []
    if taken < 100:
        for v in weighted:
            if v["route"]["sticky"]:
                continue
            share = (Decimal(v["route"]["weight"]) * 100 / (100 - taken)).quantize(
                Decimal("0.01"), rounding=ROUND_DOWN
            )
            split.append({"variant": v["name"], "percent": str(share)})
    return {
        "headers": headers,
        "sticky": sticky,
        "split": split,
        "default": next(v["name"] for v in variants if v["route"]["kind"] == "default"),
        "shadows": [
            {"variant": v["name"], "percent": v["route"]["shadow"]}
            for v in variants
            if v["route"]["kind"] == "shadow"
        ],
    }


def _give_slots(variants: list[dict]) -> None:
    """The default route's variant has slot 0; the others keep the slot they name, the rest
    take the free slots in list order."""
    taken: dict[int, str] = {}
    for v in variants:
        if v["route"]["kind"] == "default":
            if v["slot"] not in (None, 0):
                raise _fail(f"variant {v['name']}: the default route's variant has no slot")
            v["slot"] = 0
        elif v["slot"] is not None:
            if not 1 <= v["slot"] <= MAX_SLOT:
                raise _fail(
                    f"variant {v['name']}: slot must be between 1 and {MAX_SLOT} (got {v['slot']})"
                )
            if v["slot"] in taken:
                raise _fail(
                    f"variants {taken[v['slot']]} and {v['name']} both have slot {v['slot']}"
                )
            taken[v["slot"]] = v["name"]
    free = (s for s in range(1, MAX_SLOT + 1) if s not in taken)
    for v in variants:
        if v["slot"] is None:
            v["slot"] = next(free, None)
            if v["slot"] is None:
                raise _fail(
                    f"mlgate_variants: more than {MAX_SLOT} variants besides the default route's"
                )


def mlgate_api_topology(settings: dict) -> dict:
    """{"variants": [...], "routes": {...}, "v1": [...], "v2": [...]} from the settings (see
    REQUIRED): stack (name), replicas (v1's, when no variants are given), nodes (API nodes in
    order), gateway (the gateway host), internal ({node: address the gateway host reaches it
    at}), subnet and api_subnet (the two /24s), network and api_network (their Docker names),
    api_port (inside the containers), port_base (node ports of the API containers on nodes
    other than the gateway host); optional: variants (mlgate_variants), model (the model of a
    variant that names none, default @stable)."""
    missing = [key for key in REQUIRED if key not in settings]
    if missing:
        raise _fail(f"mlgate_api_topology: missing settings {missing}")
    stack = str(settings["stack"])
    nodes = list(settings["nodes"] or [])
    gateway = str(settings["gateway"])
    internal = dict(settings["internal"] or {})
    api_port = _int(settings["api_port"], "mlgate_api_port")
    port_base = _int(settings["port_base"], "mlgate_api_node_port_base")
    prefix = _prefix(settings["subnet"], "mlgate_network_subnet")
    api_prefix = _prefix(settings["api_subnet"], "mlgate_api_network_subnet")
    given = settings.get("variants")
    if given is None:
        replicas = _int(settings["replicas"], "mlgate_api_v1_replicas")
        given = default_variants(replicas)
    variants = _variants(given, str(settings.get("model") or "@stable"))
    if not nodes:
        raise _fail("mlgate_api_nodes is empty: name at least one API node")
    if not 1 <= port_base <= 65535 - V2_PORT_OFFSET - 1:
        raise _fail(
            f"mlgate_api_node_port_base must be between 1 and {65535 - V2_PORT_OFFSET - 1} "
            f"(got {port_base}): the node ports are base + 1 .. base + {V2_PORT_OFFSET + 1}"
        )
    _give_slots(variants)

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

    default = next(v for v in variants if v["slot"] == 0)
    for v in variants:
        n = v["replicas"]
        if v["slot"] == 0:
            if not 1 <= n <= MAX_V1_REPLICAS:
                setting = (
                    "mlgate_api_v1_replicas"
                    if settings.get("variants") is None
                    else (f"variant {v['name']}: replicas")
                )
                raise _fail(
                    f"{setting} must be between 1 and {MAX_V1_REPLICAS} (got {n}): replica i "
                    f"gets the address .(10 + i), and .{V2_ADDRESS} is v2's"
                )
            first_host, first_port = V1_FIRST, port_base + 1
        else:
            if not 1 <= n <= BLOCK:  # (a lone replica's surge twin takes its second address)
                raise _fail(
                    f"variant {v['name']}: replicas must be between 1 and {BLOCK} (got {n}): "
                    f"each variant besides the default route's has {BLOCK} addresses"
                )
            first_host = V2_ADDRESS if v["slot"] == 1 else 30 + BLOCK * v["slot"]
            first_port = port_base + V2_PORT_OFFSET + BLOCK * (v["slot"] - 1)
        last_port = first_port + (BLOCK - 1 if v["slot"] else n - 1)
        if last_port > 65535:
            raise _fail(
                f"variant {v['name']} (slot {v['slot']}) needs node ports up to {last_port}: "
                "lower mlgate_api_node_port_base"
            )
        v["instances"] = []
        # round robin: the default route's replicas from the first node, then each slot's
        # from the node after them, shifted by its slot (stable when other variants change)
        start = 0 if v["slot"] == 0 else default["replicas"] + v["slot"] - 1
        for i in range(n):
            node = nodes[(start + i) % len(nodes)]
            v["instances"].append(
                place(f"{stack}-api-{v['name']}-{i + 1}", node, first_host + i, first_port + i)
            )
        if n == 1 and v["slot"] != 0:
            twin = place(
                f"{stack}-api-{v['name']}-1-surge",
                v["instances"][0]["node"],
                first_host + 1,
                first_port + 1,
            )
            v["instances"][0]["surge"] = {
                key: twin[key] for key in ("name", "address", "network", "publish", "endpoint")
            }
    debug_route = [
        r
        for v in variants
        if v["route"]["kind"] == "header"
        and v["route"]["header"].lower() == DEBUG_HEADER.lower()
        and v["route"]["value"] == DEBUG_VALUE
        for r in v["instances"]
    ]
    return {
        "variants": variants,
        # every API container, the default route's first, then the others in list order, with
        # what the api role needs to run it: its variant's name, debug flag, model and
        # reference model (a shadow's: the default route's model, which it compares with)
        "instances": [
            {
                **r,
                "variant": v["name"],
                "debug": v["debug"],
                "model": v["model"],
                "reference": default["model"] if v["route"]["kind"] == "shadow" else "",
            }
            for v in sorted(variants, key=lambda v: v["slot"] != 0)
            for r in v["instances"]
        ],
        "routes": routing_plan(variants),
        # the gateway's upstream group of each variant: its replicas, and its surge twin as a
        # backup (nginx sends there only while the variant's own replica is unavailable)
        "upstreams": [
            {
                "variant": v["name"],
                "servers": [r["endpoint"] for r in v["instances"]],
                "backup": [r["surge"]["endpoint"] for r in v["instances"] if "surge" in r],
            }
            for v in variants
        ],
        "v1": next(v["instances"] for v in variants if v["slot"] == 0),
        "v2": debug_route,
    }


class FilterModule:
    def filters(self):
        return {"mlgate_api_topology": mlgate_api_topology}
