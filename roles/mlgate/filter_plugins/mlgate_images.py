"""Ansible filter of the mlgate role: build each image once across the hosts, ship it to the rest.

``mlgate_image_distribution(plans, hosts)``: ``plans`` maps each host to the images it needs,
``{key: {"ref": "name:tag", "present": bool}}`` (the tag is the hash of the build context and
base image, so two hosts that need the same ref need the same bytes); ``hosts`` is the play's
order. For each ref some host lacks:

- a host that has it already is the source; every host that lacks it gets a copy;
- else the first host (in ``hosts`` order) that needs it builds it, and the others get a copy
  of that build.

Returns ``{"build": {host: [key, ...]}, "ship": [{"ref", "source", "targets": [...]}, ...]}``,
refs in the order they are first needed. A host with no plan is an error (the play would
run it with no image).
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError


def mlgate_image_distribution(plans: dict, hosts: list) -> dict:
    missing = [host for host in hosts if not isinstance(plans.get(host), dict)]
    if missing:
        raise AnsibleFilterError(f"no image plan for host(s) {', '.join(missing)}")
    order: list[str] = []
    needed: dict[str, list[tuple[str, str]]] = {}  # ref -> [(host, key)] lacking it
    holders: dict[str, list[str]] = {}  # ref -> hosts that have it
    for host in hosts:
        for key, plan in plans[host].items():
            try:
                ref, present = str(plan["ref"]), bool(plan["present"])
            except (KeyError, TypeError) as exc:
                raise AnsibleFilterError(
                    f"image plan {key!r} of {host} is malformed: {plan!r}"
                ) from exc
            if ref not in needed:
                order.append(ref)
                needed[ref], holders[ref] = [], []
            (holders[ref] if present else needed[ref]).append((host, key))
    build: dict[str, list[str]] = {host: [] for host in hosts}
    ship = []
    for ref in order:
        lacking = list(dict.fromkeys(host for host, _ in needed[ref]))
        if not lacking:
            continue
        if holders[ref]:
            source = holders[ref][0][0]
        else:
            source = lacking.pop(0)
            build[source].append(next(key for host, key in needed[ref] if host == source))
        if lacking:
            ship.append({"ref": ref, "source": source, "targets": lacking})
    return {"build": build, "ship": ship}


class FilterModule:
    def filters(self):
        return {"mlgate_image_distribution": mlgate_image_distribution}
