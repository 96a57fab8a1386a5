"""SSH host keys are checked everywhere: the project's ansible.cfg never turns the check off, and
no Molecule scenario connects with a check disabled or a throwaway known_hosts (the remote
scenario writes its hosts' keys, read from their consoles, into its own known_hosts; its
verifier proves a host showing another key is refused)."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import yaml

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


def test_scenarios_over_ssh_turn_host_key_checking_back_on() -> None:
    # Molecule writes `host_key_checking = False` into the ansible.cfg it generates: a scenario
    # that connects over SSH must set it back to true in its own ansible cfg.
    over_ssh = []
    for path in sorted(ROOT.glob("molecule/*/molecule.yml")):
        conf = yaml.safe_load(path.read_text())
        options = conf["driver"].get("options", {}).get("ansible_connection_options", {})
        if options.get("ansible_connection") != "ssh":
            continue
        over_ssh.append(path.parent.name)
        defaults = conf["ansible"]["cfg"]["defaults"]
        assert defaults.get("host_key_checking") is True, path
        assert "StrictHostKeyChecking=yes" in options["ansible_ssh_common_args"], path
    assert over_ssh == ["remote"]
