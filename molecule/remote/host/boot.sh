#!/bin/bash
# PID 1 of a throwaway test host: what a VM's boot does (writable cgroups, resolver, SSH
# server), then wait. dockerd is not started here: the site's docker_host role starts it.
set -euo pipefail

# dockerd needs writable cgroups: mount fresh hierarchies in the container's own cgroup namespace.
if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
  umount /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup
  # cgroup v2: move every process out of the root so controllers can be enabled for children.
  mkdir -p /sys/fs/cgroup/init
  xargs -rn1 < /sys/fs/cgroup/cgroup.procs > /sys/fs/cgroup/init/cgroup.procs 2>/dev/null || true
  sed -e 's/ / +/g' -e 's/^/+/' < /sys/fs/cgroup/cgroup.controllers > /sys/fs/cgroup/cgroup.subtree_control || true
else
  for dir in /sys/fs/cgroup/*; do
    [ -L "$dir" ] && continue
    name=$(basename "$dir")
    umount "$dir" 2>/dev/null || true
    mkdir -p "$dir"
    if [ "$name" = systemd ]; then
      mount -t cgroup -o none,name=systemd cgroup "$dir"
    else
      mount -t cgroup -o "$name" cgroup "$dir"
    fi
  done
fi

# The machine's own resolver (Docker's embedded 127.0.0.11 is not reachable from nested containers).
if [ -n "${MLGATE_TESTHOST_RESOLV:-}" ]; then
  printf '%b\n' "$MLGATE_TESTHOST_RESOLV" > /etc/resolv.conf
fi

install -d -m 0700 -o mlgate -g mlgate /home/mlgate/.ssh
printf '%s\n' "$MLGATE_TESTHOST_KEY" > /home/mlgate/.ssh/authorized_keys
chown mlgate:mlgate /home/mlgate/.ssh/authorized_keys
chmod 0600 /home/mlgate/.ssh/authorized_keys

ssh-keygen -A
mkdir -p /run/sshd
/usr/sbin/sshd -e

# Reap orphans (dockerd, started in a session of its own, ends up here) and stop on SIGTERM.
trap 'exit 0' TERM INT
while true; do
  sleep 3600 &
  wait $! || true
done
