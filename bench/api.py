"""``make bench-api``: predict latency (pipeline vs fast path) and HTTP throughput (wrk).

1. micro-benchmark on held-out sentences: ``pipeline.predict([s])`` vs ``Predictor.predict``;
2. wrk (POST, ``-t2 -c64``, <= 15 s per run) against, on 127.0.0.1 free ports and the
   same model: our API under gunicorn (``python -m api``, 2 workers), variants v1 and v2,
   then the exam-style reference app (one uvicorn process, pydantic, ``predict`` +
   ``predict_proba`` per request);
3. prints a table, writes ``bench/results/api.json``, and prints the ratio last.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "post.lua"
RESULTS = ROOT / "bench" / "results" / "api.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def micro(model_dir: Path, n: int) -> dict[str, Any]:
    from model.dataset import load_dataset
    from model.predictor import load_predictor
    from model.train import split

    predictor = load_predictor(model_dir)
    data = load_dataset()
    _, x_test, _, _ = split(data.texts, data.labels)
    sample = random.Random(42).sample(x_test, min(n, len(x_test)))
    pipe = predictor.pipeline
    out: dict[str, Any] = {"sentences": len(sample)}
    for name, fn in (
        ("pipeline.predict", lambda s: pipe.predict([s])),
        ("pipeline.predict+predict_proba", lambda s: (pipe.predict([s]), pipe.predict_proba([s]))),
        ("fast predict", predictor.predict),
        ("fast predict_proba", predictor.predict_proba),
    ):
        for s in sample[:50]:
            fn(s)  # warm-up
        times = []
        for s in sample:
            t0 = time.perf_counter()
            fn(s)
            times.append((time.perf_counter() - t0) * 1e6)
        out[name] = {
            "p50_us": round(statistics.median(times), 1),
            "p99_us": round(percentile(times, 99), 1),
        }
    return out


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before becoming ready")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=25)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_wrk(url: str, seconds: int, connections: int, threads: int) -> dict[str, Any]:
    cmd = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
        "-s", str(LUA), url,
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 20, check=True)
    for line in res.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            return json.loads(line[len("WRK_JSON ") :])
    raise RuntimeError(f"no summary from wrk:\n{res.stdout}\n{res.stderr}")


def bench_server(
    name: str, cmd: list[str], env: dict[str, str], port: int, args: argparse.Namespace
) -> dict[str, Any]:
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_ready(base + ("/health" if name.startswith("mlgate") else "/docs"), proc)
            # warm-up (also lets both workers create their metric files)
            run_wrk(base + "/predict", 1, args.connections, args.threads)
            result = run_wrk(base + "/predict", args.seconds, args.connections, args.threads)
        except Exception:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-3000:])
            raise
        finally:
            stop(proc)
    result["name"] = name
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", type=Path, default=ROOT / "model" / "artifacts")
    p.add_argument("--seconds", type=int, default=10, help="wrk duration per run (max 15)")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--micro", type=int, default=2000, help="sentences for the micro-benchmark")
    args = p.parse_args(argv)
    args.seconds = max(1, min(args.seconds, 15))
    if not shutil.which("wrk"):
        print("bench: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2

    print(f"== predict latency, one sentence ({args.micro} held-out sentences)", flush=True)
    m = micro(args.model_dir, args.micro)
    for key in ("pipeline.predict", "pipeline.predict+predict_proba", "fast predict",
                "fast predict_proba"):  # fmt: skip
        print(f"  {key:34s} p50 {m[key]['p50_us']:8.1f} us   p99 {m[key]['p99_us']:8.1f} us")
    speedup = m["pipeline.predict"]["p50_us"] / m["fast predict"]["p50_us"]
    print(f"  fast path speed-up (p50): {speedup:.1f}x", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="mlgate-bench-"))
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLGATE_", "PROMETHEUS_"))}
    runs: list[dict[str, Any]] = []
    try:
        for variant in ("v1", "v2"):
            port = free_port()
            env = {
                **base_env,
                "MLGATE_VARIANT": variant,
                "MLGATE_BIND": f"127.0.0.1:{port}",
                "MLGATE_WORKERS": str(args.workers),
                "MLGATE_MODEL_DIR": str(args.model_dir),
                "MLGATE_AUDIT_DIR": str(tmp / f"audit-{variant}"),
                "PROMETHEUS_MULTIPROC_DIR": str(tmp / f"metrics-{variant}"),
            }
            name = f"mlgate {variant} (gunicorn, {args.workers} workers)"
            print(f"== wrk {args.seconds}s: {name}", flush=True)
            runs.append(bench_server(name, [sys.executable, "-m", "api"], env, port, args))
        port = free_port()
        env = {**base_env, "MLGATE_MODEL_DIR": str(args.model_dir)}
        cmd = [
            sys.executable, "-m", "uvicorn", "bench.reference_app:app",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
            "--no-access-log",
        ]  # fmt: skip
        name = "reference (1 uvicorn, pipeline)"
        print(f"== wrk {args.seconds}s: {name}", flush=True)
        runs.append(bench_server(name, cmd, env, port, args))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(
        f"{'server':40s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>7s} {'non-2xx':>8s}"
    )
    for r in runs:
        print(
            f"{r['name']:40s} {r['rps']:9.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
            f"{r['errors']:7d} {r['non_2xx']:8d}"
        )
    ref = runs[-1]["rps"]
    ratio_v1 = runs[0]["rps"] / ref
    ratio_v2 = runs[1]["rps"] / ref
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "cpus": os.cpu_count(),
                "wrk": {
                    "seconds": args.seconds,
                    "connections": args.connections,
                    "threads": args.threads,
                },
                "micro": m,
                "runs": runs,
                "ratio_v1_vs_reference": round(ratio_v1, 2),
                "ratio_v2_vs_reference": round(ratio_v2, 2),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"(written to {RESULTS.relative_to(ROOT)})")
    print(f"v2 / reference: {ratio_v2:.1f}x")
    print(f"ratio mlgate v1 / reference: {ratio_v1:.1f}x (target >= 10x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
