"""End-to-end checks of the monitoring role: exporter, blackbox probe, Prometheus and its rules,
Alertmanager and its webhook, Grafana.

Runs against the stack conftest.py deploys. Everything reads the deployed files (rules,
dashboards, Grafana provisioning) so that a new panel or rule is checked automatically.

How "every expression returns data" is checked:
- dashboard queries are run as they are (Grafana's $__rate_interval/$__interval/$__range
  replaced by fixed windows) and must return at least one series;
- alert expressions are conditions and are legitimately empty while all is well (`up == 0`).
  Each one must execute without error, and it is then split at its top-level `and`/`or`/
  `unless` into clauses; each clause loses its final comparison with a number (`> 0.5`,
  `== 0`), and what remains, the signal the alert watches, must return at least one series.
  Besides, every metric name the expression mentions must exist in Prometheus, so a typo in a
  branch that never produces data (an `or` fallback) is caught too.
"""

from __future__ import annotations

import configparser
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import docker
import httpx
import pytest
import yaml
from cryptography import x509

from .conftest import (
    Stack,
    assert_both_cohorts_served,
    recap,
    run_playbook,
    stack_settings,
    steady_load,
)

DATASOURCE_UID = "mlgate-prometheus"
DASHBOARD_UIDS = {
    "mlgate-gateway.json": "mlgate-gateway",
    "mlgate-api.json": "mlgate-api",
    "mlgate-experiments.json": "mlgate-experiments",
}
# Series only a shadow variant exports (the default stack has none: tests/e2e/test_routes.py
# checks them at their source); their panels' queries must run, not return data.
SHADOW_ONLY = ("mlgate_agreement_total", "mlgate_agreement_labels_total")
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
V2_HEADERS = {"X-Experiment-Group": "debug"}


# --- helpers ----------------------------------------------------------------------------


def wait_for(check: Callable[[], object], timeout: float, interval: float = 1.0, what: str = ""):
    """Call check() until it returns something truthy; return it, or fail after timeout."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what or check}: last {last!r}")


def duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text}"
    return sum(int(n) * units[u] for n, u in parts)


def _top_level(expr: str):
    """Yield (index, char) of the characters outside (), {}, [] and string literals."""
    depth, quote, escaped = 0, "", False
    for i, ch in enumerate(expr):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
            continue
        if ch in "\"'`":
            quote = ch
        elif ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        elif depth == 0:
            yield i, ch


def _blank_nested(expr: str) -> str:
    """expr with everything inside brackets and strings replaced by spaces."""
    top = dict(_top_level(expr))
    return "".join(top.get(i, " ") for i in range(len(expr)))


def signals(expr: str) -> list[str]:
    """The clauses of an alert expression without their final comparison with a number."""
    bounds = [0]
    for m in re.finditer(r"\b(and|or|unless)\b", _blank_nested(expr)):
        bounds += [m.start(), m.end()]
    bounds.append(len(expr))
    clauses = [expr[bounds[i] : bounds[i + 1]] for i in range(0, len(bounds), 2)]
    out = []
    for clause in clauses:
        cmp = list(re.finditer(r"==|!=|>=|<=|>|<", _blank_nested(clause)))
        number = r"\s*(bool\s+)?[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*$"
        if cmp and re.match(number, clause[cmp[-1].end() :]):
            clause = clause[: cmp[-1].start()]
        out.append(clause.strip())
    return out


GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = GROUPING | {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (not functions, keywords or label names)."""
    names: set[str] = set()
    i, n = 0, len(expr)
    while i < n:
        ch = expr[i]
        if ch in "\"'`":
            i = expr.index(ch, i + 1) + 1
        elif ch in "{[":
            i = expr.index("}" if ch == "{" else "]", i) + 1
        elif ch.isalpha() or ch in "_:":
            m = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*").match(expr, i)
            word, i = m.group(0), m.end()
            rest = expr[i:].lstrip()
            if word in GROUPING and rest.startswith("("):
                i = expr.index(")", i) + 1
            elif re.match(r"(by|without)\s*\(", rest):
                pass  # an aggregation written `sum by (...) (...)`
            elif not rest.startswith("(") and word.lower() not in KEYWORDS:
                names.add(word)
        elif ch.isdigit() or ch == ".":
            m = re.compile(r"[0-9.]+([eE][-+]?\d+)?").match(expr, i)
            i = m.end()
        else:
            i += 1
    return names


def test_promql_helpers_split_signals_and_find_metric_names() -> None:
    assert signals('up{job="api"} == 0') == ['up{job="api"}']
    assert signals("sum(x) > 5 and rate(y[1m]) < 0.1") == ["sum(x)", "rate(y[1m])"]
    assert signals('(a{s=~"5.."} or b * 0) / c > 0.05') == ['(a{s=~"5.."} or b * 0) / c']
    assert signals("a > b") == ["a > b"]  # a comparison of two series is a signal itself
    expr = 'histogram_quantile(0.99, sum by (variant, le) (rate(h_bucket{x="a b"}[5m]))) > 0.5'
    assert metric_names(expr) == {"h_bucket"}
    assert metric_names("sum(rate(a[1m])) - sum(rate(b{handler='p'}[1m])) > 5") == {"a", "b"}


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def settings() -> dict:
    return stack_settings()


@pytest.fixture(scope="module")
def mon_dir(stack: Stack, settings: dict) -> Path:
    return Path(settings.get("mlgate_target_dir", f"/opt/mlgate/{stack.name}")) / "monitoring"


@pytest.fixture(scope="module")
def prom(stack: Stack, settings: dict) -> httpx.Client:
    port = settings.get("mlgate_prometheus_port", 9090)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
        wait_for(lambda: _ready(c), 60, what="Prometheus /-/ready")
        yield c


def _ready(c: httpx.Client) -> bool:
    try:
        return c.get("/-/ready").status_code == 200
    except httpx.TransportError:
        return False


def query(prom: httpx.Client, expr: str) -> list[dict]:
    r = prom.post("/api/v1/query", data={"query": expr})
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{expr!r}: {body}"
    return body["data"]["result"]


def by_variant(prom: httpx.Client, expr: str) -> dict[str, float]:
    return {s["metric"]["variant"]: float(s["value"][1]) for s in query(prom, expr)}


def targets(prom: httpx.Client) -> list[dict]:
    return prom.get("/api/v1/targets", params={"state": "active"}).json()["data"]["activeTargets"]


def fresh_scrape(prom: httpx.Client) -> None:
    """Wait until every API target has been scraped after now."""
    start = time.time()

    def scraped_after(target: dict) -> bool:
        stamp = re.sub(r"(\.\d{6})\d+", r"\1", target["lastScrape"])  # RFC 3339, nanoseconds
        return datetime.fromisoformat(stamp).timestamp() > start

    def check() -> bool:
        api = [t for t in targets(prom) if t["labels"]["job"] == "api"]
        return bool(api) and all(t["health"] == "up" and scraped_after(t) for t in api)

    wait_for(check, 30, 0.5, "a scrape of every API target")


class WebhookReceiver:
    """Alertmanager's webhook receiver, run by the tests on the host: the deployment's
    monitoring_alertmanager_webhook_url points at the stack bridge's gateway address."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.path = parts.path or "/"
        self.received: list[tuple[float, dict]] = []  # (time.monotonic(), payload)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == receiver.path:
                    receiver.received.append((time.monotonic(), json.loads(body)))
                    self.send_response(200)
                else:
                    self.send_response(404)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer((parts.hostname, parts.port or 80), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def alerts(self, since: float = 0.0) -> list[tuple[float, str, dict]]:
        """(received at, notification status, alert) for every alert notified after `since`."""
        return [
            (at, payload["status"], alert)
            for at, payload in list(self.received)
            if at >= since
            for alert in payload["alerts"]
        ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def webhook(settings: dict) -> WebhookReceiver:
    url = settings.get("monitoring_alertmanager_webhook_url", "")
    assert url.startswith("http://"), (
        "the e2e stack files set monitoring_alertmanager_webhook_url to a receiver on the host"
    )
    receiver = WebhookReceiver(url)
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def api_containers(stack: Stack) -> dict[str, str]:
    """API containers of the stack: name -> variant (from the labels the api role sets)."""
    engine = docker.from_env()
    found = engine.containers.list(
        all=True, filters={"label": [f"io.mlgate.stack={stack.name}", "io.mlgate.component=api"]}
    )
    return {c.name: c.labels["io.mlgate.variant"] for c in found}


@pytest.fixture(scope="module")
def all_targets_up(prom: httpx.Client, api_containers: dict[str, str]) -> list[dict]:
    """Every target of the five jobs is up (waits for the first scrapes after a deploy)."""
    expected = len(api_containers) + 4

    def check():
        ts = targets(prom)
        return ts if len(ts) == expected and all(t["health"] == "up" for t in ts) else None

    return wait_for(check, 60, what=f"{expected} targets up")


@pytest.fixture(scope="module")
def traffic(predict_module, prom: httpx.Client, all_targets_up) -> None:
    """Predictions on both variants, scraped: the dashboards' queries then all have data."""
    for _ in range(3):
        assert predict_module().status_code == 200
        assert predict_module(headers=V2_HEADERS).status_code == 200
    q = "sum by (variant) (mlgate_predictions_total) > 0"
    wait_for(lambda: set(by_variant(prom, q)) == {"v1", "v2"}, 30, what="predictions scraped")


@pytest.fixture(scope="module")
def predict_module(client: httpx.Client, stack: Stack, pacer):
    def _predict(sentence: str = "what a lovely day", headers=None):
        pacer.wait()
        return client.post(
            "/predict",
            json={"sentence": sentence},
            auth=(stack.user, stack.password),
            headers=headers or {},
        )

    return _predict


def rules(mon_dir: Path) -> list[dict]:
    files = sorted((mon_dir / "prometheus" / "conf" / "rules").glob("*.yml"))
    assert files, "no rule files deployed"
    return [r for f in files for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]]


def dashboards(mon_dir: Path) -> dict[str, dict]:
    files = sorted((mon_dir / "grafana" / "conf" / "dashboards").glob("*.json"))
    assert files, "no dashboards deployed"
    return {f.name: json.loads(f.read_text()) for f in files}


def panels(dashboard: dict) -> list[dict]:
    out = []
    for p in dashboard.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows keep their panels inside
    return out


# --- deployment -------------------------------------------------------------------------


def test_second_run_changes_nothing(stack: Stack) -> None:
    if stack.second_run is None:
        pytest.skip("stack reused (MLGATE_E2E_REUSE=1)")
    out = stack.second_run.stdout
    assert "TASK [monitoring : Run Prometheus" in out, "the monitoring role did not run"
    changed = [ln for ln in out.splitlines() if ln.startswith("changed:")]
    assert recap(out)["changed"] == 0, f"second run changed things: {changed}"


def test_grafana_is_deployed_or_skipped_with_one_clear_line(stack: Stack) -> None:
    if stack.second_run is None:
        pytest.skip("stack reused (MLGATE_E2E_REUSE=1)")
    out = stack.second_run.stdout
    engine = docker.from_env()
    running = [c.name for c in engine.containers.list(filters={"name": f"{stack.name}-grafana"})]
    skipped = out.count("Grafana SKIPPED")
    assert (skipped, bool(running)) in {(0, True), (1, False)}, (skipped, running)


def test_monitoring_containers_hardened_and_labelled(stack: Stack) -> None:
    engine = docker.from_env()
    for role in ("exporter", "blackbox", "prometheus", "alertmanager"):
        c = engine.containers.get(f"{stack.name}-{role}")
        assert c.attrs["State"]["Health"]["Status"] == "healthy", c.name
        assert c.labels["io.mlgate.stack"] == stack.name
        assert c.labels["io.mlgate.component"] == role
        host = c.attrs["HostConfig"]
        assert host["RestartPolicy"]["Name"] == "unless-stopped"
        assert host["Memory"] > 0
        assert (
            host["LogConfig"]["Type"] == "json-file" and "max-size" in host["LogConfig"]["Config"]
        )
        assert host["ReadonlyRootfs"] is True
        assert c.attrs["Config"]["User"] not in ("", "0", "root"), c.name
    for data in ("prometheus", "alertmanager"):
        volume = engine.volumes.get(f"{stack.name}-{data}-data")
        assert volume.attrs["Labels"]["io.mlgate.stack"] == stack.name


# --- scraping ---------------------------------------------------------------------------


def test_every_target_is_up(all_targets_up: list[dict], api_containers: dict[str, str]) -> None:
    jobs = sorted(t["labels"]["job"] for t in all_targets_up)
    assert jobs == sorted(
        ["alertmanager", "blackbox", "nginx", "prometheus"] + ["api"] * len(api_containers)
    )
    api = {
        t["labels"]["replica"]: t["labels"]["variant"]
        for t in all_targets_up
        if t["labels"]["job"] == "api"
    }
    assert api == api_containers
    assert sorted(set(api.values())) == ["v1", "v2"]


def test_nginx_up_is_1(prom: httpx.Client, all_targets_up) -> None:
    result = query(prom, "nginx_up")
    assert [float(s["value"][1]) for s in result] == [1.0]


def test_the_probe_reaches_the_gateway_as_a_client_and_reads_its_certificate(
    prom: httpx.Client, all_targets_up, mon_dir: Path
) -> None:
    """The blackbox exporter's HTTPS GET of /health succeeds, trusting the stack's CA only, and
    it reads the certificate the gateway serves: the expiry it reports is server.crt's."""

    def value(expr: str) -> float:
        series = query(prom, expr)
        assert len(series) == 1, f"{expr}: {series}"
        return float(series[0]["value"][1])

    probe = '{job="blackbox"}'
    assert value(f"probe_success{probe}") == 1
    assert value(f"probe_http_status_code{probe}") == 200
    assert value(f"probe_http_ssl{probe}") == 1
    assert value('probe_http_duration_seconds{job="blackbox", phase="tls"}') > 0
    assert value(f"probe_duration_seconds{probe}") > 0
    served = x509.load_pem_x509_certificate((mon_dir.parent / "certs" / "server.crt").read_bytes())
    expiry = value(f"probe_ssl_earliest_cert_expiry{probe}")
    assert expiry == served.not_valid_after_utc.timestamp()
    days = (expiry - time.time()) / 86400
    threshold = next(
        float(r["expr"].rsplit("<", 1)[1])
        for r in rules(mon_dir)
        if r.get("alert") == "MlgateCertificateExpiresSoon"
    )
    firing = [
        a
        for a in prom.get("/api/v1/alerts").json()["data"]["alerts"]
        if a["labels"]["alertname"] == "MlgateCertificateExpiresSoon"
    ]
    assert (days < threshold) == bool(firing), (days, threshold, firing)


def test_request_counters_grow_by_the_requests_sent(
    prom: httpx.Client, predict, all_targets_up
) -> None:
    requests = 'sum by (variant) (mlgate_requests_total{handler="predict"})'
    latency = 'sum by (variant) (mlgate_request_duration_seconds_count{handler="predict"})'
    fresh_scrape(prom)  # earlier traffic (e.g. the playbook's own check) is counted already
    before, before_latency = by_variant(prom, requests), by_variant(prom, latency)
    sent = {"v1": 7, "v2": 4}
    for variant, n in sent.items():
        for _ in range(n):
            r = predict(headers=V2_HEADERS if variant == "v2" else None)
            assert r.status_code == 200, r.text

    def grown(expr: str, start: dict[str, float]) -> dict[str, float]:
        now = by_variant(prom, expr)
        return {v: now.get(v, 0) - start.get(v, 0) for v in sent}

    fresh_scrape(prom)
    assert grown(requests, before) == sent
    assert grown(latency, before_latency) == sent
    buckets = (
        'sum by (variant) (mlgate_request_duration_seconds_bucket{handler="predict", le="+Inf"})'
    )
    assert all(n > 0 for n in by_variant(prom, buckets).values())
    assert set(by_variant(prom, buckets)) == {"v1", "v2"}


# --- dashboards and rules ---------------------------------------------------------------


def test_dashboards_parse_with_fixed_uids_and_the_provisioned_datasource(mon_dir: Path) -> None:
    found = dashboards(mon_dir)
    assert {name: d["uid"] for name, d in found.items()} == DASHBOARD_UIDS
    for name, d in found.items():
        for p in panels(d):
            if p.get("type") == "row":
                continue
            assert p["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, (
                name,
                p["title"],
            )
            assert p["targets"], (name, p["title"])
            for t in p["targets"]:
                assert t["datasource"]["uid"] == DATASOURCE_UID, (name, p["title"])
    provisioning = mon_dir / "grafana" / "conf" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "mlgate.yml").read_text())
    assert [s["uid"] for s in sources["datasources"]] == [DATASOURCE_UID]
    assert sources["datasources"][0]["url"].endswith(":9090")
    providers = yaml.safe_load((provisioning / "dashboards" / "mlgate.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/etc/mlgate/grafana/dashboards"


def test_api_dashboard_covers_the_issue(mon_dir: Path) -> None:
    exprs = " ".join(
        t["expr"]
        for p in panels(dashboards(mon_dir)["mlgate-api.json"])
        for t in p.get("targets", [])
    )
    api_needles = [
        *("mlgate_requests_total", "histogram_quantile(0.5", "histogram_quantile(0.99"),
        *('status=~"5.."', "mlgate_predictions_total", 'up{job="api"}', "mlgate_model_info"),
    ]
    for needle in api_needles:
        assert needle in exprs, needle
    gateway = " ".join(
        t["expr"]
        for p in panels(dashboards(mon_dir)["mlgate-gateway.json"])
        for t in p.get("targets", [])
    )
    for needle in ("nginx_connections_active", "nginx_http_requests_total",
                   "nginx_connections_accepted", "nginx_connections_handled"):  # fmt: skip
        assert needle in gateway, needle


def test_experiments_dashboard_shows_the_variants_side_by_side(mon_dir: Path) -> None:
    by_title = {
        p["title"]: " ".join(t["expr"] for t in p["targets"])
        for p in panels(dashboards(mon_dir)["mlgate-experiments.json"])
    }
    exprs = " ".join(by_title.values())
    # traffic share, error ratio, p50/p99, label distribution, agreement: per variant
    for needle in (
        "sum by (variant) (rate(mlgate_requests_total",
        'status=~"5.."',
        "histogram_quantile(0.5, sum by (variant, le)",
        "histogram_quantile(0.99, sum by (variant, le)",
        "sum by (variant, label) (rate(mlgate_predictions_total",
        'mlgate_agreement_total{agree="true"}',
        "mlgate_agreement_labels_total",
    ):
        assert needle in exprs, needle
    assert "v1" not in exprs and "v2" not in exprs, "the experiments dashboard names no variant"


def test_every_dashboard_query_returns_data(prom: httpx.Client, mon_dir: Path, traffic) -> None:
    empty, checked = [], 0
    for name, d in dashboards(mon_dir).items():
        for p in panels(d):
            for t in p.get("targets", []):
                expr = t["expr"]
                for var, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(var, value)
                assert "$" not in expr, f"{name} / {p['title']}: unknown variable in {expr}"
                checked += 1
                if any(metric in expr for metric in SHADOW_ONLY):
                    query(prom, expr)  # runs without error
                    continue
                if not query(prom, expr):
                    empty.append(f"{name} / {p['title']}: {expr}")
    assert checked >= 10
    assert not empty, "queries without data:\n" + "\n".join(empty)


def test_every_alert_expression_runs_and_watches_existing_data(
    prom: httpx.Client, mon_dir: Path, traffic
) -> None:
    problems, alerts = [], 0
    for rule in rules(mon_dir):
        name, expr = rule.get("alert") or rule.get("record"), rule["expr"]
        query(prom, expr)  # executes without error (its result may well be empty)
        alerts += "alert" in rule
        for signal in signals(expr) if "alert" in rule else [expr]:
            if not query(prom, signal):
                problems.append(f"{name}: no data for {signal}")
        for metric in metric_names(expr):
            if not query(prom, f'count({{__name__="{metric}"}})'):
                problems.append(f"{name}: no metric {metric}")
    assert alerts >= 5
    assert not problems, "\n".join(problems)


def test_rules_cover_the_issue(mon_dir: Path) -> None:
    names = {r.get("alert") for r in rules(mon_dir)}
    assert {"MlgateApiReplicaDown", "MlgateNoHealthyV1Replica", "MlgateHigh5xxRatio",
            "MlgateHighP99Latency", "MlgateSustainedRateLimiting", "MlgateGatewayProbeFailed",
            "MlgateGatewayProbeSlow", "MlgateCertificateExpiresSoon",
            "MlgateAuditLogWriteErrors"} <= names  # fmt: skip


def test_stopping_a_v1_replica_fires_replica_down_and_notifies_the_webhook(
    prom: httpx.Client,
    api_containers: dict[str, str],
    all_targets_up,
    mon_dir: Path,
    webhook: WebhookReceiver,
    stack: Stack,
) -> None:
    rule = next(r for r in rules(mon_dir) if r.get("alert") == "MlgateApiReplicaDown")
    window = duration_seconds(rule["for"])
    config = yaml.safe_load((mon_dir / "prometheus" / "conf" / "prometheus.yml").read_text())
    interval = duration_seconds(config["global"]["scrape_interval"])
    interval += duration_seconds(config["global"]["evaluation_interval"])
    victim = sorted(n for n, v in api_containers.items() if v == "v1")[-1]
    container = docker.from_env().containers.get(victim)

    def state() -> str | None:
        for a in prom.get("/api/v1/alerts").json()["data"]["alerts"]:
            labels = a["labels"]
            if (
                labels.get("alertname") == "MlgateApiReplicaDown"
                and labels.get("replica") == victim
            ):
                return a["state"]
        return None

    assert state() is None
    # Timed from the moment the stop begins: the replica stops answering as soon as it gets
    # SIGTERM (it closes its listening socket), before `docker stop` returns.
    stopped = time.monotonic()
    container.stop(timeout=30)
    # The property is the order and the lower bound: pending once a scrape failed, firing no
    # sooner than the rule's `for:` after the stop began. The waits only bound how long a busy
    # machine may take to get there (a failed scrape, then an evaluation: a few intervals).
    try:
        assert wait_for(state, 4 * interval + 30, 0.5, "pending") in ("pending", "firing")
        pending = time.monotonic() - stopped
        wait_for(lambda: state() == "firing", window + 4 * interval + 30, 0.5, "firing")
        firing = time.monotonic() - stopped
        print(f"{victim} stopped: pending after {pending:.1f} s, firing after {firing:.1f} s")
        assert firing >= window, "fired before its `for:` window"
        others = query(prom, 'sum(up{job="api", variant="v1"})')
        assert float(others[0]["value"][1]) == sum(v == "v1" for v in api_containers.values()) - 1

        # Prometheus -> Alertmanager -> the webhook, with the alert's labels. Nothing about the
        # victim may reach the webhook before the alert fired; the wait bounds Alertmanager's
        # group_wait plus an evaluation on a busy machine.
        def notified() -> list:
            return [
                (at, status, alert)
                for at, status, alert in webhook.alerts()
                if alert["labels"].get("alertname") == "MlgateApiReplicaDown"
                and alert["labels"].get("replica") == victim
            ]

        am = yaml.safe_load((mon_dir / "alertmanager" / "conf" / "alertmanager.yml").read_text())
        group_wait = duration_seconds(am["route"]["group_wait"])
        at, status, alert = wait_for(notified, group_wait + 4 * interval + 60, 0.5, "webhook")[0]
        print(f"{victim}: webhook notified {at - stopped:.1f} s after the stop began")
        assert at - stopped >= window, "notified before the alert's `for:` window"
        assert status == "firing" and alert["status"] == "firing"
        assert alert["labels"]["stack"] == stack.name
        assert alert["labels"]["variant"] == "v1"
        assert alert["labels"]["severity"] == "warning"
        assert victim in alert["annotations"]["summary"]
    finally:
        container.start()
        wait_for(
            lambda: (
                docker.from_env().containers.get(victim).attrs["State"]["Health"]["Status"]
                == "healthy"
            ),
            120,
            what=f"{victim} healthy again",
        )
        up = f'up{{job="api", replica="{victim}"}}'
        wait_for(lambda: [float(s["value"][1]) for s in query(prom, up)] == [1.0], 30, what=up)


def test_gateway_and_rule_changes_are_reloads_under_load_losing_no_requests(
    stack: Stack, prom: httpx.Client, all_targets_up, pacer
) -> None:
    """A rate-limit change of the gateway and a threshold change of an alert rule, then their
    undo, in one run of the nginx and monitoring roles each, while a paced client keeps
    sending: each change is applied by a reload (neither nginx nor Prometheus restarts), the
    new limit and rule are live in between, and no request fails.

    A reload makes nginx's old workers close their idle keep-alive connections; a request
    written on one at that instant finds it closed before any answer (HTTP/1.1 has no way to
    warn the client). The client retries it once, as browsers do: at most one such retry per
    reload, since the client holds one connection, and every request ends in a 200."""
    engine = docker.from_env()
    nginx = engine.containers.get(f"{stack.name}-nginx")
    prometheus = engine.containers.get(f"{stack.name}-prometheus")
    started = {c.name: c.attrs["State"]["StartedAt"] for c in (nginx, prometheus)}
    conf = Path(f"/opt/mlgate/{stack.name}/nginx/conf/nginx.conf")
    last_reload = "prometheus_config_last_reload_success_timestamp_seconds"

    def reloaded_at() -> float:
        return float(query(prom, last_reload)[0]["value"][1])

    def p99_rule() -> str:
        groups = prom.get("/api/v1/rules").json()["data"]["groups"]
        rule = [r for g in groups for r in g["rules"] if r["name"] == "MlgateHighP99Latency"]
        return rule[0]["query"]

    roles = ("--tags", "nginx,monitoring")
    change = ("-e", "nginx_rate_limit_burst=30", "-e", "monitoring_alert_p99_latency_seconds=0.75")
    before = reloaded_at()
    pacer.refill()
    load = steady_load(stack)
    load.start()
    try:
        time.sleep(1)
        changed = run_playbook("site.yml", *roles, *change)
        live_during = conf.read_text()
        rule_during = p99_rule()
        time.sleep(1)
        restored = run_playbook("site.yml", *roles)
        time.sleep(1)
    finally:
        load.stop()
        pacer.refill()
    print(f"two gateway reloads: {load.report()}")
    for run in (changed, restored):
        assert run.returncode == 0, run.stdout[-4000:]
        assert "RUNNING HANDLER [nginx : Reload nginx]" in run.stdout
        assert "RUNNING HANDLER [monitoring : Reload Prometheus]" in run.stdout
    assert "burst=30" in live_during and rule_during.endswith("> 0.75")
    assert "burst=20" in conf.read_text() and not p99_rule().endswith("> 0.75")
    wait_for(lambda: reloaded_at() > before, 15, what=last_reload)
    for container in (nginx, prometheus):
        container.reload()
        assert container.attrs["State"]["StartedAt"] == started[container.name], (
            f"{container.name} was restarted, not reloaded"
        )
    load.assert_no_failure(max_retried=2)
    assert_both_cohorts_served(load)


# --- exposure ---------------------------------------------------------------------------


def _bindings(container) -> list[tuple[str, str]]:
    bindings = container.attrs["HostConfig"]["PortBindings"] or {}
    return sorted((b["HostIp"], b["HostPort"]) for v in bindings.values() for b in v or [])


def test_prometheus_alertmanager_grafana_on_loopback_exporters_unpublished(
    stack: Stack, settings: dict
) -> None:
    engine = docker.from_env()
    prometheus = engine.containers.get(f"{stack.name}-prometheus")
    assert _bindings(prometheus) == [("127.0.0.1", str(settings["mlgate_prometheus_port"]))]
    grafana = engine.containers.list(all=True, filters={"name": f"{stack.name}-grafana"})
    for c in grafana:
        assert _bindings(c) == [("127.0.0.1", str(settings["mlgate_grafana_port"]))]
    alertmanager = engine.containers.get(f"{stack.name}-alertmanager")
    assert _bindings(alertmanager) == [("127.0.0.1", str(settings["mlgate_alertmanager_port"]))]
    for unpublished in ("exporter", "blackbox"):
        c = engine.containers.get(f"{stack.name}-{unpublished}")
        assert _bindings(c) == []
        assert not any(c.attrs["NetworkSettings"]["Ports"].values())


def _reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


def test_prometheus_answers_on_loopback_only_and_exporter_not_on_the_host(
    stack: Stack, settings: dict, prom: httpx.Client
) -> None:
    prometheus = docker.from_env().containers.get(f"{stack.name}-prometheus")
    networks = prometheus.attrs["NetworkSettings"]["Networks"]
    host_address = networks[f"{stack.name}-net"]["Gateway"]  # the host, on the stack's bridge
    port = settings["mlgate_prometheus_port"]
    assert _reachable("127.0.0.1", port)
    assert not _reachable(host_address, port), f"Prometheus answers on {host_address}:{port}"
    for address in ("127.0.0.1", host_address):
        assert not _reachable(address, 9113), f"exporter port 9113 open on {address}"


# --- Grafana ----------------------------------------------------------------------------


def test_grafana_configuration_is_locked_down(stack: Stack, mon_dir: Path) -> None:
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string((mon_dir / "grafana" / "conf" / "grafana.ini").read_text())
    assert ini.getboolean("auth.anonymous", "enabled") is False
    assert ini.getboolean("users", "allow_sign_up") is False
    assert ini.getboolean("users", "allow_org_create") is False
    assert not ini.has_option("security", "admin_password")
    secret = mon_dir / "grafana" / "secrets" / "admin.password"
    stat = secret.stat()
    assert (stat.st_uid, stat.st_mode & 0o777) == (472, 0o600)
    assert secret.parent.stat().st_mode & 0o077 == 0
    controller = Path(stack.ca).parent / "credentials" / "grafana-admin.password"
    assert controller.stat().st_mode & 0o777 == 0o600
    password = controller.read_text().strip()
    assert len(password) >= 32 and secret.read_text() == password
    # the password is never in a container's environment (docker inspect shows it)
    engine = docker.from_env()
    for c in engine.containers.list(all=True, filters={"label": f"io.mlgate.stack={stack.name}"}):
        env = "\n".join(c.attrs["Config"]["Env"] or [])
        assert password not in env, c.name
        if c.name.endswith("-grafana"):
            assert "GF_SECURITY_ADMIN_PASSWORD__FILE=" in env
            assert "GF_SECURITY_ADMIN_PASSWORD=" not in env


@pytest.fixture(scope="module")
def grafana(stack: Stack, settings: dict) -> httpx.Client:
    engine = docker.from_env()
    if not engine.containers.list(filters={"name": f"{stack.name}-grafana"}):
        pytest.skip("Grafana is not running (its image could not be obtained on this machine)")
    port = settings["mlgate_grafana_port"]
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
        wait_for(lambda: _ok(c, "/api/health"), 90, what="Grafana /api/health")
        yield c


def _ok(c: httpx.Client, path: str) -> bool:
    try:
        return c.get(path).status_code == 200
    except httpx.TransportError:
        return False


def test_grafana_health_and_login(grafana: httpx.Client, stack: Stack) -> None:
    assert grafana.get("/api/health").json()["database"] == "ok"
    assert grafana.get("/api/search").status_code == 401  # no anonymous access
    assert grafana.get("/api/user", auth=("admin", "admin")).status_code == 401
    password = (Path(stack.ca).parent / "credentials" / "grafana-admin.password").read_text()
    assert grafana.get("/api/user", auth=("admin", password.strip())).status_code == 200
    signup = grafana.post("/api/user/signup", json={"email": "x@example.org"})
    assert signup.status_code in (401, 403, 404)


def test_grafana_lists_both_dashboards_and_the_datasource(
    grafana: httpx.Client, stack: Stack
) -> None:
    password = (Path(stack.ca).parent / "credentials" / "grafana-admin.password").read_text()
    auth = ("admin", password.strip())
    found = grafana.get("/api/search", params={"type": "dash-db"}, auth=auth).json()
    assert set(DASHBOARD_UIDS.values()) <= {d["uid"] for d in found}
    ds = grafana.get(f"/api/datasources/uid/{DATASOURCE_UID}", auth=auth)
    assert ds.status_code == 200 and ds.json()["type"] == "prometheus"
    health = grafana.get(f"/api/datasources/uid/{DATASOURCE_UID}/health", auth=auth)
    assert health.status_code == 200, health.text
