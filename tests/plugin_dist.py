"""Test plugins installed as real distributions: a dist-info directory with an `rlsd` entry
point, on PYTHONPATH (subprocesses) or sys.path (in-process CLI calls). Entry-point discovery
then finds it exactly as it finds a pip-installed plugin.

It provides the `even_length` verifier (a response of even length earns 1), which gives the
untrained tiny model mixed groups, hence real gradients, and a non-trivial accuracy; the
`faults_on_rank0` verifier (under torchrun, a verifier_error for every sample of rank 0); and, when
RESUME_TEST_STALL_AT=<step> is set, it stalls that step right after its rollout (where the
resume test kills the process). `install_crashing` adds a second one, the `crash_on_rank`
objective, which makes one rank of a torchrun run raise mid-step.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

PLUGIN = textwrap.dedent('''
    import os, time
    from rlsd_core import VerifierRecord, hookimpl

    def _even(completions, rows, **_):
        return [1.0 if len(c) % 2 == 0 else 0.0 for c in completions]

    def _faults_on_rank0(completions, rows, **_):
        # Under torchrun: an infrastructure fault (a reward outside [0, 1] is a verifier_error)
        # for every sample rank 0 verifies, even_length's reward on the other ranks.
        if os.environ.get("RANK") == "0":
            return [2.0] * len(completions)
        return _even(completions, rows)

    @hookimpl
    def rlsd_verifiers():
        return [VerifierRecord(name="even_length", fn=_even, columns=(), in_process=True),
                VerifierRecord(name="faults_on_rank0", fn=_faults_on_rank0, columns=(),
                               in_process=True)]

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


CRASHING = textwrap.dedent('''
    import os
    from rlsd_core import ObjectiveRecord, algo, hookimpl

    _calls = {"credit": 0}

    def _credit(b):
        # GRPO's credit, except that rank CRASH_TEST_RANK raises in step CRASH_TEST_STEP while
        # the other ranks go on into the update's collectives.
        _calls["credit"] += 1
        if (os.environ.get("RANK") == os.environ.get("CRASH_TEST_RANK")
                and _calls["credit"] == int(os.environ.get("CRASH_TEST_STEP", "2"))):
            raise RuntimeError(f"crash test: rank {os.environ['RANK']} raises in step "
                               f"{_calls['credit']}")
        return algo.rlsd_token_advantages(b.advantages, None, b.old_logprobs, b.mask, lam=0.0,
                                          eps_w=b.eps_w)

    def _loss(b):
        o = b.options
        return algo.policy_loss(b.logprobs, b.old_logprobs, b.token_advantages, b.mask,
                                eps_low=o["eps_low"], eps_high=o["eps_high"],
                                dual_clip=o["dual_clip"], agg=o["agg"], denominator=b.denominator)

    @hookimpl
    def rlsd_objectives():
        return [ObjectiveRecord(name="crash_on_rank", credit=_credit, loss=_loss)]
''')


def install_crashing(site: Path) -> Path:
    """A second test distribution: the `crash_on_rank` objective (GRPO that raises on one rank,
    for the distributed failure test)."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "rlsd_crash_test_plugin.py").write_text(CRASHING)
    dist = site / "rlsd_crash_test_plugin-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rlsd-crash-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[rlsd]\ncrash_test = rlsd_crash_test_plugin\n")
    return site
