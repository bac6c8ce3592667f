"""The teacher check (rlsd_core.loop.teacher_check, `rlsd check-teacher`, the step-0 check).

Statistics and the verdict rules are checked on hand-sized numbers; the check itself runs on the
real (untrained) tiny model with real sampling, scored by an inline verifier that gives mixed
groups. With the `none` injector the teacher prompt is the student prompt, so delta must be
exactly 0 on every token: a negative control of the whole pipeline (prompts, both forwards,
masks), whatever the model. Whether the embedded default's teacher is informative is a slow
test in test_train_e2e.py (it needs the real warm-up).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from rlsd_core import Verdict, VerifierRecord, hookimpl
from rlsd_core import loop as L
from rlsd_core.config import build_config
from rlsd_core.loop import teacher_check as TC
from rlsd_core.models import load_tiny

ROOT = Path(__file__).resolve().parents[1]


# --- statistics ----------------------------------------------------------------------------------

def test_auroc_counts_wins_and_half_ties():
    assert TC.auroc([3.0, 2.0], [1.0, 0.0]) == 1.0
    assert TC.auroc([0.0], [1.0]) == 0.0
    # pairs (2,1) win, (2,2) tie, (0,1) lose, (0,2) lose: (1 + 0.5) / 4
    assert TC.auroc([2.0, 0.0], [1.0, 2.0]) == pytest.approx(0.375)
    assert TC.auroc([], [1.0]) is None and TC.auroc([1.0], []) is None


def test_auroc_se_matches_hanley_mcneil_by_hand():
    # A = 0.8, 10 positives, 20 negatives: Q1 = 0.8/1.2, Q2 = 2*0.64/1.8
    q1, q2 = 0.8 / 1.2, 1.28 / 1.8
    var = (0.8 * 0.2 + 9 * (q1 - 0.64) + 19 * (q2 - 0.64)) / 200
    assert TC.auroc_se(0.8, 10, 20) == pytest.approx(math.sqrt(var))


def test_within_group_auroc_ignores_pairs_across_groups():
    # group 1: right 1.0 beats wrong 0.0; group 2: right -5.0 loses to wrong -4.0.
    # Pooled, right -5.0 also loses to wrong 0.0; within groups it is 1 win of 2 pairs.
    scores, right = [1.0, 0.0, -5.0, -4.0], [True, False, True, False]
    assert TC.within_group_auroc(scores, right, 2) == 0.5
    assert TC.auroc([1.0, -5.0], [0.0, -4.0]) == 0.5
    assert TC.within_group_auroc([1.0, 2.0], [True, True], 2) is None


def test_paired_se():
    # differences +1, 0, 0, 0: mean 0.25, sample var = (0.5625 + 3 * 0.0625) / 3 = 0.25
    assert TC.paired_se([False, True, True, False], [True, True, True, False]) == pytest.approx(
        math.sqrt(0.25 / 4))


def _check(**over) -> TC.TaskCheck:
    base = dict(task="t", injector="reference_answer", rows=100, acc_student=0.5, acc_teacher=0.5,
                acc_gain_se=0.03, leakage=0, samples=256, right=100, delta_right=0.5,
                delta_wrong=-0.5, auroc=0.8, auroc_se=0.03, auroc_within=0.8,
                delta_answer_right=1.0, delta_answer_wrong=-1.0, delta_rest_right=0.0,
                delta_rest_wrong=0.0, eps_w=0.2, clip_low_frac=0.1, clip_high_frac=0.1)
    base.update(over)
    return TC.TaskCheck(**base)


@pytest.mark.parametrize("over, verdict, words", [
    ({}, "informative", "separates"),
    ({"acc_teacher": 0.40}, "harmful", "lowers accuracy"),          # -10 points, SE 3
    ({"acc_teacher": 0.45}, "informative", "separates"),            # -5 points: within 2 SE
    ({"auroc": 0.3, "auroc_se": 0.05, "delta_right": -0.5, "delta_wrong": 0.5}, "harmful", "favours wrong"),
    ({"auroc": 0.55, "auroc_se": 0.03}, "uninformative", "AUROC >= 0.6"),
    ({"auroc": 0.62, "auroc_se": 0.07}, "uninformative", "does not separate"),  # not 2 SE above 0.5
    ({"delta_right": 0.02, "delta_wrong": -0.02}, "uninformative", "too weak"),  # 0.04 < 0.5 ln 1.2
    ({"auroc": None, "auroc_se": None, "right": 0, "delta_right": None}, "uninformative", "no right response"),
    ({"auroc": None, "auroc_se": None, "right": 256, "delta_wrong": None}, "uninformative", "no wrong response"),
])
def test_judge(over, verdict, words):
    got, reason = TC.judge(_check(**over))
    assert got == verdict and words in reason, reason


def test_report_verdict_is_the_worst_task():
    good = _check(task="a")
    good.verdict, good.reason = TC.judge(good)
    bad = _check(task="b", acc_teacher=0.3)
    bad.verdict, bad.reason = TC.judge(bad)
    report = TC.TeacherCheckReport(tasks=[good, bad], seconds=1.0, settings=TC.Settings())
    assert report.verdict == "harmful" and [t.task for t in report.failing()] == ["b"]
    data = report.to_dict()
    assert data["tasks"]["a"]["clip_frac"] == pytest.approx(0.2)
    assert json.loads(json.dumps(data)) == data


# --- answer tokens -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, answer, span", [
    ("47+5=\\boxed{52}", "52", (12, 14)),                  # the boxed content
    ("12+8=20, 20+1=\\boxed{21} \\boxed{9}", None, (32, 33)),  # the last box ("9")
    ("t,a,c", "t,a,c", (0, 5)),                            # the verifier's extracted answer
    ("so x=17", None, (5, 7)),                             # after the last '='
    ("so x=", None, None),
    ("no idea", None, None),
])
def test_answer_span(text, answer, span):
    verdict = Verdict.fail("wrong_answer", answer=answer)
    got = TC.answer_span(text, verdict)
    assert got == span
    if span is not None and answer:
        assert text[span[0]:span[1]] == answer


def test_answer_token_mask_on_the_tiny_tokenizer():
    _, tok = load_tiny()
    text = "47+5=\\boxed{52}"
    ids = tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]
    mask = TC.answer_token_mask(tok, ids, TC.answer_span(text, Verdict.ok(answer="52")), len(ids) + 2)
    picked = [ids[k] for k in range(len(ids)) if mask[k]]
    assert tok.decode(picked) == "52"  # digits are single tokens; eos and padding are not picked
    assert not mask[len(ids) - 1:].any()


# --- the check on the real tiny model ------------------------------------------------------------

def _first_letter(completions, rows, **_):
    # Mixed groups from an untrained model: right when the response starts with a vowel-ish
    # half of the alphabet. What matters here is only that both outcomes occur.
    return [Verdict.ok(answer=c[:1]) if c[:1] in "abcdefghijklm" else Verdict.fail("wrong_answer", answer=c[:1])
            for c in completions]


class _Plugin:
    @hookimpl
    def rlsd_verifiers(self):
        return [VerifierRecord(name="first_letter", fn=_first_letter, columns=(), in_process=True)]


def _cfg(tmp_path, injector: str, **over):
    base = {"threads": 1, "output_dir": str(tmp_path / "run"), "warmup.enabled": "false", "steps": 1,
            "tasks": [{"name": "rev", "source": "reverse", "verifier": "first_letter",
                       "injector": injector, "eval_size": 8, "train_size": 32}],
            "rollout.prompts_per_step": 2, "rollout.group_size": 4, "rollout.max_new_tokens": 6,
            "eval.max_new_tokens": 6, "log.console": False, "log.plot": False,
            "scheduler.name": "constant", "teacher.check_rows": 8}
    base.update(over)
    return build_config(overrides=list(base.items()))


def test_none_injector_gives_zero_delta_everywhere(pm, tmp_path):
    pm.register(_Plugin(), name="check-test")
    report = L.check_config(_cfg(tmp_path, "none"), pm, rows=8, sample_rows=8)
    (t,) = report.tasks
    assert t.samples == 32 and 0 < t.right < 32, "the inline verifier must give mixed groups"
    assert t.acc_student == t.acc_teacher  # same prompt, same greedy output
    assert t.delta_right == 0.0 and t.delta_wrong == 0.0
    assert t.auroc == 0.5 and t.clip_low_frac == 0.0 and t.clip_high_frac == 0.0
    assert t.verdict == "uninformative" and t.leakage == 0


def test_reference_answer_teacher_differs_and_clip_uses_eps_w(pm, tmp_path):
    pm.register(_Plugin(), name="check-test")
    wide = L.check_config(_cfg(tmp_path, "reference_answer", **{"scheduler.options": {"eps_w": 0.9}}),
                          pm, rows=4, sample_rows=4)
    narrow = L.check_config(_cfg(tmp_path, "reference_answer", **{"scheduler.options": {"eps_w": 0.01}}),
                            pm, rows=4, sample_rows=4)
    w, n = wide.tasks[0], narrow.tasks[0]
    assert w.eps_w == 0.9 and n.eps_w == 0.01
    assert w.delta_right != 0.0  # a longer prompt changes the untrained model's log-probs
    assert w.delta_right == n.delta_right  # same samples (seeded): only the clip moves
    assert n.clip_frac > w.clip_frac


def test_trainer_runs_the_check_at_step_0_and_warns(pm, tmp_path):
    pm.register(_Plugin(), name="check-test")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = L.train(_cfg(tmp_path, "none"), pm)
    assert any(issubclass(w.category, L.TeacherCheckWarning) and "'rev'" in str(w.message)
               for w in caught)
    saved = json.loads((tmp_path / "run" / "teacher_check.json").read_text())
    assert saved["tasks"]["rev"]["verdict"] == "uninformative"
    assert summary["teacher_check"]["tasks"] == {"rev": "uninformative"}


@pytest.mark.parametrize("over", [{"teacher.check": "false"}, {"algo.loss": "grpo"}])
def test_trainer_skips_the_check_when_off_or_without_teacher(pm, tmp_path, over):
    pm.register(_Plugin(), name="check-test")
    summary = L.train(_cfg(tmp_path, "none", **over), pm)
    assert "teacher_check" not in summary
    assert not (tmp_path / "run" / "teacher_check.json").exists()


def test_cli_bad_config_and_json(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rlsd_core.cli", "check-teacher", "--optim.lrr", "1"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and ("unrecognized" in proc.stderr or "lrr" in proc.stderr)
    proc = subprocess.run([sys.executable, "-m", "rlsd_core.cli", "check-teacher", "--rows", "0"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "rlsd check-teacher: --rows 0" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "rlsd_core.cli", "check-teacher",
                           "--set", "tasks.0.injector=nope"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "no injector named 'nope'" in proc.stderr


def test_cli_table_and_json_on_the_untrained_tiny_model(tmp_path):
    env = {**__import__("os").environ, "RLSD_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "rlsd_core.cli", "check-teacher", "--warmup.enabled",
                           "false", "--threads", "1", "--rows", "4", "--sample-rows", "2",
                           "--rollout.group_size", "2", "--set", "tasks.0.eval_size=4",
                           "--set", "tasks.1.eval_size=4", "--json", "-"],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    # An untrained model answers nothing right: no task can be informative (exit status 1).
    assert proc.returncode == 1, proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    assert set(data["tasks"]) == {"addition", "reverse"}
    for t in data["tasks"].values():
        assert t["rows"] == 4 and t["samples"] == 4 and t["verdict"] == "uninformative"
        assert "no right response" in t["reason"]
    assert "rlsd check-teacher" in proc.stderr and "addition" in proc.stderr
