#!/usr/bin/env bash
# `make molecule`: `molecule test -s <scenario>` for each scenario given, in order, stopping at
# the first failure, then the duration of each.
#
# Scenarios named in MOLECULE_BACKGROUND (default: remote) run alongside the others instead of
# after them: they start once the scenario named in MOLECULE_BACKGROUND_AFTER (default: api)
# has passed, because by then the caches every scenario shares exist (base image, wheelhouse,
# model), so no two scenarios build them at once. A background scenario uses its own hosts,
# network, ports and stack, so it never touches the others; its output goes to
# .mlgate/molecule-logs/<scenario>.log and is printed when it ends. MOLECULE_BACKGROUND= runs
# everything in turn.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
molecule=${MOLECULE:-molecule}  # the command (tests of this script use a stand-in)

background=" ${MOLECULE_BACKGROUND-remote} "
after=${MOLECULE_BACKGROUND_AFTER-api}
logs=.mlgate/molecule-logs
mkdir -p "$logs"
all=$(date +%s)
report=""
failed=""
declare -A pid_of=() start_of=()

start_background() {
  local s
  for s in "$@"; do
    [[ "$background" == *" $s "* && -z "${pid_of[$s]:-}" ]] || continue
    rm -f "$logs/$s.rc"
    start_of[$s]=$(date +%s)
    ("$molecule" test -s "$s" </dev/null >"$logs/$s.log" 2>&1; echo $? >"$logs/$s.rc") &
    pid_of[$s]=$!
    echo "molecule: $s started in the background (log: $logs/$s.log)"
  done
}

# Nothing to wait for when the trigger scenario is not part of this run.
[[ " $* " == *" $after "* ]] || start_background "$@"

for s in "$@"; do
  # Background scenarios: started already, or to be started once $after has passed.
  [[ -n "${pid_of[$s]:-}" ]] && continue
  [[ "$background" == *" $s "* && " $* " == *" $after "* ]] && continue
  start=$(date +%s)
  if ! "$molecule" test -s "$s"; then
    echo "molecule: $s FAILED after $(($(date +%s) - start)) s"
    failed=$s
    break
  fi
  report+="  $s $(($(date +%s) - start)) s"$'\n'
  [[ "$s" == "$after" ]] && start_background "$@"
done

for s in "${!pid_of[@]}"; do
  echo "molecule: waiting for $s (background)"
  wait "${pid_of[$s]}"
  rc=$(cat "$logs/$s.rc" 2>/dev/null || echo 1)
  took=$(($(stat -c %Y "$logs/$s.rc" 2>/dev/null || date +%s) - start_of[$s]))
  echo "==> molecule: $s (background), $logs/$s.log <=="
  cat "$logs/$s.log"
  if [[ "$rc" != 0 ]]; then
    echo "molecule: $s FAILED after $took s"
    failed=${failed:-$s}
  else
    report+="  $s $took s (in the background)"$'\n'
  fi
done

printf 'molecule: durations\n%s  total %s s\n' "$report" "$(($(date +%s) - all))"
[[ -z "$failed" ]]
