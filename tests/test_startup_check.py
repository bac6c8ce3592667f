"""A verifier that cannot work on this machine refuses when its runtime starts, with the fix in
the message, instead of masking every sample later; an explicit opt-in skips the refusal."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rlsd_core.rewards import VerifierRuntime
from rlsd_verifiers.code import RECORD, SandboxUnavailable


def test_code_verifier_without_bubblewrap_refuses_at_startup():
    with pytest.raises(SandboxUnavailable, match="apt-get install"):
        VerifierRuntime(RECORD, {"bwrap": "/nonexistent/bwrap"})


def test_degraded_opt_in_starts_without_bubblewrap():
    with VerifierRuntime(RECORD, {"bwrap": "/nonexistent/bwrap", "sandbox": "degraded"}) as rt:
        assert rt.record.name == "code"


def test_rlsd_verify_reports_the_refusal(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"completion": "print(1)", "tests": [{"input": "", "output": "1"}]}) + "\n")
    proc = subprocess.run([sys.executable, "-m", "rlsd_core.cli", "verify", "--verifier", "code", str(src),
                           "--options", '{"bwrap": "/nonexistent/bwrap"}'], capture_output=True, text=True)
    assert proc.returncode == 2 and "cannot start" in proc.stderr and proc.stdout == ""
