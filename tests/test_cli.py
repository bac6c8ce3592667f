"""`rlsd --version`, `rlsd plugins`, `rlsd verify` run as real subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import rlsd_core

ROOT = Path(__file__).resolve().parents[1]


def rlsd(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlsd_core.cli", *args], capture_output=True,
                          text=True, check=check, cwd=ROOT)


def test_version():
    assert rlsd("--version").stdout.strip() == f"rlsd {rlsd_core.__version__}"


def test_plugins_json_lists_builtins_with_distribution():
    rows = json.loads(rlsd("plugins", "--json").stdout)
    em = [r for r in rows if r["name"] == "exact_match"]
    assert em and em[0]["kind"] == "verifier" and em[0]["distribution"] == "rlsd"
    assert {"kind", "name", "distribution", "distribution_version", "description"} <= set(em[0])


def test_plugins_table_mentions_builtins():
    out = rlsd("plugins").stdout
    assert "exact_match" in out and "rlsd" in out


def test_verify_writes_reward_category_message_in_order(tmp_path):
    out = tmp_path / "out.jsonl"
    proc = rlsd("verify", "--verifier", "exact_match", str(ROOT / "docs/examples/data/exact_match.jsonl"),
                "-o", str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["category"] for r in rows] == ["ok", "ok", "ok", "wrong_answer", "no_answer", "invalid_input"]
    assert [r["reward"] for r in rows] == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert rows[3]["message"] == "expected '13', got '12'"
    assert "mean reward 0.500" in proc.stderr  # the summary


def test_verify_malformed_file_names_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"completion": "a", "answer": "a"}\n{"completion": oops}\n')
    proc = rlsd("verify", "--verifier", "exact_match", str(bad), check=False)
    assert proc.returncode == 2 and "bad.jsonl:2" in proc.stderr and proc.stdout == ""


def test_verify_row_without_completion_is_an_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"answer": "a"}\n')
    proc = rlsd("verify", "--verifier", "exact_match", str(bad), check=False)
    assert proc.returncode == 2 and "completion" in proc.stderr


def test_verify_unknown_verifier_lists_installed(tmp_path):
    proc = rlsd("verify", "--verifier", "nope", str(tmp_path / "x.jsonl"), check=False)
    assert proc.returncode == 2 and "exact_match" in proc.stderr


def test_verify_passes_options(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"completion": "Paris", "answer": "paris"}) + "\n")
    row = json.loads(rlsd("verify", "--verifier", "exact_match", str(src),
                          "--options", '{"ignore_case": false}').stdout)
    assert row["category"] == "wrong_answer"
