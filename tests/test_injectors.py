"""Privileged-context injectors: each one's output on a sample row, the student's messages left
alone, truncation budgets, the no-sibling fallback, and registration from `rlsd`."""

from __future__ import annotations

import copy

import pytest

from rlsd_core import InjectorContext, Verdict
from rlsd_plugins import injectors as I

ROW = {"prompt": "What is 2+3?", "answer": "5", "solution": "Add 2 and 3 to get 5."}
STUDENT = [{"role": "system", "content": "Reason, then answer in \\boxed{}."},
           {"role": "user", "content": "What is 2+3?"}]

RA_TEXT = ("What is 2+3?\n\nHere is a reference solution:\n5\n\n"
           "After understanding the reference solution, please solve the problem above in your own way.")


def group_ctx(index=0, **options):
    return InjectorContext(
        index=index,
        responses=["2+3 = 5, so \\boxed{5}", "\\boxed{6}", "\\boxed{5}", "no idea", "\\boxed{7}"],
        verdicts=[Verdict.ok(), Verdict.fail("wrong_answer", "expected '5', got '6'"), Verdict.ok(),
                  Verdict.fail("verifier_error", "worker crashed"), Verdict.fail("wrong_answer", "expected '5', got '7'")],
        options=options)


def run(name, row=ROW, messages=STUDENT, ctx=None):
    before = copy.deepcopy(messages)
    out = getattr(I, name)(row, messages, ctx or InjectorContext())
    assert messages == before, f"{name} modified the student's messages"
    assert out is not messages and all(a is not b for a, b in zip(out, messages))
    return out


def test_reference_answer():
    out = run("reference_answer")
    assert out == [STUDENT[0], {"role": "user", "content": RA_TEXT}]


def test_reference_answer_list_gold_and_number():
    assert run("reference_answer", {"answer": ["5", "five"]})[1]["content"] == RA_TEXT
    assert run("reference_answer", {"answer": 5})[1]["content"] == RA_TEXT


def test_reference_solution():
    out = run("reference_solution")
    assert out[1]["content"] == ("What is 2+3?\n\nHere is a reference solution:\nAdd 2 and 3 to get 5.\n\n"
                                 "After understanding the reference solution, please solve the problem "
                                 "above in your own way.")
    out = run("reference_solution", {"worked": "2 + 3 = 5"}, ctx=InjectorContext(options={"column": "worked"}))
    assert "Here is a reference solution:\n2 + 3 = 5\n" in out[1]["content"]


def test_verifier_feedback_uses_next_failed_sibling():
    # index 0: the next responses are 1 (failed, message), ... -> response 1's message
    out = run("verifier_feedback", ctx=group_ctx(0))
    assert out[1]["content"] == (
        "What is 2+3?\n\nAn earlier attempt at this problem was checked and found wrong. The checker said:\n"
        "expected '5', got '6'\n\nAvoid that mistake and solve the problem above in your own way.")
    # index 2: next are 3 (infra fault, skipped: not feedback on the attempt), 4 -> response 4's message
    assert "expected '5', got '7'" in run("verifier_feedback", ctx=group_ctx(2))[1]["content"]


def test_successful_sibling_never_itself():
    # index 0 is correct; the next correct response is 2
    out = run("successful_sibling", ctx=group_ctx(0))
    assert out[1]["content"] == (
        "What is 2+3?\n\nHere is a correct solution to this problem:\n\\boxed{5}\n\n"
        "After understanding the solution, please solve the problem above in your own way.")
    # index 2: wraps round to response 0
    assert "2+3 = 5, so \\boxed{5}" in run("successful_sibling", ctx=group_ctx(2))[1]["content"]


def test_no_qualifying_sibling_falls_back_to_student():
    lone = InjectorContext(index=0, responses=["\\boxed{5}", "\\boxed{6}"],
                           verdicts=[Verdict.ok(), Verdict.fail("wrong_answer", "")])
    # the only correct response is the response itself; the only failure has no message
    assert run("successful_sibling", ctx=lone) == STUDENT
    assert run("verifier_feedback", ctx=lone) == STUDENT
    lone.options = {"fallback": "reference_answer"}
    assert run("successful_sibling", ctx=lone)[1]["content"] == RA_TEXT
    lone.options = {"fallback": "oracle"}
    with pytest.raises(I.InjectorError, match="fallback"):
        run("successful_sibling", ctx=lone)


def test_none_is_a_copy_of_the_student():
    assert run("none") == STUDENT


def test_custom_template_and_braces_in_hint():
    ctx = InjectorContext(options={"template": "Hint: {hint}\n{question}"})
    out = run("reference_answer", {"answer": "\\frac{1}{2}"}, ctx=ctx)
    assert out[1]["content"] == "Hint: \\frac{1}{2}\nWhat is 2+3?"
    with pytest.raises(I.InjectorError, match="template"):
        run("reference_answer", ctx=InjectorContext(options={"template": "no placeholders"}))


def test_list_content_keeps_images_in_place():
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
    out = run("reference_answer", {"answer": "a cat"}, msgs)
    before, after = I.TEMPLATES["reference_answer"].replace("{hint}", "a cat").split("{question}")
    assert out[0]["content"] == ([{"type": "text", "text": before}] if before else []) + msgs[0]["content"] + [
        {"type": "text", "text": after}]
    assert out[0]["content"][0] == {"type": "image"}  # the template starts with the question


def test_truncation_character_fallback():
    # budget 3 tokens * 4 chars per token = the first 12 characters of the solution
    ctx = InjectorContext(options={"max_hint_tokens": 3})
    out = run("reference_solution", ctx=ctx)
    assert "Here is a reference solution:\nAdd 2 and 3 \n\n" in out[1]["content"]


def test_truncation_with_tokenizer_callbacks():
    words = lambda s: s.split()  # noqa: E731  a word "tokenizer"
    ctx = InjectorContext(options={"max_hint_tokens": 2},
                          truncate_tokens=lambda s, n: " ".join(words(s)[:n]))
    assert "solution:\nAdd 2\n\n" in run("reference_solution", ctx=ctx)[1]["content"]
    # count-only tokenizer: cut by characters until the count fits (3 words)
    ctx = InjectorContext(options={"max_hint_tokens": 3}, count_tokens=lambda s: len(words(s)))
    content = run("reference_solution", ctx=ctx)[1]["content"]
    hint = content.split("solution:\n")[1].split("\n\n")[0]
    assert len(words(hint)) <= 3 and "Add 2 and 3".startswith(hint.strip())
    # a short hint under the budget is kept whole
    assert run("reference_answer", ctx=InjectorContext(count_tokens=len))[1]["content"] == RA_TEXT


@pytest.mark.parametrize("name,row,messages,ctx,match", [
    ("reference_answer", {}, STUDENT, None, "no 'answer' column"),
    ("reference_answer", {"answer": None}, STUDENT, None, "'answer' must be"),
    ("reference_solution", {"answer": "5"}, STUDENT, None, "'solution' column"),
    ("reference_answer", ROW, [{"role": "system", "content": "x"}], None, "role 'user'"),
    ("reference_answer", ROW, STUDENT, InjectorContext(options={"max_hint_tokens": 0}), "max_hint_tokens"),
    ("successful_sibling", ROW, STUDENT, InjectorContext(index=0, responses=["a"], verdicts=[]), "verdicts"),
])
def test_bad_inputs_name_the_problem(name, row, messages, ctx, match):
    with pytest.raises(I.InjectorError, match=match):
        getattr(I, name)(row, messages, ctx or InjectorContext())


EXPECTED = {"reference_answer", "reference_solution", "verifier_feedback", "successful_sibling", "none"}


def test_registered_from_rlsd(pm):
    rows = [r for r in pm.registry.rows() if r["kind"] == "injector" and r["name"] in EXPECTED]
    assert {r["name"] for r in rows} == EXPECTED
    assert all(r["distribution"] == "rlsd" for r in rows)
    assert pm.registry.injector("successful_sibling").needs_group
    assert pm.registry.injector("verifier_feedback").needs_group
    assert not pm.registry.injector("reference_answer").needs_group
