"""The gateway's TLS, judged by two independent scanners against 127.0.0.1, with the project CA.

- sslyze (PyPI; its own virtualenv ``.venv/sslyze``, made by ``make venv``, because it pins
  ``cryptography<47`` and the Ansible collections need a newer one): compliant with Mozilla's
  "intermediate" configuration.
- testssl.sh (Debian package ``testssl.sh``): no finding above LOW, except the ones a private
  CA implies (``PRIVATE_CA``). The check groups are the ones that judge a server's TLS
  (protocols, cipher categories, forward secrecy, server order, certificate and defaults, HTTP
  security headers, known vulnerabilities); client simulation and per-cipher listings are left
  out to keep the run under a minute. ``--nodns min``: no DNS lookups (no network here).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from .conftest import VENV_BIN, Stack

SSLYZE = VENV_BIN.parent / "sslyze" / "bin" / "sslyze"

# testssl finding id -> why a private CA implies it
PRIVATE_CA = {
    "cert_revocation": "a private CA publishes no CRL and runs no OCSP responder: the CA is "
    "handed to clients directly, a compromised server key is replaced by reissuing (the "
    "certs role), and the server certificate lives at most 365 days",
}
# testssl scan problems (severity WARN: a probe that could not run) that are the tool's, not
# the server's
SCAN_PROBLEMS = {
    "sessionresumption_ticket": "testssl 3.0 with OpenSSL 3: the TLS 1.3 resumption probe "
    "sometimes ends before the server's NewSessionTicket arrives ('connect problem')",
    "sessionresumption_ID": "same probe as sessionresumption_ticket",
}
ABOVE_LOW = {"MEDIUM", "HIGH", "CRITICAL"}


def port_of(stack: Stack) -> int:
    return int(stack.https.rsplit(":", 1)[1])


def test_sslyze_mozilla_intermediate_compliant(stack: Stack, tmp_path: Path) -> None:
    sslyze = SSLYZE if SSLYZE.exists() else shutil.which("sslyze")
    assert sslyze, f"sslyze missing: `make venv` installs it into {SSLYZE.parent.parent}"
    out = tmp_path / "sslyze.json"
    res = subprocess.run(
        [
            str(sslyze),
            "--mozilla_config=intermediate",
            f"--certinfo_ca_file={stack.ca}",
            f"--json_out={out}",
            f"localhost:{port_of(stack)}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    print(res.stdout.strip().splitlines()[-1] if res.stdout.strip() else res.stderr[-500:])
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "OK - Compliant" in res.stdout, res.stdout[-3000:]
    scan = json.loads(out.read_text())["server_scan_results"][0]
    assert scan["scan_status"] == "COMPLETED"
    result = scan["scan_result"]
    accepted = {
        v: len(result[f"{v}_cipher_suites"]["result"]["accepted_cipher_suites"])
        for v in ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1", "tls_1_2", "tls_1_3")
    }
    assert accepted["ssl_2_0"] == accepted["ssl_3_0"] == 0, accepted
    assert accepted["tls_1_0"] == accepted["tls_1_1"] == 0, accepted
    assert accepted["tls_1_2"] > 0 and accepted["tls_1_3"] > 0, accepted
    # the chain validates against the project CA (and, being private, against no public store)
    validations = {
        p["trust_store"]["name"]: p["was_validation_successful"]
        for p in result["certificate_info"]["result"]["certificate_deployments"][0][
            "path_validation_results"
        ]
    }
    assert validations.pop("Supplied CA file") is True, validations
    assert not any(validations.values()), validations


def test_testssl_finds_nothing_above_low_but_private_ca_facts(stack: Stack, tmp_path: Path) -> None:
    testssl = shutil.which("testssl") or shutil.which("testssl.sh")
    assert testssl, "testssl.sh missing: apt-get install testssl.sh (.ci/run installs it)"
    out = tmp_path / "testssl.json"
    res = subprocess.run(
        [
            testssl, "--quiet", "--color", "0", "--warnings", "off",
            "--ip", "127.0.0.1", "--nodns", "min",
            "--add-ca", str(stack.ca),
            "--jsonfile", str(out),
            "-p", "-s", "-f", "-P", "-S", "-h", "-U",
            f"https://localhost:{port_of(stack)}",
        ],
        # a liveness bound only: the scan takes ~60 s on a quiet machine, over 150 s when
        # every core is busy (make stress)
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert out.exists(), res.stdout[-4000:] + res.stderr[-2000:]
    findings = json.loads(out.read_text())
    by_id = {f["id"]: f for f in findings}
    severe = {
        f["id"]: (f["severity"], f["finding"])
        for f in findings
        if f["severity"] in ABOVE_LOW and f["id"] not in PRIVATE_CA
    }
    problems = {
        f["id"]: f["finding"]
        for f in findings
        if f["severity"] in {"WARN", "FATAL"} and f["id"] not in SCAN_PROBLEMS
    }
    allowed = sorted(i for i in PRIVATE_CA if by_id.get(i, {}).get("severity") in ABOVE_LOW)
    print(
        f"testssl: {len(findings)} findings, above LOW: {len(severe)} "
        f"(+ allowed private-CA facts: {allowed}), scan time {by_id['scanTime']['finding']} s"
    )
    assert severe == {}, severe
    assert problems == {}, problems
    # the scan really judged this server (a scan that tested nothing must fail)
    expect_ok = (
        "SSLv2", "SSLv3", "TLS1_2", "TLS1_3", "cipher_order", "PFS", "cert_chain_of_trust",
        "cert_trust", "HSTS_time", "heartbleed", "ROBOT", "secure_client_renego",
    )  # fmt: skip
    assert {i: by_id.get(i, {}).get("severity") for i in expect_ok} == dict.fromkeys(
        expect_ok, "OK"
    )
    assert by_id["TLS1"]["finding"] == by_id["TLS1_1"]["finding"] == "not offered"
