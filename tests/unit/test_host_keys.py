"""SSH host keys are checked everywhere: the project's ansible.cfg never turns the check off, and
no Molecule scenario connects with a check disabled or a throwaway known_hosts (the remote
scenario writes its hosts' keys, read from their consoles, into its own known_hosts; its
verifier proves a host showing another key is refused)."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OFF = re.compile(
    r"StrictHostKeyChecking\s*=?\s*(no|off|accept-new)|UserKnownHostsFile\s*=?\s*/dev/null", re.I
)


def test_ansible_cfg_keeps_host_key_checking_on() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "ansible.cfg")
    value = cfg.get("defaults", "host_key_checking", fallback="true")
    assert value.strip().lower() in ("true", "yes", "1"), value
    assert not OFF.search((ROOT / "ansible.cfg").read_text())


def test_no_scenario_or_playbook_disables_the_check() -> None:
    files = [
        *ROOT.glob("molecule/**/*.yml"),
        *ROOT.glob("playbooks/*.yml"),
        *ROOT.glob("roles/**/*.yml"),
    ]
    assert files
    offenders = [
        str(f.relative_to(ROOT))
        for f in files
        if OFF.search(f.read_text())
        or re.search(r"host_key_checking\W+(false|no)", f.read_text(), re.I)
    ]
    assert offenders == []
