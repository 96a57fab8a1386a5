"""A changed gateway container takes over from the running one under load, losing no request.

nginx runs in the network namespace of a container that only holds the gateway's network (its
addresses, the published ports). A gateway container whose image or settings changed is
started beside the running one, on the same listeners (``listen ... reuseport``); once it has
bound them (its pid file), the old one gets SIGQUIT: it stops accepting, finishes what it
serves, and the kernel hands the connections queued on its listeners to the new one
(``net.ipv4.tcp_migrate_req``). What a client can still see is what a reload does: its idle
keep-alive connection closed by the old nginx, and a request written on it at that instant
retried once (tests/loadgen.py counts these retries).

Run by the nginx scenario's verify (``MLGATE_E2E_REUSE=1``, its stack); the default scenario's
e2e suite leaves it out.
"""

from __future__ import annotations

import time
from pathlib import Path

import docker
import pytest

from .conftest import Stack, assert_both_cohorts_served, run_playbook, stack_settings, steady_load

NEW_TASK = "Start the new gateway container on the same listeners"


def _refreshed_copy(engine: docker.DockerClient, base: str, copy: str) -> None:
    """A copy of the base image refreshed as `make upgrade` refreshes the base image (the same
    tasks: site.yml's base_image tag with docker_host_base_refresh): a new image, one layer."""
    engine.images.get(base).tag(copy)
    done = run_playbook(
        "site.yml", "--tags", "base_image",
        "-e", "docker_host_base_refresh=true", "-e", f"docker_host_base_image={copy}",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:]
    refreshed = engine.images.get(copy)
    assert refreshed.id != engine.images.get(base).id, "the refresh gave no new image"
    assert len(refreshed.attrs["RootFS"]["Layers"]) == 1, "the refreshed image is not flattened"


@pytest.mark.skipif(
    not Path("/proc/sys/net/ipv4/tcp_migrate_req").exists(),
    reason="no net.ipv4.tcp_migrate_req (Linux < 5.14): the gateway is replaced in place",
)
def test_gateway_on_a_refreshed_base_takes_over_under_load_losing_no_request(
    stack: Stack, pacer
) -> None:
    engine = docker.from_env()
    settings = stack_settings()
    base = settings.get("mlgate_base_image", "mlgate-base:bookworm")
    name = f"{stack.name}-nginx"
    before = engine.containers.get(name)
    netns = engine.containers.get(f"{name}-netns")
    other_base = f"{stack.name}-base:refreshed"
    _refreshed_copy(engine, base, other_base)
    pacer.refill()
    load = steady_load(stack)
    load.start()
    try:
        time.sleep(1)
        there = run_playbook("site.yml", "--tags", "nginx", "-e", f"nginx_base_image={other_base}")
        middle = engine.containers.get(name)
        time.sleep(1)
        back = run_playbook("site.yml", "--tags", "nginx")
        time.sleep(1)
    finally:
        load.stop()
        pacer.refill()
    print(f"two gateway swaps (a new image, then the previous one): {load.report()}")
    after = engine.containers.get(name)
    try:
        assert there.returncode == 0, there.stdout[-4000:]
        assert back.returncode == 0, back.stdout[-4000:]
        # each run started a new container beside the old one, which then left
        assert NEW_TASK in there.stdout and NEW_TASK in back.stdout
        assert len({before.id, middle.id, after.id}) == 3, "the gateway container was not replaced"
        assert middle.image.id != before.image.id, "the new base image gave no new gateway image"
        assert after.image.id == before.image.id, "the way back did not return to the first image"
        # the network holder stayed, and no second gateway container is left
        assert engine.containers.get(f"{name}-netns").id == netns.id
        assert not engine.containers.list(all=True, filters={"name": f"^{name}-next$"})
        for c in (middle, after):
            assert c.attrs["HostConfig"]["NetworkMode"] == f"container:{netns.id}"
        # an idle keep-alive connection closed by each retiring nginx: at most one retry each
        load.assert_no_failure(max_retried=2)
        assert_both_cohorts_served(load)
    finally:
        for tag in {*middle.image.tags, other_base} - set(after.image.tags):
            engine.images.remove(tag)
