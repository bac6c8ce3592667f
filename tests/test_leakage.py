"""The leakage detector: mentions of the privileged context, copied n-grams, and what is not leakage."""

from __future__ import annotations

import pytest

from rlsd_core.leakage import Leak, leakage, leakage_count

SOLUTION = "Pair the numbers from both ends so that each pair sums to 101 and there are 50 pairs"
PROMPT = "Compute 1 + 2 + ... + 100."


def test_mentions_are_flagged():
    got = leakage("As the Reference  Solution shows, the sum is 5050.", "5050", PROMPT)
    assert got == Leak(True, phrase="reference solution") and got
    assert leakage("The hint says to pair terms, so 5050.", "5050", PROMPT).phrase == "the hint says"


def test_mention_present_in_prompt_is_not_leakage():
    prompt = "Check the reference solution below for errors: x = 2."
    assert not leakage("The reference solution is right.", "2", prompt)


def test_copied_ngram_is_flagged():
    response = "I will pair the numbers from both ends so that each pair sums to 101; answer 5050"
    got = leakage(response, SOLUTION, PROMPT)
    assert got.leaked and got.phrase is None
    # the reported n-gram is 8 words of the solution that the response repeats
    assert len(got.ngram.split()) == 8 and got.ngram in " ".join(SOLUTION.lower().split())


def test_ngram_in_prompt_is_not_leakage():
    prompt = "Pair the numbers from both ends so that each pair sums to 101. What is the total?"
    assert not leakage("Pair the numbers from both ends so that each pair sums to 101: 5050", SOLUTION, prompt)


def test_right_answer_and_short_overlap_are_not_leakage():
    assert not leakage("The sum is 5050.", "5050", PROMPT)
    # 7 shared words < n = 8
    assert not leakage("pair the numbers from both ends so", SOLUTION, PROMPT)
    assert leakage("pair the numbers from both ends so", SOLUTION, PROMPT, n=7)


def test_count_and_bad_input():
    responses = ["As the reference solution says, 5050.", "5050", "pair the numbers from both ends so that each"]
    assert leakage_count(responses, [SOLUTION] * 3, [PROMPT] * 3) == 2
    with pytest.raises(ValueError, match="must align"):
        leakage_count(responses, [SOLUTION], [PROMPT] * 3)
    with pytest.raises(TypeError, match="response must be a str"):
        leakage(None, SOLUTION, PROMPT)
    with pytest.raises(ValueError, match="n must be"):
        leakage("x", SOLUTION, PROMPT, n=0)


# --- what counts as privileged: only what the teacher alone saw (rlsd_core.data) -------------

SYSTEM = "You are a careful assistant who always shows every step of the work in full detail."


def _prompts():
    from rlsd_core.data import TeacherPrompts
    from rlsd_core.models import load_tokenizer, resolve_model
    from rlsd_plugins.injectors import RECORDS

    class Task:
        name, injector, injector_options = "t", "reference_answer", {}

    injectors = {r.name: r for r in RECORDS}
    return TeacherPrompts([Task()], injectors, load_tokenizer(resolve_model("tiny")))


def test_privileged_text_is_the_hint_not_the_system_prompt_question_or_template():
    row = {"prompt": "What is 6 * 7?", "answer": "42",
           "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is 6 * 7?"}]}
    ids, privileged = _prompts().prompt("t", row)
    assert "42" in privileged and "reference solution" in privileged
    for shared in ("careful assistant", "What is 6", "im_start", "system", "assistant"):
        assert shared not in privileged, shared
    # A response that repeats the system prompt word for word does not leak; one that copies
    # the injector's hint sentence does.
    assert not leakage(SYSTEM, privileged, row["prompt"])
    copied = "After understanding the reference solution, please solve the problem above in your own way"
    assert leakage(copied, privileged, row["prompt"])


def test_privileged_text_of_a_group_injector_is_the_sibling_it_shows():
    from rlsd_core import InjectorContext, Verdict
    from rlsd_core.data import privileged_text
    from rlsd_plugins.injectors import successful_sibling

    student = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Sum 1..100?"}]
    sibling = "pair the ends so each pair sums to 101 and there are fifty pairs so 5050"
    ctx = InjectorContext(index=0, responses=["no idea", sibling], verdicts=[Verdict.fail("wrong_answer"), Verdict.ok()])
    privileged = privileged_text(student, successful_sibling({}, student, ctx))
    assert sibling in privileged and "careful" not in privileged
