"""A test plugin installed as a real distribution: a dist-info directory with an `rlsd` entry
point, on PYTHONPATH (subprocesses) or sys.path (in-process CLI calls). Entry-point discovery
then finds it exactly as it finds a pip-installed plugin.

It provides the `even_length` verifier (a response of even length earns 1), which gives the
untrained tiny model mixed groups, hence real gradients, and a non-trivial accuracy; and, when
RESUME_TEST_STALL_AT=<step> is set, it stalls that step right after its rollout (where the
resume test kills the process).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

PLUGIN = textwrap.dedent('''
    import os, time
    from rlsd_core import VerifierRecord, hookimpl

    def _even(completions, rows, **_):
        return [1.0 if len(c) % 2 == 0 else 0.0 for c in completions]

    @hookimpl
    def rlsd_verifiers():
        return [VerifierRecord(name="even_length", fn=_even, columns=(), in_process=True)]

    @hookimpl
    def rlsd_after_rollout(run, step, samples):
        if str(step) == os.environ.get("RESUME_TEST_STALL_AT"):
            (run.run_dir / "stalled").write_text(str(step))
            time.sleep(600)
''')


def install(site: Path) -> Path:
    """Write the plugin and its dist-info into `site`; return `site`."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "rlsd_even_test_plugin.py").write_text(PLUGIN)
    dist = site / "rlsd_even_test_plugin-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rlsd-even-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[rlsd]\neven_test = rlsd_even_test_plugin\n")
    return site
