"""Variants as data through the gateway: weighted, sticky, header and shadow routes.

First ``make retrain`` (the user's command) registers version N+1 of the model as
``@candidate`` in the stack's registry. Then the stack gets four variants beside today's pair by
a re-run of the playbook with ``mlgate_variants`` (under load: no request may fail), the canary
and the shadow on ``@candidate``, and loses them again at the end the same way. Each answer
names the container that gave it (``X-Mlgate-Replica``), so every count below is read from the
answers themselves, not from the gateway's own labels.

- per request, the shares of the weights 10 / 50 / 20 (sticky) and of the default route (20)
  each lie in their binomial interval over N requests, every one from a new client (all of a
  split's intervals together at 99.99 %);
- a sticky client (``X-Client-Id``, or without it the basic-auth user) never changes: a client
  in the sticky variant's share gets only that variant over 50 requests, a client outside it
  never gets it, and different clients spread over both;
- the debug header beats every weight: exactly the debug variant;
- the canary serves version N+1's artifact (``X-Model-Version``, the sha256 of the file in the
  container equals the registry's), the default route version N;
- the shadow gets a copy of exactly the requests the default route answered (joined by request
  id in the audit log), and no other, but for a copy nginx's error log says it gave up on; the
  client's answer is always the default route's; with the shadow paused (slow) or killed, no
  client request fails;
- a change of weights with a variant removed is a gateway reload: no request failed, the removed
  variant's container gone and no other restarted or replaced (the others pin their ``slot``, so
  none moves into the freed addresses), and the requests split by the new weights.

Run by the nginx scenario's verify (``MLGATE_E2E_REUSE=1``, its stack) after the other e2e
files it runs; the default scenario's e2e suite leaves it out.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import ssl
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import docker
import httpx
import pytest

from model.registry import Registry

from .conftest import (
    ROOT,
    Stack,
    assert_both_cohorts_served,
    run_playbook,
    stack_settings,
    steady_load,
)

N = 2000  # per-request split: intervals of +-2.8 % (10 %) to +-4.7 % (50 %), see assert_split
# A split is checked on all its variants at once; the chance that a correct gateway fails the
# check (any variant out of its interval by luck) is held at 1 in 10,000 per split: each of k
# variants gets its two-sided binomial interval at 1 - 0.0001 / k (Bonferroni). With k
# separate 99.9 % intervals it was k in 1,000 per split, about 1 in 140 runs of this file.
SPLIT_FALSE_ALARM = 1e-4
CLIENTS = 40  # sticky clients; all on one side has probability 2 * 0.8^40 + 0.2^40 < 3e-4
PER_CLIENT = 50
WEIGHTS = {"canary": 10, "half": 50, "sticky": 20}  # the default route, v1, takes the rest


def variants(v1_replicas: int) -> list[dict]:
    return [
        {"name": "v1", "replicas": v1_replicas, "route": "default"},
        {
            "name": "v2",
            "replicas": 1,
            "debug": True,
            "route": {"header": "X-Experiment-Group", "value": "debug"},
        },
        # the canary takes the first free slot (2); the others pin theirs, so that removing
        # the canary moves none of them (test_a_route_change_...)
        {"name": "canary", "model": "@candidate", "route": {"weight": WEIGHTS["canary"]}},
        {"name": "half", "slot": 3, "route": {"weight": WEIGHTS["half"]}},
        {"name": "sticky", "slot": 4, "route": {"weight": WEIGHTS["sticky"], "sticky": True}},
        {"name": "shadow", "slot": 5, "model": "@candidate", "route": {"shadow": 100}},
    ]


def variant_of(replica: str, stack: str) -> str:
    """`<stack>-api-<variant>-<i>` (or its `-surge` twin) -> variant."""
    prefix = f"{stack}-api-"
    assert replica.startswith(prefix), replica
    return replica[len(prefix) :].removesuffix("-surge").rsplit("-", 1)[0]


def deploy(stack: Stack, extra: dict) -> None:
    """site.yml --tags api,nginx with `extra`, under steady load of both cohorts: no failure."""
    load = steady_load(stack)
    load.start()
    try:
        time.sleep(1)
        done = run_playbook("site.yml", "--tags", "api,nginx", "-e", json.dumps(extra))
        time.sleep(1)
    finally:
        load.stop()
    print(f"deploy {sorted(extra)}: {load.report()}")
    assert done.returncode == 0, done.stdout[-6000:]
    # a reload closes idle keep-alive connections: at most one retry per reload (loadgen.py)
    load.assert_no_failure(max_retried=2)
    assert_both_cohorts_served(load, at_least=5)


def registry(stack: Stack) -> Registry:
    return Registry(store=ROOT / ".mlgate" / stack.name / "mlflow")


@pytest.fixture(scope="module")
def candidate(stack: Stack) -> dict:
    """`make retrain` into the stack's own registry (other training parameters, as a user
    tries them): version N+1, @candidate; @stable stays N."""
    stable = registry(stack).resolve("@stable")
    done = subprocess.run(
        ["make", "--no-print-directory", "retrain", f"REGISTRY=.mlgate/{stack.name}/mlflow",
         "TRAIN_ARGS=--param logreg.C=0.5"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    new = registry(stack).resolve("@candidate")
    assert new.number > stable.number and new.sha256 != stable.sha256, (new, stable)
    assert registry(stack).resolve("@stable").number == stable.number
    return {"stable": stable, "candidate": new}


@pytest.fixture(scope="module")
def routed(stack: Stack, pacer, candidate) -> Iterator[dict]:
    settings = stack_settings()
    host = settings["mlgate_network_subnet"].rsplit(".", 1)[0] + ".1"
    # the test's clients reach nginx from the network's gateway address (Docker's proxy on
    # 127.0.0.1): exempt from the rate limit, as bench/ does, so that N requests take seconds
    extra = {
        "mlgate_variants": variants(int(settings.get("mlgate_api_v1_replicas", 3))),
        "nginx_rate_limit_exempt": [host],
    }
    pacer.refill()
    deploy(stack, extra)
    yield extra
    # removing the variants again is a re-run under load too; their containers go
    pacer.refill()
    deploy(stack, {})
    left = docker.from_env().containers.list(
        all=True, filters={"label": f"io.mlgate.stack={stack.name}"}
    )
    names = {c.name for c in left}
    gone = {f"{stack.name}-api-{v}-1" for v in ("canary", "half", "sticky", "shadow")}
    assert not names & gone, sorted(names & gone)


def send(
    stack: Stack, requests: list[dict[str, str]], threads: int = 4
) -> list[tuple[dict[str, str], httpx.Response]]:
    """POST /predict once per header set, from `threads` keep-alive clients at once."""
    tls = ssl.create_default_context(cafile=str(stack.ca))
    out: list = [None] * len(requests)
    errors: list[str] = []

    def worker(k: int) -> None:
        with httpx.Client(base_url=stack.https, verify=tls, timeout=30) as c:
            for i in range(k, len(requests), threads):
                try:
                    out[i] = (
                        requests[i],
                        c.post(
                            "/predict",
                            json={"sentence": "the weather is lovely today"},
                            auth=(stack.user, stack.password),
                            headers=requests[i],
                        ),
                    )
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(600)
    assert errors == [], errors[:5]
    assert all(o is not None for o in out)
    bad = collections.Counter(r.status_code for _, r in out if r.status_code != 200)
    assert not bad, bad
    return out


def audit_records(stack: Stack, variant: str) -> list[dict]:
    """The audit log's records of one variant (one log volume per node: every API container
    of this host writes there), read through a v1 container."""
    v1 = docker.from_env().containers.get(f"{stack.name}-api-v1-1")
    # each file, then an ASCII record separator (never in a JSON line); a file rotated away
    # while it is read (cat fails) is read again on the next call
    each_file = r"""for f in /var/log/mlgate/predictions.jsonl*
                    do cat "$f" 2>/dev/null; printf '\036'; done; true"""
    res = v1.exec_run(["sh", "-c", each_file])
    assert res.exit_code == 0, res.output[-2000:]
    return [r for r in complete_records(res.output.decode()) if r.get("variant") == variant]


def complete_records(files: str) -> list[dict]:
    """The records of files joined by record separators. Each record is one `os.write` of a
    line; a reader may see the end of a line still being appended (a write fills the file page
    by page), so a file's unterminated last line is not a record yet: it is read next time."""
    records = []
    for text in files.split("\x1e"):
        lines = text.split("\n")
        records += [json.loads(line) for line in lines[:-1] if line]
    return records


def assert_split(stack: Stack, weights: dict[str, int]) -> None:
    """N requests, each from a new client: each variant's share, and the default route's (v1,
    the rest), lies in its binomial interval, all k of them together at 99.99 % (each at
    1 - 0.0001 / k, see SPLIT_FALSE_ALARM)."""
    answers = send(stack, [{"X-Client-Id": uuid.uuid4().hex} for _ in range(N)])
    got = collections.Counter(
        variant_of(r.headers["x-mlgate-replica"], stack.name) for _, r in answers
    )
    shares = {**weights, "v1": 100 - sum(weights.values())}
    print(f"{N} requests, each from a new client: {dict(got)} (weights {shares})")
    assert set(got) == set(shares), got
    z = statistics.NormalDist().inv_cdf(1 - SPLIT_FALSE_ALARM / (2 * len(shares)))
    for name, percent in shares.items():
        p = percent / 100
        half_width = z * math.sqrt(N * p * (1 - p))
        assert abs(got[name] - N * p) <= half_width, (name, got[name], N * p, half_width)


def test_per_request_weights_lie_in_their_binomial_interval(routed, stack: Stack) -> None:
    assert_split(stack, WEIGHTS)


def test_a_sticky_client_keeps_its_variant_and_clients_spread(routed, stack: Stack) -> None:
    clients = [f"client-{uuid.uuid4().hex[:12]}" for _ in range(CLIENTS)]
    requests = [{"X-Client-Id": c} for c in clients for _ in range(PER_CLIENT)]
    # and the basic-auth user as the key, for a client that sends no X-Client-Id
    requests += [{} for _ in range(PER_CLIENT)]
    answers = send(stack, requests)
    seen: dict[str, set[str]] = collections.defaultdict(set)
    for headers, r in answers:
        seen[headers.get("X-Client-Id", "(user)")].add(
            variant_of(r.headers["x-mlgate-replica"], stack.name)
        )
    inside = sorted(c for c, vs in seen.items() if "sticky" in vs)
    print(f"{len(seen)} clients x {PER_CLIENT} requests: {len(inside)} on the sticky variant")
    for client, vs in seen.items():
        # in the sticky share: that variant only; outside it: never
        assert vs == {"sticky"} or "sticky" not in vs, (client, vs)
    assert 0 < len([c for c in inside if c != "(user)"]) < CLIENTS, seen


def test_the_debug_header_beats_every_weight(routed, stack: Stack) -> None:
    requests = [
        {"X-Experiment-Group": "debug", "X-Client-Id": uuid.uuid4().hex} for _ in range(200)
    ]
    answers = send(stack, requests)
    got = collections.Counter(
        variant_of(r.headers["x-mlgate-replica"], stack.name) for _, r in answers
    )
    assert got == {"v2": 200}, got
    assert all("prediction_proba_dict" in r.json() for _, r in answers)
    # any other value, in any other case, takes the weighted split and the default route
    answers = send(stack, [{"X-Experiment-Group": "DEBUG", "X-Client-Id": uuid.uuid4().hex}] * 100)
    assert "v2" not in {variant_of(r.headers["x-mlgate-replica"], stack.name) for _, r in answers}


def test_the_canary_serves_the_candidates_artifact(routed, candidate, stack: Stack) -> None:
    answers = send(stack, [{"X-Client-Id": uuid.uuid4().hex} for _ in range(200)])
    versions: dict[str, set[str]] = collections.defaultdict(set)
    for _, r in answers:
        versions[variant_of(r.headers["x-mlgate-replica"], stack.name)].add(
            r.headers["x-model-version"]
        )
    new, old = str(candidate["candidate"].number), str(candidate["stable"].number)
    assert versions["canary"] == {new} and versions["v1"] == {old}, dict(versions)
    canary = docker.from_env().containers.get(f"{stack.name}-api-canary-1")
    res = canary.exec_run(["cat", "/opt/mlgate/app/model/artifacts/model.joblib"])
    assert res.exit_code == 0
    assert hashlib.sha256(res.output).hexdigest() == candidate["candidate"].sha256
    assert canary.labels["io.mlgate.model-version"] == new


def _wait_for_copies(stack: Stack, ids: set[str], seconds: float = 30) -> set[str]:
    """Request ids of `ids` the shadow recorded, once it has all of them or after `seconds`
    (the copies are answered after the clients' answers, and the log is flushed per line)."""
    deadline = time.monotonic() + seconds
    while True:
        copied = {r["request_id"] for r in audit_records(stack, "shadow")}
        if ids <= copied or time.monotonic() > deadline:
            return copied
        time.sleep(0.5)


def agreement_total(stack: Stack) -> float:
    """The shadow's comparisons with its reference model, all pairs and outcomes, read from its
    own /metrics (the host reaches the API containers' addresses)."""
    shadow = docker.from_env().containers.get(f"{stack.name}-api-shadow-1")
    address = next(iter(shadow.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
    text = httpx.get(f"http://{address}:8000/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("mlgate_agreement_total{")
    )


def shadow_give_ups(stack: Stack, since: float) -> list[str]:
    """The gateway's error log lines since `since` (Unix time) where nginx gave up on a copy to
    a shadow (timed out after `nginx_shadow_timeout_ms`, refused, or no live server left): such
    a copy may never have reached the shadow. A copy nginx did not give up on always does."""
    gateway = docker.from_env().containers.get(f"{stack.name}-nginx")
    text = gateway.logs(stdout=False, stderr=True, since=since).decode(errors="replace")
    return [line for line in text.splitlines() if 'subrequest: "/_mlgate/shadow/' in line]


def test_the_shadow_gets_a_copy_of_exactly_the_default_routes_requests(
    routed, stack: Stack
) -> None:
    """Exact on a slow machine too: every default route request's copy reaches the shadow,
    except where nginx's error log says it gave up on that copy (its bound is 500 ms a step, and
    a copy that timed out marks the shadow down for a while), and nothing else reaches it."""
    started = time.time()
    before = {r["request_id"] for r in audit_records(stack, "shadow")}
    compared_before = agreement_total(stack)
    requests = [
        {"X-Request-ID": f"shadow-{uuid.uuid4().hex}", "X-Client-Id": uuid.uuid4().hex}
        for _ in range(300)
    ]
    requests += [
        {"X-Request-ID": f"shadow-{uuid.uuid4().hex}", "X-Experiment-Group": "debug"}
        for _ in range(50)
    ]
    answers = send(stack, requests)
    by_variant = collections.defaultdict(set)
    label_of = {h["X-Request-ID"]: r.json()["prediction value"] for h, r in answers}
    for headers, r in answers:
        assert r.headers["x-request-id"] == headers["X-Request-ID"]
        by_variant[variant_of(r.headers["x-mlgate-replica"], stack.name)].add(
            headers["X-Request-ID"]
        )
    # no client answer ever comes from the shadow
    assert "shadow" not in by_variant, by_variant.keys()
    sent = {h["X-Request-ID"] for h in requests}
    copied = (_wait_for_copies(stack, by_variant["v1"]) - before) & sent
    gave_up = shadow_give_ups(stack, started)
    missing = by_variant["v1"] - copied
    print(
        f"{len(sent)} requests, {len(by_variant['v1'])} on the default route, "
        f"{len(copied)} copies to the shadow, {len(gave_up)} given up by nginx"
    )
    assert copied <= by_variant["v1"], f"extra {len(copied - by_variant['v1'])}"
    assert len(missing) <= len(gave_up), (f"missing {len(missing)}", gave_up[:3])
    # each copy was compared with the default route's model on the same input: the reference
    # label the shadow recorded is the label the client got from v1, request by request, and
    # the agreement counters grew by exactly the number of copies
    # (the shadow runs @candidate, N+1; its reference is the default route's @stable, N)
    records = {r["request_id"]: r for r in audit_records(stack, "shadow")}
    stable = str(registry(stack).resolve("@stable").number)
    new = str(registry(stack).resolve("@candidate").number)
    for rid in copied:
        assert records[rid]["reference_label"] == label_of[rid], records[rid]
        assert (records[rid]["model_version"], records[rid]["reference_version"]) == (new, stable)
    disagree = sum(records[rid]["label"] != label_of[rid] for rid in copied)
    print(f"shadow {new} vs {stable}: {disagree} of {len(copied)} copies disagree")
    assert agreement_total(stack) - compared_before == len(copied)


@pytest.mark.parametrize("trouble", ["paused", "killed"])
def test_a_slow_or_dead_shadow_fails_no_client_request(routed, stack: Stack, trouble) -> None:
    shadow = docker.from_env().containers.get(f"{stack.name}-api-shadow-1")
    tls = ssl.create_default_context(cafile=str(stack.ca))
    latencies: list[float] = []
    statuses: collections.Counter = collections.Counter()
    (shadow.pause if trouble == "paused" else shadow.kill)()
    try:
        # one keep-alive client: nginx holds its connection until each copy ends (or times out)
        with httpx.Client(base_url=stack.https, verify=tls, timeout=30) as c:
            for _ in range(30):
                start = time.monotonic()
                r = c.post(
                    "/predict",
                    json={"sentence": "the shadow is in trouble"},
                    auth=(stack.user, stack.password),
                    headers={"X-Client-Id": uuid.uuid4().hex},
                )
                latencies.append(time.monotonic() - start)
                statuses[r.status_code] += 1
    finally:
        if trouble == "paused":
            shadow.unpause()
        else:
            shadow.start()
    q = statistics.quantiles(latencies, n=100)
    print(
        f"shadow {trouble}: {dict(statuses)}, keep-alive client p50 {q[49] * 1000:.0f} ms, "
        f"p99 {q[98] * 1000:.0f} ms"
    )
    assert statuses == {200: 30}, statuses


def test_a_route_change_is_a_reload_that_moves_no_pinned_variant(
    routed, stack: Stack, pacer
) -> None:
    """The weights change (half 50 -> 40, sticky 20 -> 30) and the canary, listed before the
    others, goes: a re-run of the playbook under load reloads the gateway and fails no request;
    the canary's container goes, and no other container (gateway or API) is restarted or
    replaced: half, sticky and shadow pin their slots, so none takes the canary's addresses; the
    requests then split by the new weights. Last in this file: the fixture's teardown removes
    the other variants from whatever routes they have."""
    new = {"half": 40, "sticky": 30}
    engine = docker.from_env()

    def containers() -> dict[str, tuple[str, str]]:
        found = engine.containers.list(filters={"label": f"io.mlgate.stack={stack.name}"})
        return {c.name: (c.id, c.attrs["State"]["StartedAt"]) for c in found}

    before = containers()
    canary = {n for n in before if n.startswith(f"{stack.name}-api-canary-")}
    assert canary == {f"{stack.name}-api-canary-1"} and f"{stack.name}-api-half-1" in before, before
    changed = [
        {**v, "route": {**v["route"], "weight": new[v["name"]]}} if v["name"] in new else v
        for v in routed["mlgate_variants"]
        if v["name"] != "canary"
    ]
    pacer.refill()
    deploy(stack, {**routed, "mlgate_variants": changed})
    after = containers()
    kept = {n: v for n, v in before.items() if n not in canary}
    assert after == kept, {n: (kept.get(n), after.get(n)) for n in kept.keys() | after.keys()
                           if kept.get(n) != after.get(n)}  # fmt: skip
    assert_split(stack, new)
