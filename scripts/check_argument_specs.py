#!/usr/bin/env python3
"""Check that every role's meta/argument_specs.yml documents exactly the keys of defaults/main.yml.

Also checks that each documented default equals the value in defaults/main.yml, so the two
files cannot drift apart. Exit status 1 lists every mismatch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml


def entry_point(specs: dict) -> dict:
    """The entry point that documents defaults/main.yml: `main`, or `settings` for a role whose
    settings are checked once per run instead of at each inclusion (`mlgate`)."""
    entries = specs["argument_specs"]
    return entries["main"] if "main" in entries else entries["settings"]


def check_role(role: Path) -> list[str]:
    defaults_file = role / "defaults" / "main.yml"
    specs_file = role / "meta" / "argument_specs.yml"
    if not specs_file.exists():
        return [f"{role.name}: meta/argument_specs.yml is missing"]
    defaults = yaml.safe_load(defaults_file.read_text()) if defaults_file.exists() else {}
    defaults = defaults or {}
    options = entry_point(yaml.safe_load(specs_file.read_text())).get("options") or {}
    problems = []
    for key in sorted(set(defaults) - set(options)):
        problems.append(f"{role.name}: {key} is in defaults/main.yml but not in argument_specs")
    for key in sorted(set(options) - set(defaults)):
        if not options[key].get("required"):
            problems.append(
                f"{role.name}: {key} is documented but has no default (and is not required)"
            )
    for key in sorted(set(options) & set(defaults)):
        spec = options[key]
        if "description" not in spec:
            problems.append(f"{role.name}: {key} has no description")
        if "default" in spec and spec["default"] != defaults[key]:
            problems.append(
                f"{role.name}: {key} default differs: spec {spec['default']!r}, "
                f"defaults/main.yml {defaults[key]!r}"
            )
    return problems


def main(root: Path) -> int:
    roles = sorted(p for p in (root / "roles").iterdir() if p.is_dir())
    problems = [msg for role in roles for msg in check_role(role)]
    for msg in problems:
        print(msg)
    print(f"argument specs: {len(roles)} roles checked, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(__file__).resolve().parents[1]))
