"""Hostile input through the gateway: every answer is a deliberate 4xx, never a 5xx, and a
paced legitimate client keeps being served, slow clients (slowhttptest) included."""

from __future__ import annotations

import base64
import collections
import csv
import hashlib
import io
import ipaddress
import json
import os
import re
import socket
import ssl
import subprocess
import time
from pathlib import Path

import docker
import httpx
import pytest

from .conftest import Stack, gateway_log, stack_settings

JSON = {"Content-Type": "application/json"}

HOSTILE = [
    # (description, request kwargs, expected status)
    ("invalid JSON", {"content": b'{"sentence": '}, 400),
    ("NaN", {"content": b'{"sentence": NaN}'}, 400),
    ("Infinity in an extra field", {"content": b'{"sentence": "x", "n": Infinity}'}, 400),
    ("non-UTF-8", {"content": b'{"sentence": "\xff\xfe"}'}, 400),
    ("not an object", {"content": b'["sentence"]'}, 422),
    ("number instead of text", {"content": b'{"sentence": 42}'}, 422),
    ("whitespace only", {"content": b'{"sentence": "  \\n\\t "}'}, 422),
    ("unknown field", {"content": b'{"sentence": "x", "sentance": "y"}'}, 422),
    ("over 5,000 characters", {"content": b'{"sentence": "' + b"a" * 5001 + b'"}'}, 422),
    ("oversized body", {"content": b'{"sentence": "' + b"a" * 70_000 + b'"}'}, 413),
    (
        "wrong content type",
        {"content": b"sentence=x", "headers": {"Content-Type": "text/plain"}},
        415,
    ),
]


@pytest.mark.parametrize(("what", "kwargs", "status"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_bad_bodies_get_their_4xx(client, stack: Stack, pacer, what, kwargs, status) -> None:
    pacer.wait()
    kwargs = dict(kwargs)
    headers = {**JSON, **kwargs.pop("headers", {})}
    r = client.post("/predict", auth=(stack.user, stack.password), headers=headers, **kwargs)
    assert r.status_code == status, (what, r.text[:200])
    assert r.json()["error"], what


def test_10kb_header_is_refused_with_400(client, stack: Stack, pacer) -> None:
    pacer.wait()
    r = client.post(
        "/predict",
        json={"sentence": "x"},
        auth=(stack.user, stack.password),
        headers={"X-Padding": "a" * 10_240},
    )
    assert r.status_code == 400
    assert r.json()["error"] == "request_header_too_large"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_wrong_methods_get_405(client, pacer, method: str) -> None:
    pacer.wait()
    r = client.request(method, "/predict")
    assert r.status_code == 405


def test_password_guessing_burst_is_rate_limited_then_service_recovers(
    client, stack: Stack, pacer, predict
) -> None:
    pacer.refill()
    start = time.monotonic()
    statuses = [
        client.post("/predict", json={"sentence": "x"}, auth=("mlgate", f"guess-{i}")).status_code
        for i in range(60)
    ]
    elapsed = time.monotonic() - start
    assert set(statuses) <= {401, 429}, statuses
    # only the burst (20 + 1) and what the 10 r/s rate refills meanwhile ever reach auth; the
    # requests are sequential, so nginx saw them within the client's `elapsed`: every other
    # guess is refused before its password is even looked at
    reached_auth = 21 + int(elapsed * 10)
    assert statuses.count(401) <= reached_auth, (statuses.count(401), elapsed)
    assert statuses.count(429) >= 60 - reached_auth, (statuses.count(429), elapsed)
    pacer.refill()
    assert predict().status_code == 200


@pytest.mark.parametrize("line", [b" P", b"GARBAGE"])
def test_malformed_request_line_gets_json_400(stack: Stack, line: bytes) -> None:
    """A request line nginx cannot parse (the TLS scanners send some) gets the JSON 400; an
    error page in a named location needs a parsed URI and used to answer 500."""
    port = int(stack.https.rsplit(":", 1)[1])
    ctx = ssl.create_default_context(cafile=str(stack.ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as s,
    ):
        s.sendall(line + b"\r\n\r\n")
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert b"content-type: application/json" in head.lower(), head
    assert json.loads(body)["error"] == "bad_request", body


# slowhttptest (Debian) against the gateway's HTTPS port: (mode flag, extra arguments)
SLOW_MODES = {
    # Slowloris: headers never finish (a header line every 5 s); nginx's 10 s
    # client_header_timeout must cut them, and they never reach the rate limit.
    "slow headers": ("-H", []),
    # R-U-Dead-Yet: valid authenticated POSTs (credentials through slowhttptest's cookie
    # option, its only way to add a header) whose 8 KiB body trickles in every 5 s.
    "slow body": ("-B", ["-f", "application/json", "-s", "8192"]),
}
SLOW_CONNECTIONS = 300
SLOW_RATE = 100  # connections opened per second: all open after 3 s
SLOW_SECONDS = int(os.environ.get("MLGATE_E2E_SLOW_SECONDS", "12"))  # make chaos: longer


# The attacker runs from its own address, as a real one would: a throwaway container on the
# stack's network (fixed address .250, unused by the stack), built from the stack's base image
# with Debian's slowhttptest, attacking the gateway's container address. Clients on 127.0.0.1
# all reach nginx from one address (Docker's userland proxy) and would share one rate-limit
# bucket and connection limit with it: that would test two local processes sharing a bucket,
# not "an attacker does not starve other clients".
ATTACKER_DOCKERFILE = """\
FROM {base}
RUN apt-get -o Acquire::Retries=5 update \\
 && DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Retries=5 install -y \\
      --no-install-recommends slowhttptest \\
 && rm -rf /var/lib/apt/lists/*
"""


@pytest.fixture(scope="session")
def attacker_image() -> str:
    """mlgate-testclient:<hash of its Dockerfile>, built once (a cache like the base image)."""
    base = stack_settings().get("mlgate_base_image", "mlgate-base:bookworm")
    dockerfile = ATTACKER_DOCKERFILE.format(base=base).encode()
    tag = f"mlgate-testclient:{hashlib.sha256(dockerfile).hexdigest()[:12]}"
    engine = docker.from_env()
    try:
        engine.images.get(tag)
    except docker.errors.ImageNotFound:
        engine.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True, pull=False)
    return tag


@pytest.mark.parametrize("mode", sorted(SLOW_MODES))
def test_slowhttptest_does_not_starve_a_paced_client(
    stack: Stack, predict, pacer, tmp_path: Path, attacker_image: str, mode: str
) -> None:
    """300 slow connections for SLOW_SECONDS from an attacker with its own address, next to a
    client paced at 5 r/s on 127.0.0.1: the client only gets 200 from the first second of the
    attack to its end, slowhttptest's own probe finds the service up every second, no 5xx."""
    flag, extra = SLOW_MODES[mode]
    token = base64.b64encode(f"{stack.user}:{stack.password}".encode()).decode()
    settings = stack_settings()
    prefix = settings["mlgate_network_subnet"].split("/")[0].rsplit(".", 1)[0]
    name = f"{stack.name}-test-attacker"
    cmd = [
        "docker", "run", "--rm", "--name", name,
        "--label", f"io.mlgate.stack={stack.name}",
        "--network", f"{stack.name}-net", "--ip", f"{prefix}.250",
        "-v", f"{tmp_path}:/out", attacker_image,
        "slowhttptest", flag, *extra,
        "-c", str(SLOW_CONNECTIONS), "-r", str(SLOW_RATE), "-i", "5", "-l", str(SLOW_SECONDS),
        "-p", "3", "-t", "POST", "-u", f"https://{prefix}.10/predict",
        "-j", f"mlgate=1\r\nAuthorization: Basic {token}",
        "-g", "-o", "/out/slow",
    ]  # fmt: skip
    pacer.refill()
    started = time.time()
    attack = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    codes: collections.Counter = collections.Counter()
    errors: list[str] = []
    try:
        while attack.poll() is None:
            try:
                codes[predict().status_code] += 1
            except httpx.HTTPError as exc:
                errors.append(repr(exc))
            time.sleep(0.1)
        output = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", attack.communicate(timeout=30)[0])
    finally:
        if attack.poll() is None:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
            attack.wait(30)
    time.sleep(1.5)  # the access log is flushed every second
    statuses = collections.Counter(r["status"] for r in gateway_log(stack.name, started))
    with (tmp_path / "slow.csv").open() as f:
        rows = [{k: int(v) for k, v in row.items()} for row in csv.DictReader(f)]
    found = re.search(r"Exit status: (.*)", output)
    exit_status = found.group(1).strip() if found else None
    held = max(r["Connected"] for r in rows)
    closed = rows[-1]["Closed"]
    up = sum(1 for r in rows if r["Service Available"] > 0)
    print(
        f"slowhttptest {mode}: {SLOW_CONNECTIONS} connections for {SLOW_SECONDS} s, "
        f"{held} held at once, {closed} closed by the server by the end "
        f"({exit_status}); probe: service "
        f"available {up}/{len(rows)} s; paced client {dict(codes)}, {len(errors)} transport "
        f"errors; gateway statuses {dict(sorted(statuses.items()))}"
    )
    # it stops at its time limit, or earlier once the server has closed every connection
    assert exit_status in {"Hit test time limit", "No open connections left"}, output[-2000:]
    assert held >= SLOW_CONNECTIONS * 0.9, rows
    assert up == len(rows), rows
    if flag == "-H":  # client_header_timeout (10 s) cut the first connections before the end
        assert closed > 0, rows
    assert errors == []
    assert sum(codes.values()) >= 20 and set(codes) == {200}, codes
    assert not [s for s in statuses if s >= 500], statuses


def test_spoofed_experiment_headers_never_reach_v2(predict) -> None:
    for value in [
        "debug\x00",
        "debug;",
        "DEBUG",
        "%64ebug",
        "debug\u00a0".encode().decode("latin-1"),
    ]:
        try:
            r = predict(headers={"X-Experiment-Group": value})
        except (httpx.LocalProtocolError, UnicodeEncodeError):
            continue  # the client refuses to send it at all
        assert r.status_code < 500
        if r.status_code == 200:
            assert r.headers["x-mlgate-variant"] == "v1", repr(value)


# --- network segmentation ---------------------------------------------------------------

# Run inside an API container: try every (name, host, port) given as JSON in argv[1] at once
# (2 s each), print {name: "open" | the error}; also whether an outside name resolves.
_PROBE = r"""
import json, socket, sys, threading
out = {}
def attempt(name, host, port):
    try:
        socket.create_connection((host, port), timeout=2).close()
        out[name] = "open"
    except OSError as exc:
        out[name] = type(exc).__name__ + ": " + str(exc)
threads = [threading.Thread(target=attempt, args=t) for t in json.loads(sys.argv[1])]
[t.start() for t in threads]
[t.join() for t in threads]
try:
    socket.getaddrinfo("deb.debian.org", 443)
    out["outside name"] = "resolved"
except OSError as exc:
    out["outside name"] = type(exc).__name__
print(json.dumps(out))
"""


def test_an_api_container_reaches_nothing_but_what_it_needs(stack: Stack, predict) -> None:
    """From inside the API container that parses untrusted input, measured: no outside name, no
    connection to the monitoring plane (Prometheus and its admin endpoints, Alertmanager,
    Grafana, both exporters), to the gateway's listeners (stub_status, 80, 443) on either of its
    addresses, or to the host itself; and meanwhile the gateway serves both cohorts, and
    Prometheus still scrapes every replica (tests/e2e/test_monitoring.py). The container's
    network is internal: Docker drops whatever it sends outside its subnet (no forwarding, no
    NAT), the rule the stack-network addresses above run into (a routing entry to the bridge
    exists all the same, Docker 20.10 puts one there)."""
    engine = docker.from_env()
    front, api_net = f"{stack.name}-net", f"{stack.name}-api-net"

    def address(container: str, network: str) -> str:
        c = engine.containers.get(f"{stack.name}-{container}")
        return c.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]

    # The host's own address on the API network's bridge, and a port the test listens on there
    # (on every address of the host): a container must not reach it.
    # (Docker records no gateway for an internal network, but still gives the host the subnet's
    # first address on its bridge.)
    api_ipam = engine.networks.get(api_net).attrs["IPAM"]["Config"][0]
    host = api_ipam.get("Gateway") or str(next(ipaddress.ip_network(api_ipam["Subnet"]).hosts()))
    front_subnet = engine.networks.get(front).attrs["IPAM"]["Config"][0]["Subnet"]
    subnet_prefix = front_subnet.rsplit(".", 1)[0]
    listener = socket.create_server(("0.0.0.0", 0))
    host_port = listener.getsockname()[1]
    targets = [
        ("prometheus", address("prometheus", front), 9090),
        ("prometheus on the API network", address("prometheus", api_net), 9090),
        ("alertmanager", address("alertmanager", front), 9093),
        ("exporter", address("exporter", front), 9113),
        ("blackbox exporter", address("blackbox", front), 9115),
        # Grafana's fixed address (.42), whether or not its image could be had here
        ("grafana", subnet_prefix + ".42", 3000),
        ("stub_status", address("nginx-netns", front), 8081),
        ("gateway 443", address("nginx-netns", front), 443),
        ("stub_status on the API network", address("nginx-netns", api_net), 8081),
        ("gateway 443 on the API network", address("nginx-netns", api_net), 443),
        ("gateway 80 on the API network", address("nginx-netns", api_net), 80),
        ("the host", host, host_port),
    ]
    victim = engine.containers.get(f"{stack.name}-api-v1-1")
    assert list(victim.attrs["NetworkSettings"]["Networks"]) == [api_net]
    assert engine.networks.get(api_net).attrs["Internal"] is True
    try:
        code, out = victim.exec_run(["python", "-c", _PROBE, json.dumps(targets)])
    finally:
        listener.close()
    assert code == 0, out
    seen = json.loads(out)
    print(json.dumps(seen, indent=1))
    assert seen.pop("outside name") != "resolved"
    assert {name: r for name, r in seen.items() if r == "open"} == {}
    assert len(seen) == len(targets)

    # Meanwhile the gateway, which does reach the replicas, serves both cohorts.
    for headers in ({}, {"X-Experiment-Group": "debug"}):
        r = predict(headers=headers)
        assert r.status_code == 200, r.text
