"""`rlsd new-plugin`: each generated package installs with pip, is found through its entry
point, passes `rlsd plugins check` and its own generated tests, as written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlsd_core.cli import main
from rlsd_core.cli.new_plugin import KINDS, files_for

ROOT = Path(__file__).resolve().parents[1]
NAMES = {"verifier": "scaffold_check", "injector": "scaffold_hint", "scheduler": "scaffold_decay"}


@pytest.mark.slow  # pip builds three packages, then the batteries and their tests: ~30 s idle
def test_generated_plugins_install_and_pass_check_and_their_tests(tmp_path):
    for kind, name in NAMES.items():
        assert main(["new-plugin", kind, name, "--dir", str(tmp_path)]) == 0
    dirs = [str(tmp_path / f"rlsd-{n.replace('_', '-')}") for n in NAMES.values()]
    site = tmp_path / "site"
    # --target: into a directory of its own, so the test venv is never changed; --no-deps and
    # no build isolation: nothing is downloaded (rlsd and setuptools are already here).
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "--no-deps", "--no-build-isolation", "--target", str(site), *dirs],
                   check=True, capture_output=True, timeout=600)
    env = {**os.environ, "PYTHONPATH": str(site)}
    check = subprocess.run([sys.executable, "-m", "rlsd_core.cli", "plugins", "check",
                            *NAMES.values()], capture_output=True, text=True, env=env, cwd=tmp_path,
                           timeout=600)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "3 record(s), 22 properties: 22 passed, 0 failed, 0 skipped" in check.stdout
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            *[f"{d}/tests" for d in dirs]], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=600)
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert "25 passed" in tests.stdout


@pytest.mark.parametrize("kind", KINDS)
def test_files_of_each_kind(kind):
    files = files_for(kind, "abc")
    assert set(files) == {"pyproject.toml", "rlsd_abc/__init__.py", "tests/test_abc.py", "README.md"}
    assert 'abc = "rlsd_abc"' in files["pyproject.toml"]
    assert "RLSD_API" in files["rlsd_abc/__init__.py"]
    assert f"{kind}_conformance(" in files["tests/test_abc.py"]
    compile(files["rlsd_abc/__init__.py"], "module", "exec")
    compile(files["tests/test_abc.py"], "tests", "exec")


def test_refusals(tmp_path, capsys):
    assert main(["new-plugin", "verifier", "Bad-Name", "--dir", str(tmp_path)]) == 2
    assert "NAME must be lower-case" in capsys.readouterr().err
    assert main(["new-plugin", "verifier", "exact_match", "--dir", str(tmp_path)]) == 2
    assert "already installed" in capsys.readouterr().err
    assert main(["new-plugin", "scheduler", "mine", "--dir", str(tmp_path)]) == 0
    assert main(["new-plugin", "scheduler", "mine", "--dir", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert not list(tmp_path.glob("rlsd-bad*"))
