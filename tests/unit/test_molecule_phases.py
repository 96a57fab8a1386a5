"""scripts/molecule_phases.py: each scenario's phases timed from profile_tasks' wall clock."""

import importlib.util
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "molecule_phases.py"
_spec = importlib.util.spec_from_file_location("molecule_phases", SCRIPT)
molecule_phases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(molecule_phases)
phases = molecule_phases.phases


def stamp(clock: str) -> str:
    """A profile_tasks line as scripts/run-molecule.sh prints it: indented, boxed, coloured."""
    return f"  \x1b[2m│\x1b[0m Friday 04 December 2026  {clock} +0000 (0:00:00.053)    0:00:49.235"


# Two scenarios one after the other, as `make test` prints them; the first one's destroy ran no
# playbook (no figure), its converge ran two, its verify fails half-way (never "Executed").
LOG = [
    "INFO     certs ➜ destroy: Executing",
    "INFO     certs ➜ destroy: Executed: Successful",
    "\x1b[32mINFO     certs ➜ converge: Executing\x1b[0m",
    stamp("10:00:05"),
    "  │ TASK [certs : Create the CA]",
    stamp("10:00:40"),
    stamp("10:01:00"),
    stamp("10:02:10"),
    "INFO     certs ➜ converge: Executed: Successful",
    stamp("10:02:30"),  # between phases: counts for none
    "INFO     certs ➜ verify: Executing",
    stamp("10:03:00"),
    stamp("10:03:42"),
    "INFO     nginx ➜ converge: Executing",
    stamp("11:00:00"),
    stamp("11:00:09"),
    "INFO     nginx ➜ converge: Executed: Successful",
    "certs ➜ converge: Executed: Successful",  # molecule's summary, not a phase
]


def test_each_phase_is_timed_from_its_first_to_its_last_wall_clock_line() -> None:
    assert phases(LOG) == {
        "certs": [("converge", "125"), ("verify", "42+")],
        "nginx": [("converge", "9")],
    }


def test_a_run_cut_off_in_a_phase_gives_it_as_unfinished() -> None:
    assert phases(LOG[:6]) == {"certs": [("converge", "35+")]}


def test_the_command_prints_a_line_per_scenario_and_refuses_a_missing_log(tmp_path) -> None:
    log = tmp_path / "test.log"
    log.write_text("\n".join(LOG) + "\n")
    done = subprocess.run(
        [sys.executable, SCRIPT, log], capture_output=True, text=True, check=False
    )
    assert (done.returncode, done.stdout) == (
        0,
        "certs: converge 125 verify 42+\nnginx: converge 9\n",
    )
    missing = subprocess.run(
        [sys.executable, SCRIPT, tmp_path / "none.log"], capture_output=True, text=True, check=False
    )
    assert (
        missing.returncode == 2 and "cannot read" in missing.stderr and "none.log" in missing.stderr
    )
