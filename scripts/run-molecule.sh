#!/usr/bin/env bash
# `make molecule`: `molecule test -s <scenario>` for each scenario given, in lanes that run side
# by side, then the duration of each scenario.
#
# MOLECULE_LANES lists the lanes, separated by `|`; a lane's scenarios run one after the other
# and the lane stops at its first failure. `name@dep` waits until scenario `dep` has passed
# (and is not run if `dep` failed or was not reached). `name^dep` runs `name`'s steps up to
# `prepare` at once and waits for `dep` only before `converge` (molecule destroy, syntax,
# create, prepare; then converge, idempotence, verify; destroy in any case: `molecule test`'s
# sequence, split). Both may be given: `name@a^b`; each may list several, `name@a,b`. A dependency
# `dep.converge` is met as soon as `dep`'s converge has passed (`dep` then runs split). Default:
#   docker_host api default | certs htpasswd nginx@api,default.converge monitoring | remote@docker_host^api.converge
# The waits keep scenarios from building the same things at the same time: `api` builds what
# every scenario that deploys the API shares (wheelhouse, model; `docker_host` has built the
# base image by then), and `default`'s converge builds every gateway image, which `nginx` and
# then `monitoring` find in Docker's build cache instead of building them again beside it.
# `remote` only needs the base image for its hosts (after `docker_host`): it creates them and
# readies them (`prepare`: the site's first play, Docker engine, network, base image) while
# `api` runs, and converges once `api`'s converge has built the wheelhouse and the model (its
# hosts build their own images, in their own engines). Every
# scenario has its own stack, network and ports (and remote its own hosts), so the lanes never
# touch each other's containers. The first lane prints as it goes; every scenario's output goes
# to .mlgate/molecule-logs/<scenario>.log, and the other lanes' is printed when every lane is
# done; then, for each failed scenario, why (its failed tasks and test failures, <scenario>.why).
# Scenarios given but named in no lane run at the end of the first lane; a `@dep` that is not
# part of this run is not waited for. MOLECULE_LANES= runs every scenario in turn, in one lane.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
# Every task line carries its time and each playbook ends with its 20 slowest tasks
# (ansible.posix.profile_tasks): where a slow run spends its time is in its log.
export ANSIBLE_CALLBACKS_ENABLED=${ANSIBLE_CALLBACKS_ENABLED-ansible.posix.profile_tasks}
molecule=${MOLECULE:-molecule} # the command (tests of this script use a stand-in)
lanes_spec=${MOLECULE_LANES-docker_host api default | certs htpasswd nginx@api,default.converge monitoring | remote@docker_host^api.converge}
logs=${MOLECULE_LOGS:-.mlgate/molecule-logs} # (tests of this script use their own)
mkdir -p "$logs"
rm -f "$logs"/*.rc "$logs"/*.why "$logs"/*.took "$logs"/*.lane-done "$logs"/*.skipped "$logs"/*.converged
all=$(date +%s)

# The lanes, keeping only the scenarios of this run; lane_of[scenario] = its lane's index;
# split[scenario] set when another item waits for its converge.
declare -A lane_of=() split=()
lanes=()
IFS='|' read -r -a specs <<<"$lanes_spec"
# A lane item: name, name@deps (wait before starting), name^deps (wait before converge),
# name@a^b; deps: comma-separated scenarios or scenario.converge.
parse_item() {
  [[ "$1" =~ ^([^@^.,]+)(@([^@^]+))?(\^([^@^]+))?$ ]] || {
    echo "molecule: cannot read lane item '$1'" >&2
    exit 2
  }
  name=${BASH_REMATCH[1]} dep=${BASH_REMATCH[3]} late_dep=${BASH_REMATCH[5]}
}
for spec in "${specs[@]}"; do
  lane=""
  for item in $spec; do
    parse_item "$item"
    [[ " $* " == *" $name "* ]] || continue
    lane+="$item "
    lane_of[$name]=${#lanes[@]}
    for d in ${dep//,/ } ${late_dep//,/ }; do
      [[ "$d" == *.converge ]] && split[${d%.converge}]=1
    done
  done
  [[ -n "$lane" ]] && lanes+=("$lane")
done
rest=""
for s in "$@"; do
  [[ -n "${lane_of[$s]+x}" ]] || rest+="$s "
done
if [[ -n "$rest" ]]; then
  if [[ ${#lanes[@]} -eq 0 ]]; then lanes=("$rest"); else lanes[0]+="$rest"; fi
fi

# Wait until scenario $1 has a result; succeed only if it passed. A scenario that never runs
# (its lane stopped earlier) counts as not passed once its lane is done. `name.converge`: until
# that scenario's converge has passed (not if it ended without).
wait_for() {
  local dep=${1%.converge}
  while :; do
    [[ "$1" == *.converge && -f "$logs/$dep.converged" ]] && return 0
    [[ -f "$logs/$dep.rc" ]] && { [[ "$1" != *.converge && "$(cat "$logs/$dep.rc")" == 0 ]]; return; }
    [[ -f "$logs/${lane_of[$dep]}.lane-done" ]] && return 1
    sleep 2
  done
}

# Wait for each dependency of the comma-separated list $1 that is part of this run; fail (and
# print it) at the first one that did not pass. Succeeds with nothing to wait for.
await() {
  local d
  for d in ${1//,/ }; do
    [[ -n "${lane_of[${d%.converge}]+x}" ]] || continue
    wait_for "$d" || {
      echo "$d"
      return 1
    }
  done
}

# Does the comma-separated list $1 name a dependency that is part of this run?
any_in_run() {
  local d
  for d in ${1//,/ }; do
    [[ -n "${lane_of[${d%.converge}]+x}" ]] && return 0
  done
  return 1
}

# `molecule <step> -s <scenario>` for each step given, in turn, until one fails; output to the
# terminal on the first lane, to the scenario's log on the others. Returns the failed step's rc.
steps() {
  local lane=$1 s=$2 step rc
  shift 2
  for step in "$@"; do
    if [[ "$lane" == 0 ]]; then
      "$molecule" "$step" -s "$s" </dev/null 2>&1 | tee -a "$logs/$s.log"
      rc=${PIPESTATUS[0]}
    else
      "$molecule" "$step" -s "$s" </dev/null >>"$logs/$s.log" 2>&1
      rc=$?
    fi
    [[ "$rc" == 0 ]] || return "$rc"
  done
}

# Why a scenario failed, from its log ($1), colours removed: each failed task (`fatal:`,
# `failed:`) and the 30 lines after it, and every line of a pytest failure summary (`FAILED
# tests/...`, also where molecule wrapped the test id onto the next lines; `E   ...`, the
# exception lines of any type; `file.py:N: SomeError`; `N failed`). At most 150 lines: the first
# 50 and the last 100. A long log's middle is what a CI excerpt leaves out; this is printed last
# (and `make test` prints it after the checks). mawk (Debian's awk) knows no `{n}` intervals.
why() {
  sed 's/\x1b\[[0-9;]*m//g' "$1" | awk '
    /fatal: \[|failed: \[/ { left = 30 }
    wrapped > 0 { wrapped--; keep(); next }
    /(FAILED|ERROR)[ \t]*$/ { wrapped = 2; keep(); next }
    /(FAILED|ERROR) [^ ]*(\.py|::)|[ '"'"'"]E   |[ '"'"'"]E$|\.py:[0-9]+: [A-Za-z_.]*(Error|Exception|Timeout)|[0-9]+ (failed|errors?)[, ]/ { keep(); next }
    left > 0 { left--; keep() }
    function keep() { kept[++n] = $0 }
    END {
      for (i = 1; i <= n; i++) {
        if (i == 51 && n > 150) print "(" n - 150 " lines of the digest left out here)"
        if (i <= 50 || i > n - 100) print kept[i]
      }
    }'
}

# Run lane $1: its scenarios in turn; stop at the first failure or failed dependency.
run_lane() {
  local i=$1 item s start rc name dep late_dep missed
  for item in ${lanes[$i]}; do
    parse_item "$item"
    s=$name
    if ! missed=$(await "$dep"); then
      echo "molecule: $s not run: $missed did not pass"
      echo "not run: $missed did not pass" >"$logs/$s.skipped"
      break
    fi
    start=$(date +%s)
    : >"$logs/$s.log"
    if any_in_run "$late_dep" || [[ -n "${split[$s]+x}" ]]; then
      steps "$i" "$s" destroy syntax create prepare
      rc=$?
      if [[ "$rc" == 0 ]] && ! missed=$(await "$late_dep"); then
        echo "molecule: $s stopped after prepare: $missed did not pass"
        echo "stopped after prepare: $missed did not pass" >"$logs/$s.skipped"
        steps "$i" "$s" destroy
        break
      fi
      [[ "$rc" == 0 ]] && steps "$i" "$s" converge && touch "$logs/$s.converged" &&
        steps "$i" "$s" idempotence verify
      rc=$?
      steps "$i" "$s" destroy || [[ "$rc" != 0 ]] || rc=1
    else
      steps "$i" "$s" test
      rc=$?
    fi
    echo $(($(date +%s) - start)) >"$logs/$s.took"
    echo "$rc" >"$logs/$s.rc"
    if [[ "$rc" != 0 ]]; then
      [[ "$i" == 0 ]] && echo "molecule: $s FAILED after $(cat "$logs/$s.took") s"
      break
    fi
  done
  touch "$logs/$i.lane-done"
}

pids=()
for ((i = 1; i < ${#lanes[@]}; i++)); do
  run_lane "$i" &
  pids+=($!)
  echo "molecule: lane $((i + 1)): ${lanes[$i]}(log: $logs/<scenario>.log)"
done
[[ ${#lanes[@]} -gt 0 ]] && run_lane 0
if [[ ${#pids[@]} -gt 0 ]]; then
  echo "molecule: waiting for the other lanes"
  wait "${pids[@]}"
fi

report=""
failed=""
for ((i = 0; i < ${#lanes[@]}; i++)); do
  where=""
  [[ "$i" -gt 0 ]] && where=" (lane $((i + 1)))"
  for item in ${lanes[$i]}; do
    parse_item "$item"
    s=$name
    if [[ "$i" -gt 0 && -f "$logs/$s.log" ]]; then
      echo "==> molecule: $s$where, $logs/$s.log <=="
      cat "$logs/$s.log"
    fi
    if [[ -f "$logs/$s.skipped" ]]; then
      failed=${failed:-$s}
      report+="  $s $(cat "$logs/$s.skipped")$where"$'\n'
    elif [[ -f "$logs/$s.rc" ]]; then
      if [[ "$(cat "$logs/$s.rc")" != 0 ]]; then
        failed=${failed:-$s}
        [[ "$i" -gt 0 ]] && echo "molecule: $s FAILED after $(cat "$logs/$s.took") s$where"
        report+="  $s FAILED after $(cat "$logs/$s.took") s$where"$'\n'
      else
        report+="  $s $(cat "$logs/$s.took") s$where"$'\n'
      fi
    fi
  done
done

for s in "$@"; do
  if [[ -f "$logs/$s.rc" && "$(cat "$logs/$s.rc")" != 0 && -f "$logs/$s.log" ]]; then
    why "$logs/$s.log" >"$logs/$s.why"
    echo "==> molecule: why $s failed ($logs/$s.why, from $logs/$s.log) <=="
    cat "$logs/$s.why"
  fi
done
printf 'molecule: durations\n%s  total %s s\n' "$report" "$(($(date +%s) - all))"
[[ -z "$failed" ]]
