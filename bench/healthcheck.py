"""What a container health check costs: CPU per check, for the API image's own check and others.

Usage: ``.venv/bin/python -m bench.healthcheck IMAGE [--seconds 60]``, IMAGE an mlgate API image
(``docker images '*-api'``). Runs three throwaway containers of IMAGE side by side, each serving
``python -m http.server`` on its loopback, with a check every second:

- ``python``: the check the API image had before (a Python start, ``urllib.request``);
- ``bash``: the image's own check (``_mlgate_http_check``: bash's /dev/tcp, HTTP/1.0);
- ``none``: no check (what the server costs idle).

Prints the CPU each container used (its cgroup's ``cpuacct.usage``, or ``cpu.stat`` on cgroup
v2) over the window, per check; then removes them. The checks' answers (a directory listing)
are counted in both, as the API's ``/health`` answer is in production.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import docker

PYTHON_CHECK = "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/', timeout=2)"
SECOND_NS = 1_000_000_000


def cpu_seconds(container_id: str) -> float:
    """CPU time of a container so far, cgroup v1 or v2 (cgroupfs driver)."""
    v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{container_id}/cpuacct.usage")
    if v1.exists():
        return int(v1.read_text()) / SECOND_NS
    for v2 in (
        Path(f"/sys/fs/cgroup/docker/{container_id}/cpu.stat"),
        Path(f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/cpu.stat"),
    ):
        if v2.exists():
            usage = dict(line.split() for line in v2.read_text().splitlines())
            return int(usage["usage_usec"]) / 1e6
    raise SystemExit(f"no cgroup CPU accounting found for container {container_id}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("image")
    p.add_argument("--seconds", type=int, default=60)
    args = p.parse_args()
    engine = docker.from_env()
    own = engine.images.get(args.image).attrs["Config"]["Healthcheck"]["Test"]
    assert own[:3] == ["CMD", "bash", "-c"], f"{args.image}: not the bash check: {own}"
    checks = {
        "python": ["CMD", "python", "-c", PYTHON_CHECK],
        "bash": ["CMD", "bash", "-c", own[3], "127.0.0.1", "8000", "/"],
        "none": ["NONE"],
    }
    serve = ["python", "-m", "http.server", "8000", "--bind", "127.0.0.1"]
    started = {}
    try:
        for name, test in checks.items():
            started[name] = engine.containers.run(
                args.image, serve, name=f"mlgate-bench-hc-{name}", detach=True,
                healthcheck={"test": test, "interval": SECOND_NS, "timeout": 3 * SECOND_NS},
            )  # fmt: skip
        time.sleep(8)  # past the first checks and the server's start
        before = {n: cpu_seconds(c.id) for n, c in started.items()}
        time.sleep(args.seconds)
        print(f"| check | CPU-s in {args.seconds} s | per check | health |")
        print("|---|---|---|---|")
        for name, c in started.items():
            used = cpu_seconds(c.id) - before[name]
            c.reload()
            health = c.attrs["State"].get("Health", {}).get("Status", "no check")
            per = "" if name == "none" else f"{1000 * used / args.seconds:.1f} ms"
            print(f"| {name} | {used:.2f} | {per} | {health} |")
    finally:
        for c in started.values():
            c.remove(force=True)


if __name__ == "__main__":
    main()
