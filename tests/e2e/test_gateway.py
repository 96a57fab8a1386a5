"""End-to-end checks of a stack deployed by playbooks/site.yml (see conftest.py)."""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import json
import socket
import ssl
import threading
import time
import uuid
import warnings
from pathlib import Path

import docker
import httpx
import pytest

from .conftest import ROOT, Stack, gateway_log, recap, run_playbook, stack_settings

# --- deployment -------------------------------------------------------------------------


def test_second_run_changes_nothing(stack: Stack) -> None:
    if stack.second_run is None:
        pytest.skip("stack reused (MLGATE_E2E_REUSE=1)")
    counts = recap(stack.second_run.stdout)
    print(f"first run {stack.first_run_seconds:.0f} s; second run recap {counts}")
    changed = [ln for ln in stack.second_run.stdout.splitlines() if ln.startswith("changed:")]
    assert counts["changed"] == 0, f"second run changed things: {changed}"
    assert counts["failed"] == 0


def test_containers_healthy_and_only_gateway_published(stack: Stack) -> None:
    """The API containers and the gateway are healthy and publish nothing; the gateway's
    network holder (nginx runs in its network namespace) publishes 80 and 443 on 127.0.0.1."""
    engine = docker.from_env()
    containers = [
        c
        for c in engine.containers.list(
            all=True, filters={"label": f"io.mlgate.stack={stack.name}"}
        )
        # monitoring: its own tests
        if c.labels.get("io.mlgate.component") in ("api", "nginx", "nginx-netns")
    ]
    names = sorted(c.name for c in containers)
    expected = sorted(
        [f"{stack.name}-api-v1-{i}" for i in (1, 2, 3)]
        + [f"{stack.name}-api-v2-1", f"{stack.name}-nginx", f"{stack.name}-nginx-netns"]
    )
    assert names == expected
    netns = engine.containers.get(f"{stack.name}-nginx-netns")
    assert netns.attrs["State"]["Running"] is True
    ports = {k: v for k, v in (netns.attrs["NetworkSettings"]["Ports"] or {}).items() if v}
    bound = sorted((b["HostIp"], b["HostPort"]) for v in ports.values() for b in v)
    settings = stack_settings()
    assert bound == sorted(
        ("127.0.0.1", str(settings[k])) for k in ("mlgate_http_port", "mlgate_https_port")
    )
    assert netns.attrs["Config"]["User"] == "65534:65534"
    assert netns.attrs["HostConfig"]["ReadonlyRootfs"] is True
    for c in containers:
        if c.name == netns.name:
            continue
        assert c.attrs["State"]["Health"]["Status"] == "healthy", c.name
        ports = {k: v for k, v in (c.attrs["NetworkSettings"]["Ports"] or {}).items() if v}
        assert ports == {}, f"{c.name} publishes {ports}"
        assert c.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
        assert c.attrs["HostConfig"]["Memory"] > 0
        if c.name.endswith("-nginx"):
            assert c.attrs["HostConfig"]["NetworkMode"] == f"container:{netns.id}"
        else:
            assert c.attrs["Config"]["User"] == "mlgate"


@pytest.mark.parametrize("port", [8000, 8081, 9113])
def test_internal_ports_not_reachable_on_host(stack: Stack, port: int) -> None:
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


# --- TLS and redirect --------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/predict", "/some/where?x=1&y=2"])
def test_http_redirects_to_https_keeping_the_path(stack: Stack, path: str) -> None:
    r = httpx.get(stack.http + path, follow_redirects=False, timeout=5)
    assert r.status_code == 301
    assert r.headers["location"] == f"{stack.https}{path}"


def _handshake(stack: Stack, version: ssl.TLSVersion, cafile: Path) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = version
        ctx.maximum_version = version
    if version < ssl.TLSVersion.TLSv1_2:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer it: the server must refuse
    port = int(stack.https.rsplit(":", 1)[1])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        ctx.wrap_socket(sock, server_hostname="localhost") as tls,
    ):
        return tls.version()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_12_and_13_accepted_and_verified_by_the_ca(stack: Stack, version) -> None:
    assert (
        _handshake(stack, version, stack.ca)
        == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
    )


def test_tls_11_refused_by_the_server(stack: Stack) -> None:
    with pytest.raises(ssl.SSLError) as err:
        _handshake(stack, ssl.TLSVersion.TLSv1_1, stack.ca)
    # The server's protocol_version alert, not a client-side refusal to offer TLS 1.1.
    assert err.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION"


def test_certificate_rejected_without_the_ca(stack: Stack) -> None:
    with pytest.raises(httpx.ConnectError):
        httpx.get(stack.https + "/health", timeout=5)  # system trust store only


def test_security_headers(predict) -> None:
    r = predict()
    assert r.status_code == 200
    assert r.headers["strict-transport-security"].startswith("max-age=")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["server"] == "nginx"  # no version
    assert len(r.headers.get_list("x-request-id")) == 1


# --- authentication ----------------------------------------------------------------------


@pytest.mark.parametrize("group", [None, "debug"])
@pytest.mark.parametrize("auth", [None, ("mlgate", "wrong-password"), ("nobody", "x")])
def test_missing_or_wrong_credentials_get_401(predict, group, auth) -> None:
    headers = {"X-Experiment-Group": group} if group else {}
    r = predict(auth=auth, headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Basic")
    assert r.json()["error"] == "unauthorized"
    assert "x-mlgate-variant" not in r.headers  # never reached an API replica


def test_valid_credentials_get_a_prediction(predict) -> None:
    r = predict("I am so happy today")
    assert r.status_code == 200
    body = r.json()
    assert list(body) == ["prediction value"]
    assert isinstance(body["prediction value"], str) and body["prediction value"]


def test_request_id_is_echoed(predict) -> None:
    r = predict(headers={"X-Request-ID": "e2e-trace-42"})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "e2e-trace-42"


def test_audit_record_holds_a_keyed_hash_of_the_sentence_never_the_sentence_or_key(
    predict, stack: Stack
) -> None:
    sentence = f"audit me {uuid.uuid4().hex[:8]}"
    request_id = f"e2e-audit-{uuid.uuid4().hex}"
    assert predict(sentence, headers={"X-Request-ID": request_id}).status_code == 200
    key = (ROOT / ".mlgate" / stack.name / "secrets" / "audit.key").read_bytes().strip()
    assert len(key) >= 32
    engine = docker.from_env()
    # the audit volume is shared by every replica on this host: any of them can read it
    reader = engine.containers.get(f"{stack.name}-api-v1-1")
    deadline = time.monotonic() + 10
    while True:
        found = reader.exec_run(
            ["sh", "-c", f"grep -h {request_id} /var/log/mlgate/predictions.jsonl*"]
        ).output.decode()
        if found.strip() or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    (record,) = [json.loads(line) for line in found.splitlines()]
    assert record["sentence_hmac_sha256"] == hmac.new(key, sentence.encode(), "sha256").hexdigest()
    assert record["audit_key_id"] == hashlib.sha256(key).hexdigest()[:12]
    assert "sentence_sha256" not in record and sentence not in found
    # the key is in no container's configuration (environment, labels, command)
    for container in engine.containers.list(filters={"label": f"io.mlgate.stack={stack.name}"}):
        assert key.decode() not in json.dumps(container.attrs), container.name


# --- load balancing and A/B routing -------------------------------------------------------


def test_all_three_v1_replicas_serve_traffic(predict, stack: Stack) -> None:
    seen = collections.Counter()
    for i in range(18):
        r = predict(f"sentence number {i}")
        assert r.status_code == 200
        assert r.headers["x-mlgate-variant"] == "v1"
        seen[r.headers["x-mlgate-replica"]] += 1
    assert set(seen) == {f"{stack.name}-api-v1-{i}" for i in (1, 2, 3)}, seen


@pytest.mark.parametrize(
    "value", [None, "DEBUG", "Debug", "debugx", "debug,x", "xdebug", "debug debug", ""]
)
def test_everything_but_exact_debug_goes_to_v1(predict, value) -> None:
    r = predict(headers={} if value is None else {"X-Experiment-Group": value})
    assert r.status_code == 200
    assert r.headers["x-mlgate-variant"] == "v1"
    assert "prediction_proba_dict" not in r.json()


def test_exact_debug_goes_to_v2_with_probabilities(predict, stack: Stack) -> None:
    r = predict("I miss you so much", headers={"X-Experiment-Group": "debug"})
    assert r.status_code == 200
    assert r.headers["x-mlgate-variant"] == "v2"
    body = r.json()
    probs = body["prediction_proba_dict"]
    assert len(probs) == 13
    assert abs(sum(probs.values()) - 1.0) < 1e-6
    assert body["prediction value"] == max(probs, key=probs.get)
    assert body["replica"] == f"{stack.name}-api-v2-1"


# --- hardening -----------------------------------------------------------------------------


def test_wrong_method_gets_json_405(client: httpx.Client, pacer) -> None:
    pacer.wait()
    r = client.get("/predict")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    assert r.json()["error"] == "method_not_allowed"


def test_unknown_path_gets_json_404_and_metrics_are_not_exposed(client: httpx.Client) -> None:
    for path in ("/", "/metrics", "/stub_status", "/docs"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert r.json()["error"] == "not_found"


def test_oversized_body_gets_413(client: httpx.Client, stack: Stack, pacer) -> None:
    pacer.wait()
    body = b'{"sentence": "' + b"a" * 70_000 + b'"}'
    r = client.post(
        "/predict",
        content=body,
        auth=(stack.user, stack.password),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 413
    assert r.json()["error"] == "payload_too_large"


def test_bad_json_gets_a_4xx_from_the_api(client: httpx.Client, stack: Stack, pacer) -> None:
    pacer.wait()
    r = client.post(
        "/predict",
        content=b"{not json",
        auth=(stack.user, stack.password),
        headers={"Content-Type": "application/json"},
    )
    assert 400 <= r.status_code < 500
    assert r.json()["error"]


# --- rate limit ----------------------------------------------------------------------------


def _fire(stack: Stack, n: int, tag: str) -> collections.Counter:
    """Open n TLS connections, then send n POSTs at once (X-Request-ID <tag>-<i>); return the
    status counts."""
    ctx = ssl.create_default_context(cafile=str(stack.ca))
    port = int(stack.https.rsplit(":", 1)[1])
    conns = []
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        conns.append(ctx.wrap_socket(sock, server_hostname="localhost"))
    token = base64.b64encode(f"{stack.user}:{stack.password}".encode()).decode()
    body = b'{"sentence": "burst"}'

    def request(i: int) -> bytes:
        return (
            f"POST /predict HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"X-Request-ID: {tag}-{i}\r\nConnection: close\r\n\r\n"
        ).encode() + body

    statuses: collections.Counter = collections.Counter()
    barrier = threading.Barrier(n)
    lock = threading.Lock()

    def worker(i: int, conn: ssl.SSLSocket) -> None:
        barrier.wait()
        conn.sendall(request(i))
        data = b""
        while b"\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        with lock:
            statuses[int(data.split(b" ", 2)[1]) if data else 0] += 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(i, c)) for i, c in enumerate(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return statuses


def test_burst_of_50_gets_exactly_the_burst_math(stack: Stack, pacer) -> None:
    """nginx's limit_req (rate r, burst b, nodelay) from a full bucket accepts 1 + b requests,
    plus one per 1/r seconds that pass between the first and the last request it sees. The
    time that passes is read from nginx's own clock (the access log's msec - request_time:
    when each request arrived), not from the client's: on a busy machine the requests reach
    nginx over a longer span than the client took to send them."""
    rate, burst = 10, 20
    pacer.refill()
    since, tag = time.time(), f"burst-{time.time_ns()}"
    statuses = _fire(stack, 50, tag)
    pacer.refill()

    def ours() -> list[dict]:
        return [r for r in gateway_log(stack.name, since - 1) if r["request_id"].startswith(tag)]

    deadline = time.monotonic() + 15
    while len(records := ours()) < 50 and time.monotonic() < deadline:
        time.sleep(0.5)  # the access log is flushed every second
    arrived_ms = sorted(round((r["msec"] - r["request_time"]) * 1000) for r in records)
    spread_ms = arrived_ms[-1] - arrived_ms[0]
    allowed = 1 + burst + spread_ms * rate // 1000
    print(f"burst: {dict(statuses)}, reaching nginx within {spread_ms} ms: at most {allowed}")
    assert len(records) == 50, f"{len(records)} of the 50 requests in the access log"
    assert collections.Counter(r["status"] for r in records) == statuses
    assert set(statuses) <= {200, 429}, statuses
    assert 1 + burst <= statuses[200] <= allowed, (statuses, spread_ms)


def test_429_is_json_with_retry_after(client: httpx.Client, stack: Stack, pacer) -> None:
    pacer.refill()
    codes = []
    # Sequential requests faster than 10 r/s empty the burst (21) and then get 429, however
    # slow the machine: keep sending until one does (bounded).
    for _ in range(300):
        r = client.post("/predict", json={"sentence": "x"}, auth=(stack.user, stack.password))
        codes.append(r.status_code)
        if r.status_code == 429:
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"] == "too_many_requests"
            break
    pacer.refill()
    assert 429 in codes


def test_paced_client_at_8_per_second_is_never_limited(predict, pacer) -> None:
    pacer.refill()
    codes = collections.Counter(predict(f"paced {i}").status_code for i in range(40))
    assert codes == {200: 40}


# --- configuration safety --------------------------------------------------------------------


def test_broken_template_fails_before_going_live(stack: Stack, predict) -> None:
    conf = Path(f"/opt/mlgate/{stack.name}/nginx/conf/nginx.conf")
    before = hashlib.sha256(conf.read_bytes()).hexdigest()
    run = run_playbook("site.yml", "--tags", "nginx", "-e", "nginx_client_max_body_size=64zz")
    assert run.returncode != 0
    assert "failed to validate" in run.stdout
    assert hashlib.sha256(conf.read_bytes()).hexdigest() == before
    assert predict().status_code == 200


# A configuration change applied by a reload (not a restart): test_resilience.py, under load.
