#!/usr/bin/env python3
"""How long each Molecule scenario's phases took, read off a `make molecule` / `make test` log.

    python3 scripts/molecule_phases.py LOG [LOG ...]

A log is a scenario's own (`.mlgate/molecule-logs/<name>.log`) or the whole output of
`make test` (scripts/run-molecule.sh prints each scenario's log in one piece when it ends). A
phase starts at its `INFO <scenario> ➜ <phase>: Executing` line and ends at `... Executed`;
molecule prints no time there, so a phase is timed by the wall-clock lines Ansible's
`profile_tasks` callback prints (`Friday 04 December 2026  15:34:05 +0000 ...`): from the first
one after `Executing` to the last one before `Executed`. Each playbook prints one at its start
and one at its end, so a phase is timed to the second from the first task it ran to the end of
its last playbook; a phase that ran no playbook prints no figure. A phase that began and never
ended (a failed or cut-off run) is given as `<phase> <seconds>+`, timed to the last line seen.
Prints one line per scenario, the phases in the order they ran, e.g.
`remote: create 2 prepare 164 converge 452 idempotence 86 verify 545`. Standard library only:
scripts/stress-test.sh runs it with the system's python3.
"""

from __future__ import annotations

import re
import sys
from datetime import datetime
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;]*m")
STAMP = re.compile(r"\b(\w+day \d{2} \w+ \d{4}\s+\d{2}:\d{2}:\d{2})\b")
PHASE = re.compile(r"^INFO\s+(\S+) ➜ (\w+): (Executing|Executed)")


def phases(lines: list[str]) -> dict[str, list[tuple[str, str]]]:
    """{scenario: [(phase, seconds as text), ...]} in the order the phases ran."""
    result: dict[str, list[tuple[str, str]]] = {}
    running: tuple[str, str] | None = None  # (scenario, phase) between Executing and Executed
    first: datetime | None = None
    last: datetime | None = None
    for raw in lines:
        line = ANSI.sub("", raw)
        stamp = STAMP.search(line)
        if stamp:
            when = datetime.strptime(" ".join(stamp.group(1).split()), "%A %d %B %Y %H:%M:%S")
            if running is not None:
                first = first or when
                last = when
            continue
        match = PHASE.match(line.strip())
        if not match:
            continue
        scenario, phase, event = match.groups()
        if running is not None and (event == "Executing" or running != (scenario, phase)):
            _add(result, running, first, last, unfinished=True)
            running = None
        if event == "Executing":
            running, first, last = (scenario, phase), None, None
        elif running is not None:
            _add(result, running, first, last, unfinished=False)
            running = None
    if running is not None:
        _add(result, running, first, last, unfinished=True)
    return result


def _add(result, running, first, last, *, unfinished: bool) -> None:
    scenario, phase = running
    if first is None or last is None:
        return
    seconds = f"{int((last - first).total_seconds())}{'+' if unfinished else ''}"
    result.setdefault(scenario, []).append((phase, seconds))


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.split("\n\n", 2)[1].strip(), file=sys.stderr)
        return 2
    for name in argv:
        try:
            text = Path(name).read_text(errors="replace")
        except OSError as error:
            print(f"molecule_phases: cannot read {name}: {error.strerror}", file=sys.stderr)
            return 2
        for scenario, done in phases(text.splitlines()).items():
            print(f"{scenario}: " + " ".join(f"{phase} {took}" for phase, took in done))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
