"""scripts/run-molecule.sh: lanes side by side, `@dep` waits, failures stop a lane and its
dependants, durations reported. A stand-in `molecule` records when each scenario ran."""

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "run-molecule.sh"


@pytest.fixture
def fake(tmp_path: Path):
    """A stand-in for `molecule <step> -s <name>`: appends `start <name> <t> <step>` and
    `end <name> <t> <step>` to a journal, sleeps SLEEP_<name> seconds (default 0.3) for a
    `test`, `converge` or `verify`, exits 1 for names in FAIL (`name` fails every step,
    `name:step` that one), holds a step's end until another event (HOLD_<name>_<step>)."""
    journal = tmp_path / "journal"
    stub = tmp_path / "molecule"
    stub.write_text(
        textwrap.dedent(
            """\
            #!/usr/bin/env bash
            step=$1 name=$3
            echo "start $name $(date +%s.%N) $step" >>"$JOURNAL"
            var="SLEEP_$name"
            case $step in test | converge | verify) sleep "${!var:-0.3}" ;; esac
            # HOLD_<name>_<step>="<kind> <other> <step>": end only once the journal shows that
            # event (at most 30 s), so that an order the script must allow is not left to timing
            hold="HOLD_${name}_${step}"
            if [[ -n "${!hold:-}" ]]; then
              read -r kind other other_step <<<"${!hold}"
              for _ in $(seq 300); do
                grep -q "^$kind $other [0-9.]* $other_step$" "$JOURNAL" && break
                sleep 0.1
              done
            fi
            echo "end $name $(date +%s.%N) $step" >>"$JOURNAL"
            echo "output of $name $step"
            if [[ " $FAIL " == *" $name "* || " $FAIL " == *" $name:$step "* ]]; then
              for i in $(seq 200); do echo "noise $i of $name"; done
              printf '\\e[31mfatal: [host]: FAILED! => {"rc": 1}\\e[0m\\n'
              echo "  - 'E       AssertionError: $name went wrong in $step'"
              echo "  - 'FAILED tests/x.py::test_$name - AssertionError'"
              # as molecule prints pytest's output: an exception of another type, and a long
              # test id wrapped after FAILED (mawk, Debian's awk, has no {n} intervals)
              echo "  │         E       json.decoder.JSONDecodeError: $name unterminated"
              echo "  │         tests/e2e/y.py:12: JSONDecodeError"
              echo "  │         FAILED"
              echo "  │   tests/e2e/y.py::test_${name}_with_a_name_too_long_for_one_line_of_the"
              echo "  │   _box[killed]"
              for i in $(seq 200); do echo "more noise $i"; done
              exit 1
            fi
            exit 0
            """
        )
    )
    stub.chmod(0o755)

    def run(
        *scenarios: str,
        lanes: str | None = None,
        fail: str = "",
        hold: dict[str, str] | None = None,
        **sleeps: float,
    ):
        env = dict(
            os.environ,
            MOLECULE=str(stub),
            MOLECULE_LOGS=str(tmp_path / "logs"),
            JOURNAL=str(journal),
            FAIL=fail,
        )
        env.pop("MOLECULE_LANES", None)
        if lanes is not None:
            env["MOLECULE_LANES"] = lanes
        env.update({f"SLEEP_{k}": str(v) for k, v in sleeps.items()})
        env.update({f"HOLD_{k}": v for k, v in (hold or {}).items()})
        journal.write_text("")
        proc = subprocess.run(
            [str(SCRIPT), *scenarios], env=env, capture_output=True, text=True, timeout=300
        )
        # (kind, name): the first start, the last end; (kind, name, step): that step's
        events: dict = {}
        for line in journal.read_text().splitlines():
            kind, name, t, step = line.split()
            if kind == "end" or (kind, name) not in events:
                events[(kind, name)] = float(t)
            events[(kind, name, step)] = float(t)
            events.setdefault(("steps", name), []).append(step) if kind == "start" else None
        return proc, events

    return run


def test_lanes_run_side_by_side_and_dependants_wait(fake) -> None:
    proc, ev = fake("a", "b", "c", "d", lanes="a b | c d@a", a=1.0, c=0.2, d=0.2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # c (second lane, no dependency) starts while a (first lane) is still running
    assert ev[("start", "c")] < ev[("end", "a")]
    # d waits until a has passed; b follows a in its own lane
    assert ev[("start", "d")] >= ev[("end", "a")]
    assert ev[("start", "b")] >= ev[("end", "a")]
    for s in "abcd":
        assert f"\n  {s} " in proc.stdout
    # the other lanes' output is printed at the end, under a header
    assert "==> molecule: d (lane 2)" in proc.stdout and "output of d" in proc.stdout


def test_a_failed_dependency_stops_the_dependants_lane(fake) -> None:
    proc, ev = fake("a", "b", "c", "d", lanes="a b | c d@a", fail="a")
    assert proc.returncode != 0
    assert ("start", "b") not in ev  # a lane stops at its first failure
    assert ("start", "d") not in ev  # d needs a
    assert "molecule: a FAILED" in proc.stdout
    assert "d not run: a did not pass" in proc.stdout


def test_a_dependency_never_reached_counts_as_not_passed(fake) -> None:
    # b is never reached (a fails first), so d, which waits on b, must not hang
    proc, ev = fake("a", "b", "c", "d", lanes="a b | c d@b", fail="a")
    assert proc.returncode != 0
    assert ("start", "d") not in ev
    assert "d not run: b did not pass" in proc.stdout


def test_a_failure_in_another_lane_fails_the_run(fake) -> None:
    proc, ev = fake("a", "c", lanes="a | c", fail="c")
    assert proc.returncode != 0
    assert ("end", "a") in ev
    assert "molecule: c FAILED after" in proc.stdout


def test_no_lanes_runs_everything_in_the_order_given(fake) -> None:
    proc, ev = fake("c", "a", "b", lanes="", a=0.1, b=0.1, c=0.1)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ev[("end", "c")] <= ev[("start", "a")] <= ev[("end", "a")] <= ev[("start", "b")]


def test_only_the_scenarios_given_run_and_absent_dependencies_are_not_awaited(fake) -> None:
    # d waits on a, which is not part of this run; x is in no lane: it joins the first lane
    proc, ev = fake("b", "d", "x", lanes="a b | c d@a", b=1.0)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {key[1] for key in ev} == {"b", "d", "x"}
    assert ev[("start", "d")] < ev[("end", "b")]  # not held back by the absent a
    assert ev[("start", "x")] >= ev[("end", "b")]


def test_a_late_dependency_holds_back_converge_only(fake) -> None:
    # c^a: c's hosts are created and prepared while a runs (a ends only once c's prepare has
    # ended: if c waited for a before it, a would end after 30 s, and the first check would fail);
    # c's converge waits until a has passed
    proc, ev = fake("a", "c", lanes="a | c^a", hold={"a_test": "end c prepare"}, a=0.2, c=0.2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ev[("end", "c", "prepare")] < ev[("end", "a")]
    assert ev[("start", "c", "converge")] >= ev[("end", "a")]
    assert ev[("steps", "c")] == [
        "destroy", "syntax", "create", "prepare", "converge", "idempotence", "verify", "destroy",
    ]  # fmt: skip
    assert ev[("steps", "a")] == ["test"]
    assert "\n  c " in proc.stdout


def test_a_late_converge_dependency_waits_for_that_step_only(fake) -> None:
    # c^a.converge: c is created and prepared at once, converges once a's converge has passed,
    # while a still verifies (a's verify ends only once c has converged; a's converge only once
    # c is prepared: if c waited for a before preparing, a would end after 30 s)
    hold = {"a_verify": "end c converge", "a_converge": "end c prepare"}
    proc, ev = fake("a", "c", lanes="a | c^a.converge", hold=hold, a=0.5, c=0.2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ev[("start", "c", "converge")] >= ev[("end", "a", "converge")]
    assert ev[("end", "c", "converge")] < ev[("end", "a", "verify")]
    assert ev[("end", "c", "prepare")] < ev[("end", "a", "converge")]


def test_a_failed_late_dependency_destroys_what_was_created(fake) -> None:
    proc, ev = fake("a", "c", lanes="a | c@a^a", fail="a")
    assert ("start", "c") not in ev  # @a: not even created
    proc, ev = fake("a", "c", lanes="a | c^a", fail="a")
    assert proc.returncode != 0
    assert ev[("steps", "c")] == ["destroy", "syntax", "create", "prepare", "destroy"]
    assert "c stopped after prepare: a did not pass" in proc.stdout


def test_a_failed_step_of_a_split_sequence_still_destroys(fake) -> None:
    proc, ev = fake("a", "c", lanes="a | c^a", fail="c:converge")
    assert proc.returncode != 0
    assert ev[("steps", "c")] == [
        "destroy", "syntax", "create", "prepare", "converge", "destroy",
    ]  # fmt: skip
    assert "molecule: c FAILED after" in proc.stdout


def test_a_converge_dependency_waits_for_that_step_only(fake) -> None:
    # c@a.converge: a runs split; c starts once a's converge passed, while a still verifies
    # (a's verify ends only once c has started)
    hold = {"a_verify": "start c test"}
    proc, ev = fake("a", "b", "c", lanes="a b | c@a.converge", hold=hold, a=0.5, c=0.2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ev[("steps", "a")] == [
        "destroy", "syntax", "create", "prepare", "converge", "idempotence", "verify", "destroy",
    ]  # fmt: skip
    assert ev[("start", "c")] >= ev[("end", "a", "converge")]
    assert ev[("start", "c")] < ev[("end", "a", "verify")]
    assert ev[("steps", "b")] == ["test"]


def test_a_converge_dependency_never_converged_stops_the_dependant(fake) -> None:
    proc, ev = fake("a", "c", lanes="a | c@a.converge", fail="a:converge")
    assert proc.returncode != 0
    assert ("start", "c") not in ev
    assert "c not run: a.converge did not pass" in proc.stdout


def test_several_dependencies_are_all_awaited(fake) -> None:
    proc, ev = fake("a", "b", "c", lanes="a | b | c@a,b", a=0.3, b=1.0, c=0.1)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ev[("start", "c")] >= max(ev[("end", "a")], ev[("end", "b")])
    proc, ev = fake("a", "b", "c", lanes="a | b | c@a,b", fail="b")
    assert ("start", "c") not in ev
    assert "c not run: b did not pass" in proc.stdout


@pytest.mark.parametrize("lanes", ["a | c", ""])
def test_why_a_scenario_failed_comes_last_without_the_noise(fake, tmp_path: Path, lanes) -> None:
    # in the first lane (printed as it goes) and in another (printed at the end) alike
    proc, _ = fake("a", "c", lanes=lanes, fail="c")
    assert proc.returncode != 0
    digest = (tmp_path / "logs" / "c.why").read_text()
    assert "fatal: [host]: FAILED!" in digest and "\x1b" not in digest
    assert "E       AssertionError: c went wrong in" in digest
    assert "FAILED tests/x.py::test_c" in digest
    for line in (
        "E       json.decoder.JSONDecodeError: c unterminated",
        "y.py:12: JSONDecodeError",
        "│         FAILED\n",  # and the id molecule wrapped onto the next two lines
        "y.py::test_c_with_a_name_too_long",
        "_box[killed]",
    ):
        assert line in digest, line
    assert "noise 150 of c" not in digest and len(digest.splitlines()) <= 150
    tail = proc.stdout[proc.stdout.rindex("==> molecule: why c failed") :]
    assert "FAILED tests/x.py::test_c" in tail and "molecule: durations" in tail
    assert not (tmp_path / "logs" / "a.why").exists()  # a passed
    # the first lane's output is still printed as it goes, and kept in its log too
    assert "output of a" in (tmp_path / "logs" / "a.log").read_text()


def test_a_long_digest_keeps_its_first_50_and_last_100_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    lines = [f"  │         E       line {i}\n" for i in range(1, 301)]
    log.write_text("".join(lines) + "2 failed, 1 passed\n")
    script = SCRIPT.read_text()
    func = script[script.index("why() {") : script.index("\n}\n", script.index("why() {")) + 3]
    out = subprocess.run(
        ["bash", "-c", f'{func}\nwhy "$1"', "why", str(log)],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert len(out) == 151, len(out)
    assert out[49].endswith("E       line 50")
    assert out[50] == "(151 lines of the digest left out here)"
    assert out[51].endswith("E       line 202") and out[-1] == "2 failed, 1 passed"
