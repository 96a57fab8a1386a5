"""``make bench``: the gateway under load, four configurations in one run, same model and payload.

1. reference: the exam-style app (one uvicorn process, ``pipeline.predict`` +
   ``predict_proba`` per request) behind the same nginx role and configuration (HTTPS,
   basic auth), stack ``mlgate-bench-ref``;
2. direct: one mlgate API replica, no nginx (plain HTTP to its address on the stack network);
3. gateway: the full mlgate gateway (HTTPS, basic auth, 3 v1 replicas), stack ``mlgate-bench``,
   through its published port on 127.0.0.1 (so through Docker's userland proxy);
4. gateway-internal: the same gateway at its container address, the path (2) takes;
5. gateway-shadow: the full gateway again, redeployed with a shadow variant that gets a copy
   of every default-route request (``{shadow: 100}``, comparing each with its reference model),
   through the published port like (3): what a 100 % shadow costs the clients;
6. gateway-shadow-paused: the same with the shadow container paused (a shadow that never
   answers: each copy waits out ``nginx_shadow_timeout_ms``);
7. gateway-shadow-killed: the same with the shadow container killed (its address is gone);
   it is started again afterwards.

The benchmark client's address is on the stacks' documented rate-limit exemption list
(bench/stack*.yml). Each configuration runs with wrk at 16 and 64 connections, 3 times
(<= 30 s each); the report gives req/s min/median/max, median p50/p99, the CPU seconds used by
nginx, the API containers, docker-proxy and the engine, memory per container, and the ratios
(3)/(1), (3)/(2), (4)/(2), (5)/(3), (6)/(3) and (7)/(3).
Writes bench/results/gateway.json and bench/results/gateway.md.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import docker
import yaml

from bench.api import stop, wait_ready

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "post.lua"
RESULTS = ROOT / "bench" / "results"
STACK = ROOT / "bench" / "stack.yml"
REF_STACK = ROOT / "bench" / "stack-reference.yml"
PLAYBOOK = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "playbooks/site.yml"]


CONFIGURATIONS = [
    "reference", "direct", "gateway", "gateway-internal",
    "gateway-shadow", "gateway-shadow-paused", "gateway-shadow-killed",
]  # fmt: skip


def playbook(vars_file: Path, *args: str) -> None:
    cmd = [*PLAYBOOK, "-e", f"@{vars_file}", *args]
    print("$", " ".join(cmd[1:]), flush=True)
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        sys.stderr.write(res.stdout[-4000:] + res.stderr[-2000:])
        raise SystemExit(f"bench: playbook failed ({vars_file.name})")


def wrk(url: str, seconds: int, connections: int, auth: str | None) -> dict[str, Any]:
    env = dict(os.environ, MLGATE_BENCH_AUTH=auth or "")
    cmd = [
        "wrk",
        "-t2",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(LUA),
        url,
    ]
    res = subprocess.run(
        cmd, capture_output=True, text=True, timeout=seconds + 30, check=True, env=env
    )
    for line in res.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            return json.loads(line[len("WRK_JSON ") :])
    raise RuntimeError(f"no summary from wrk:\n{res.stdout}\n{res.stderr}")


def cpu_seconds(containers: list, host_pids: list[int]) -> float:
    """CPU seconds used so far by these containers (cgroup) and host processes (/proc)."""
    total = 0.0
    for c in containers:
        total += c.stats(stream=False)["cpu_stats"]["cpu_usage"]["total_usage"] / 1e9
    tick = os.sysconf("SC_CLK_TCK")
    for pid in host_pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended (a healthcheck's shim)
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def memory_mib(containers: list) -> dict[str, float]:
    out = {}
    for c in containers:
        mem = c.stats(stream=False)["memory_stats"]
        usage = mem.get("usage", 0) - mem.get("stats", {}).get("cache", 0)
        out[c.name] = round(usage / 2**20, 1)
    return out


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rps = [r["rps"] for r in runs]
    return {
        "rps_min": round(min(rps)),
        "rps_median": round(statistics.median(rps)),
        "rps_max": round(max(rps)),
        "p50_ms": round(statistics.median(r["p50_ms"] for r in runs), 2),
        "p99_ms": round(statistics.median(r["p99_ms"] for r in runs), 2),
        "errors": sum(r["errors"] for r in runs),
        "non_2xx": sum(r["non_2xx"] for r in runs),
    }


Groups = dict[str, tuple[list, list[int]]]  # group -> (containers, host pids)


def measure(name: str, url: str, auth: str | None, groups: Groups, args) -> dict[str, Any]:
    wrk(url, 2, 16, auth)  # warm-up: connections, TLS sessions, worker caches
    result: dict[str, Any] = {"name": name, "url": url, "by_connections": {}}
    for conns in (16, 64):
        before = {g: cpu_seconds(*members) for g, members in groups.items()}
        runs = []
        for i in range(args.runs):
            r = wrk(url, args.seconds, conns, auth)
            print(
                f"  {name:10s} c={conns:<3d} run {i + 1}: {r['rps']:8.0f} req/s  "
                f"p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
                f"errors {r['errors']} non-2xx {r['non_2xx']}",
                flush=True,
            )
            runs.append(r)
        wall = args.runs * args.seconds
        cores = {
            g: round((cpu_seconds(*members) - before[g]) / wall, 2) for g, members in groups.items()
        }
        result["by_connections"][str(conns)] = {**summarize(runs), "runs": runs, "cores": cores}
    return result


def proxy_pids(port: int) -> list[int]:
    """PIDs of Docker's userland proxies that forward a published host port."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"docker-proxy") and str(port).encode() in args:
            pids.append(int(cmdline.parent.name))
    return pids


def engine_pids() -> list[int]:
    """PIDs of the Docker engine's own processes (dockerd, containerd, the shims): they carry
    every container's stdout into the json-file logs, so a chatty access log costs CPU here."""
    pids = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            name = comm.read_text().strip()
        except OSError:
            continue
        if name in ("dockerd", "containerd") or name.startswith("containerd-shim"):
            pids.append(int(comm.parent.name))
    return pids


def shadow_variants(stack: dict) -> list[dict]:
    """Today's pair and a shadow of the same model that gets a copy of every default-route
    request (it compares each with the default route's model, its reference)."""
    return [
        {"name": "v1", "replicas": int(stack.get("mlgate_api_v1_replicas", 3)), "route": "default"},
        {
            "name": "v2",
            "replicas": 1,
            "debug": True,
            "route": {"header": "X-Experiment-Group", "value": "debug"},
        },
        {"name": "shadow", "route": {"shadow": 100}},
    ]


def stack_containers(engine, stack: str) -> list:
    return sorted(
        engine.containers.list(filters={"label": f"io.mlgate.stack={stack}"}), key=lambda c: c.name
    )


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Gateway benchmark ({report['when']}, {report['cpus']} cores)",
        "",
        f"wrk -t2, {report['seconds']} s per run, {report['runs']} runs per row; "
        "req/s min / median / max, latency medians.",
        "",
        "| configuration | conns | req/s min | median | max | p50 ms | p99 ms | errors | "
        "CPU cores: nginx / api / docker-proxy / engine |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cfg in report["configurations"]:
        for conns, s in cfg["by_connections"].items():
            lines.append(
                f"| {cfg['name']} | {conns} | {s['rps_min']} | {s['rps_median']} | {s['rps_max']} "
                f"| {s['p50_ms']} | {s['p99_ms']} | {s['errors'] + s['non_2xx']} "
                f"| {s['cores'].get('nginx', 0)} / {s['cores'].get('api', 0)} / "
                f"{s['cores'].get('docker-proxy', 0)} / {s['cores'].get('engine', 0)} |"
            )
    lines += ["", "| ratio (median req/s, 64 connections) | value | target |", "|---|---|---|"]
    for key, target in (
        ("gateway/reference", ">= 5"),
        ("gateway/direct", ">= 0.6"),
        ("gateway-internal/direct", ">= 0.6"),
        ("gateway-shadow/gateway", "(cost of a 100 % shadow)"),
        ("gateway-shadow-paused/gateway", "(a shadow that never answers)"),
        ("gateway-shadow-killed/gateway", "(a dead shadow)"),
    ):
        lines.append(f"| {key} | {report['ratios'].get(key, 'not measured')} | {target} |")
    for cfg in report["configurations"]:
        if cfg["name"] in ("gateway", "gateway-internal"):
            p99 = cfg["by_connections"]["64"]["p99_ms"]
            lines += [f"| {cfg['name']} p99 at 64 connections (ms) | {p99} | < 30 |"]
    lines += ["", f"Stack settings: {', '.join(report['settings']) or 'defaults'}", ""]
    lines += ["| container | memory MiB |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report["memory_mib"].items()]
    lines += [f"| **stack total** | **{report['memory_total_mib']}** |", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=int, default=10, help="wrk duration per run (max 30)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--reuse", action="store_true", help="reuse the deployed bench stacks")
    p.add_argument("--keep", action="store_true", help="leave the bench stacks running")
    p.add_argument(
        "--set", action="append", default=[], metavar="VAR=VALUE",
        help="extra variable for the mlgate stack (tuning runs), e.g. --set api_workers=1",
    )  # fmt: skip
    p.add_argument(
        "--only", default=",".join(CONFIGURATIONS),
        help="comma-separated configurations to measure (default: all seven)",
    )  # fmt: skip
    args = p.parse_args(argv)
    only = set(args.only.split(","))
    if only - set(CONFIGURATIONS):
        p.error(f"--only: unknown {sorted(only - set(CONFIGURATIONS))}, known {CONFIGURATIONS}")
    tuning = [arg for pair in args.set for arg in ("-e", pair)]
    args.seconds = max(1, min(args.seconds, 30))

    bench = yaml.safe_load(STACK.read_text())
    ref = yaml.safe_load(REF_STACK.read_text())
    ref_host, ref_port = ref["nginx_upstreams"][0]["servers"][0].rsplit(":", 1)
    engine = docker.from_env()
    ref_proc = None
    shadow: list = []
    try:
        if not args.reuse:
            playbook(STACK, *tuning)
        if "reference" in only:
            if not args.reuse:  # the network the reference binds to
                playbook(REF_STACK, "--tags", "docker_host")
            ref_proc = subprocess.Popen(
                [str(ROOT / ".venv/bin/python"), "-m", "uvicorn", "bench.reference_app:app",
                 "--host", ref_host, "--port", ref_port, "--log-level", "warning",
                 "--no-access-log"],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            )  # fmt: skip
            wait_ready(f"http://{ref_host}:{ref_port}/docs", ref_proc)
            if not args.reuse:
                playbook(REF_STACK, "--tags", "docker_host,certs,htpasswd,nginx")

        def auth(stack: dict) -> str:
            secret = ROOT / ".mlgate" / stack["mlgate_stack_name"] / "credentials/mlgate.password"
            if not secret.exists():  # a stack not deployed (--only without it)
                return ""
            token = f"mlgate:{secret.read_text().strip()}"
            return "Basic " + base64.b64encode(token.encode()).decode()

        main_containers = stack_containers(engine, bench["mlgate_stack_name"])
        ref_containers = stack_containers(engine, ref["mlgate_stack_name"])
        replica = next(c for c in main_containers if c.name.endswith("-api-v1-1"))
        # the replicas live on the stack's internal API network
        name = bench["mlgate_stack_name"]
        address = replica.attrs["NetworkSettings"]["Networks"][f"{name}-api-net"]
        direct_url = f"http://{address['IPAddress']}:8000/predict"
        # nginx runs in its network holder's namespace, which alone holds the addresses
        holder = engine.containers.get(f"{name}-nginx-netns")
        nginx_address = holder.attrs["NetworkSettings"]["Networks"][f"{name}-net"]["IPAddress"]
        nginx_ref = [c for c in ref_containers if c.name.endswith("-nginx")]
        nginx_main = [c for c in main_containers if c.name.endswith("-nginx")]
        v1 = [c for c in main_containers if "-api-v1-" in c.name]
        configs = [
            ("reference", f"https://127.0.0.1:{ref['mlgate_https_port']}/predict", auth(ref),
             {"nginx": (nginx_ref, []), "api": ([], [ref_proc.pid] if ref_proc else []),
              "docker-proxy": ([], proxy_pids(ref["mlgate_https_port"])),
              "engine": ([], engine_pids())}),
            ("direct", direct_url, None,
             {"nginx": ([], []), "api": ([replica], []), "engine": ([], engine_pids())}),
            ("gateway", f"https://127.0.0.1:{bench['mlgate_https_port']}/predict", auth(bench),
             {"nginx": (nginx_main, []), "api": (v1, []),
              "docker-proxy": ([], proxy_pids(bench["mlgate_https_port"])),
              "engine": ([], engine_pids())}),
            # The same gateway reached the way "direct" reaches its replica (the container's
            # address): no userland proxy, so (4)/(2) compares like with like.
            ("gateway-internal", f"https://{nginx_address}:443/predict", auth(bench),
             {"nginx": (nginx_main, []), "api": (v1, []), "engine": ([], engine_pids())}),
        ]  # fmt: skip
        results = []
        for name, url, token, groups in [c for c in configs if c[0] in only]:
            print(f"== {name}: {url}", flush=True)
            results.append(measure(name, url, token, groups, args))
        memory = memory_mib(main_containers)
        shadowing = [c for c in CONFIGURATIONS if c.startswith("gateway-shadow") and c in only]
        if shadowing:
            # last: the same stack with a shadow of every default-route request; then with that
            # shadow paused, then killed (started again at the end)
            shadowed = {"mlgate_variants": shadow_variants(bench)}
            playbook(STACK, *tuning, "-e", json.dumps(shadowed), "--tags", "api,nginx")
            shadow = [c for c in stack_containers(engine, bench["mlgate_stack_name"])
                      if "-api-shadow-" in c.name]  # fmt: skip
            url = f"https://127.0.0.1:{bench['mlgate_https_port']}/predict"
            for name in shadowing:
                trouble = name.removeprefix("gateway-shadow").lstrip("-")
                for container in shadow:
                    if trouble == "paused":
                        container.pause()
                    elif trouble == "killed":
                        container.reload()
                        if container.status == "paused":
                            container.unpause()
                        container.kill()
                print(f"== {name}: {url}", flush=True)
                results.append(measure(
                    name, url, auth(bench),
                    {"nginx": (nginx_main, []), "api": (v1 + (shadow if not trouble else []), []),
                     "docker-proxy": ([], proxy_pids(bench["mlgate_https_port"])),
                     "engine": ([], engine_pids())}, args,
                ))  # fmt: skip
    finally:
        for container in shadow:  # back to running, whatever the last row did to it
            container.reload()
            if container.status == "paused":
                container.unpause()
            elif container.status != "running":
                container.start()
        if ref_proc is not None:
            stop(ref_proc)
        if not args.keep:
            for vars_file in (REF_STACK, STACK):
                subprocess.run(
                    [str(ROOT / ".venv/bin/ansible-playbook"), "playbooks/teardown.yml",
                     "-e", f"@{vars_file}", "-e", "mlgate_teardown_purge=true"],
                    cwd=ROOT, capture_output=True, check=False,
                )  # fmt: skip

    med = {r["name"]: r["by_connections"]["64"]["rps_median"] for r in results}
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "seconds": args.seconds,
        "runs": args.runs,
        "configurations": results,
        "settings": args.set,
        "ratios": {
            f"{top}/{base}": round(med[top] / med[base], 2)
            for top, base in (
                ("gateway", "reference"),
                ("gateway", "direct"),
                ("gateway-internal", "direct"),
                ("gateway-shadow", "gateway"),
                ("gateway-shadow-paused", "gateway"),
                ("gateway-shadow-killed", "gateway"),
            )
            if top in med and base in med
        },
        "memory_mib": memory,
        "memory_total_mib": round(sum(memory.values()), 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gateway.json").write_text(json.dumps(report, indent=2) + "\n")
    md = markdown(report)
    (RESULTS / "gateway.md").write_text(md)
    print()
    print(md)
    print("(written to bench/results/gateway.json and gateway.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
