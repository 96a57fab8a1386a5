#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine: install Debian's docker.io when the
# engine (dockerd) is missing, start the engine (systemd when present, else dockerd in the
# background) and wait for `docker info`. Used by .ci/run and `make docker`.
set -euo pipefail

log=${MLGATE_DOCKERD_LOG:-/var/log/mlgate-dockerd.log}
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)

# A docker CLI alone (e.g. a static client in /usr/local/bin) is not an engine: look for dockerd.
if ! command -v dockerd >/dev/null 2>&1; then
  echo "ensure-docker: no dockerd here, installing docker.io"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq docker.io >/dev/null
fi

if docker info >/dev/null 2>&1; then
  exit 0
fi

if [ -d /run/systemd/system ]; then
  "${sudo_cmd[@]}" systemctl start docker
else
  echo "ensure-docker: starting dockerd in the background (log: $log)"
  # its own session: a hang-up of this shell's session must not reach dockerd's docker-proxy children
  "${sudo_cmd[@]}" setsid -f sh -c "exec dockerd >>'$log' 2>&1 </dev/null"
fi

for _ in $(seq 60); do
  docker info >/dev/null 2>&1 && { echo "ensure-docker: engine ready"; exit 0; }
  sleep 1
done
echo "ensure-docker: the Docker engine did not answer within 60 s; see $log" >&2
exit 1
