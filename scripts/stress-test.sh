#!/usr/bin/env bash
# `make stress` / scripts/stress-test.sh [RUNS]: `make test` as a new user's machine runs it,
# under CPU contention, RUNS times in a row (default 1), stopping at the first red run.
#
# Each run:
#   1. clones the committed HEAD of this checkout into a fresh directory beside it (so
#      ../shared/data is found as in CI), with no .venv, no .mlgate/ (wheelhouse, controller
#      files) and no model;
#   2. removes the Docker caches a new machine lacks: every mlgate image (the base image
#      mlgate-base:bookworm, the test host and test client images, every stack's images) that no
#      container uses, then Docker's build cache (`docker builder prune -af`);
#   3. runs `make test` there with pip's cache off (PIP_NO_CACHE_DIR=1: the venvs and the
#      wheelhouse are downloaded again) while `stress-ng --cpu 1` keeps one of the cores busy
#      for the whole run;
#   4. prints the run's duration, each Molecule scenario's duration, each scenario's phases
#      (scripts/molecule_phases.py: create, prepare, converge, idempotence, verify...) and
#      every failure line.
# The clone is removed after a green run and kept after a red one (its path is printed).
#
# It changes this machine's Docker caches: run it on a test machine, not beside a deployment
# you care about (running stacks keep their containers; their images stay as they are in use).
# It must not run while another `make test` runs here: both use the same Molecule stacks.
# Environment: STRESS_CPU_WORKERS (default 1), STRESS_KEEP=1 keeps every clone.
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-1}
workers=${STRESS_CPU_WORKERS:-1}
parent=$(dirname "$top")
summary=""
hog=""

cleanup() {
  if [[ -n "$hog" ]]; then
    kill "$hog" 2>/dev/null
    wait "$hog" 2>/dev/null
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! command -v stress-ng >/dev/null; then
  echo "stress-test: installing stress-ng"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q stress-ng >/dev/null || exit 2
fi
"$top/scripts/ensure-docker.sh" || exit 2

remove_caches() {
  local images
  # mlgate images: the stacks' images carry io.mlgate.stack; the caches shared by all stacks
  # (base image, test host and test client) are known by name.
  images=$( (docker images --filter label=io.mlgate.stack --format '{{.Repository}}:{{.Tag}}'
    docker images --format '{{.Repository}}:{{.Tag}}' |
      grep -E '^(mlgate-base|mlgate-testhost|mlgate-testclient|mlgate-[a-z0-9-]+|molecule-[a-z0-9_-]+):') |
    sort -u)
  if [[ -n "$images" ]]; then
    # in-use images (a running deployment's) are refused by docker rmi without -f: they stay
    xargs -r docker rmi <<<"$images" >/dev/null 2>&1
  fi
  docker image prune -f >/dev/null
  docker builder prune -af >/dev/null
  echo "stress-test: caches removed; mlgate images left (in use): $(docker images --format '{{.Repository}}' | grep -cE '^(mlgate|molecule)-' || true)"
}

for ((run = 1; run <= runs; run++)); do
  clone="$parent/mlgate-stress-$(date +%Y%m%d-%H%M%S)"
  git clone --quiet "$top" "$clone" || exit 2
  echo "stress-test: run $run/$runs of $(git -C "$clone" rev-parse --short HEAD) in $clone"
  remove_caches
  stress-ng --cpu "$workers" --timeout 3h --quiet &
  hog=$!
  started=$(date +%s)
  (cd "$clone" && PIP_NO_CACHE_DIR=1 make test) >"$clone.log" 2>&1
  rc=$?
  took=$(($(date +%s) - started))
  cleanup
  hog=""
  echo "stress-test: run $run: make test exit $rc after $took s (log: $clone.log)"
  echo "stress-test: durations:"
  sed -n '/^molecule: durations/,/total/p' "$clone.log" | sed 's/^/  /'
  echo "stress-test: phases (s; + marks one cut off):"
  python3 "$top/scripts/molecule_phases.py" "$clone.log" | sed 's/^/  /'
  failures=$(grep -E '^(FAILED|ERROR) |molecule: .* FAILED|^E +assert|^make: \*\*\*' "$clone.log" | head -30)
  [[ -n "$failures" ]] && printf 'stress-test: failures:\n%s\n' "$failures"
  summary+="  run $run: exit $rc, $took s"$'\n'
  if [[ "$rc" != 0 ]]; then
    echo "stress-test: red; clone kept in $clone"
    printf 'stress-test: summary\n%s' "$summary"
    exit 1
  fi
  [[ "${STRESS_KEEP:-}" == 1 ]] || rm -rf "$clone"
done
printf 'stress-test: summary (%s green in a row)\n%s' "$runs" "$summary"
