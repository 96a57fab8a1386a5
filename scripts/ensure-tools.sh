#!/usr/bin/env bash
# Install the Debian packages the tests and benchmarks call on this machine (when missing),
# then make sure a Docker engine runs. Used by `make tools` (a step of `make test`) and .ci/run,
# so `make test` works on a fresh Debian machine without any other preparation.
#   debootstrap            base image when no registry is reachable (docker_host role)
#   wrk                    load for `make bench` and `make bench-api`
#   testssl.sh             TLS scan in the e2e suite
#   curl openssl make git  used by the scripts and the README's examples
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(debootstrap wrk testssl.sh curl openssl make git)
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo -n)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-tools: missing ${missing[*]} and no apt-get here: install them yourself" >&2
    exit 1
  fi
  echo "ensure-tools: installing ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a "${sudo_cmd[@]}" \
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

scripts/ensure-docker.sh
