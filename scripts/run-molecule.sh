#!/usr/bin/env bash
# `make molecule`: `molecule test -s <scenario>` for each scenario given, in order, stopping at
# the first failure, then the duration of each.
#
# Two lanes. The scenarios named in MOLECULE_BACKGROUND (default: remote monitoring) run in a
# second lane, one after the other in that order, alongside the first. That lane starts
# once the scenario in MOLECULE_BACKGROUND_AFTER (default: api) has passed: by then the caches
# every scenario shares exist (base image, wheelhouse, model), so no two scenarios build them at
# once. Every scenario has its own stack, network, ports (and remote its own hosts), so the
# lanes never touch each other's containers. The second lane's output goes to
# .mlgate/molecule-logs/<scenario>.log and is printed when the first lane is done.
# MOLECULE_BACKGROUND= runs everything in turn.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
molecule=${MOLECULE:-molecule} # the command (tests of this script use a stand-in)

read -r -a wanted_bg <<<"${MOLECULE_BACKGROUND-remote monitoring}"
after=${MOLECULE_BACKGROUND_AFTER-api}
logs=.mlgate/molecule-logs
mkdir -p "$logs"
all=$(date +%s)
report=""
failed=""
lane_pid=""

# The second lane: the MOLECULE_BACKGROUND scenarios that are part of this run, in that order.
lane=()
for s in "${wanted_bg[@]}"; do
  [[ " $* " == *" $s "* ]] && lane+=("$s")
done

start_lane() {
  [[ ${#lane[@]} -gt 0 && -z "$lane_pid" ]] || return 0
  rm -f "$logs"/*.rc "$logs"/*.took
  (
    for s in "${lane[@]}"; do
      start=$(date +%s)
      "$molecule" test -s "$s" </dev/null >"$logs/$s.log" 2>&1
      rc=$?
      echo "$rc" >"$logs/$s.rc"
      echo $(($(date +%s) - start)) >"$logs/$s.took"
      [[ "$rc" == 0 ]] || exit 1
    done
  ) &
  lane_pid=$!
  echo "molecule: started ${lane[*]} in a second lane (logs: $logs/<scenario>.log)"
}

# Without the trigger scenario in this run, the second lane starts at once.
[[ " $* " == *" $after "* ]] || start_lane

for s in "$@"; do
  [[ " ${lane[*]} " == *" $s "* ]] && continue
  start=$(date +%s)
  if ! "$molecule" test -s "$s"; then
    echo "molecule: $s FAILED after $(($(date +%s) - start)) s"
    failed=$s
    break
  fi
  report+="  $s $(($(date +%s) - start)) s"$'\n'
  [[ "$s" == "$after" ]] && start_lane
done

if [[ -n "$lane_pid" ]]; then
  echo "molecule: waiting for the second lane (${lane[*]})"
  wait "$lane_pid"
  for s in "${lane[@]}"; do
    [[ -f "$logs/$s.rc" ]] || continue # not reached: an earlier scenario of the lane failed
    echo "==> molecule: $s (second lane), $logs/$s.log <=="
    cat "$logs/$s.log"
    if [[ "$(cat "$logs/$s.rc")" != 0 ]]; then
      echo "molecule: $s FAILED after $(cat "$logs/$s.took") s"
      failed=${failed:-$s}
    else
      report+="  $s $(cat "$logs/$s.took") s (second lane)"$'\n'
    fi
  done
fi

printf 'molecule: durations\n%s  total %s s\n' "$report" "$(($(date +%s) - all))"
[[ -z "$failed" ]]
