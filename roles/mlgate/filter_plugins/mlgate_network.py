"""Ansible filters of the mlgate role: the stack's second network.

``mlgate_api_subnet``: the default subnet of the API network (internal: Docker forwards
nothing out of it) of a stack whose main network is ``subnet``. It is a /24 in the same
private range, found by flipping one bit, so that every stack gets its own pair without a
second setting: 10.B.C.0/24 -> 10.(B xor 1).C.0/24, 172.B.C.0/24 (B 16-31) ->
172.(B xor 1).C.0/24, 192.168.C.0/24 -> 192.168.(C xor 128).0/24. Anything else is refused
with a sentence that names the setting to give instead (``mlgate_api_network_subnet``).
"""

from __future__ import annotations

import ipaddress

from ansible.errors import AnsibleFilterError


def mlgate_api_subnet(subnet: str) -> str:
    try:
        net = ipaddress.IPv4Network(str(subnet), strict=True)
    except ValueError as exc:
        raise AnsibleFilterError(
            f"mlgate_network_subnet must be an IPv4 /24 like 172.30.57.0/24 (got {subnet!r}: {exc})"
        ) from exc
    if net.prefixlen != 24:
        raise AnsibleFilterError(
            f"mlgate_network_subnet must be a /24 (got {subnet!r}): every container has a fixed "
            "address in it"
        )
    a, b, c, _ = net.network_address.packed
    if a == 10 or (a == 172 and 16 <= b <= 31):
        b ^= 1
    elif a == 192 and b == 168:
        c ^= 128
    else:
        raise AnsibleFilterError(
            f"mlgate_network_subnet {subnet} is not in a private range (10/8, 172.16/12, "
            "192.168/16), so no API network subnet can be derived from it: set "
            "mlgate_api_network_subnet to a free /24"
        )
    return f"{a}.{b}.{c}.0/24"


class FilterModule:
    def filters(self):
        return {"mlgate_api_subnet": mlgate_api_subnet}
