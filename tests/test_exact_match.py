"""The exact_match verifier: normalisation options, multiple golds, bad inputs."""

from __future__ import annotations

import time

import pytest

from rlsd_core import Category, OptionsError
from rlsd_core.rewards import VerifierRuntime
from rlsd_verifiers.exact_match import RECORD, normalize, score_one


@pytest.mark.parametrize("completion, gold", [
    ("Paris", "paris"),                                  # case
    ("  Paris.  ", "Paris"),                             # surrounding whitespace + punctuation
    ("New   York", "new york"),                          # internal whitespace
    ("The answer is \\boxed{\\text{Paris}}", "Paris"),   # LaTeX wrappers
    ("so \\boxed{1,000}", "1000"),                       # thousands separators
    ("<answer>2.50</answer>", "2.5"),                    # trailing zeros
    ("The final answer is +7", "7"),                     # leading plus
    ("$42$", "42"),                                      # math mode
    ("ｐａｒｉｓ", "paris"),                              # full-width (NFKC)
    ("\u22125", "-5"),                                   # Unicode minus
])
def test_equivalent_forms_match(completion, gold):
    v = score_one(completion, {"answer": gold})
    assert (v.reward, v.category) == (1.0, Category.OK), v


@pytest.mark.parametrize("completion, gold, option", [
    ("Paris", "paris", {"ignore_case": False}),
    ("Paris.", "Paris", {"strip_punctuation": False}),
    ("1,000", "1000", {"normalize_numbers": False}),
    ("New  York", "new york", {"collapse_whitespace": False}),
    ("\\text{Paris}", "Paris", {"unwrap_latex": False, "extract": "none"}),
])
def test_each_normalisation_can_be_turned_off(completion, gold, option):
    assert score_one(completion, {"answer": gold}).reward == 1.0
    assert score_one(completion, {"answer": gold}, **option).category == Category.WRONG_ANSWER


def test_multiple_gold_answers_and_numeric_gold():
    assert score_one("navy", {"answer": ["blue", "navy"]}).reward == 1.0
    assert score_one("red", {"answer": ["blue", "navy"]}).message == "expected 'blue', got 'red'"
    assert score_one("\\boxed{12}", {"answer": 12}).reward == 1.0


def test_last_wrapped_answer_wins_and_wrapped_mode_requires_one():
    assert score_one("\\boxed{3} no wait \\boxed{4}", {"answer": "4"}).reward == 1.0
    assert score_one("4", {"answer": "4"}, extract="wrapped").category == Category.NO_ANSWER


def test_numbers_are_not_mangled():
    assert normalize("1,000,000") == "1000000"
    assert normalize("-0.50") == "-0.5"
    assert normalize("0.0") == "0"
    assert normalize("1,00") == "1,00"  # not a thousands pattern: left alone
    assert score_one("10", {"answer": "1"}).reward == 0.0


@pytest.mark.parametrize("value", [None, b"paris", 42, {"a": 1}])
def test_non_string_completion_is_invalid_input(value):
    assert score_one(value, {"answer": "x"}).category == Category.INVALID_INPUT


@pytest.mark.parametrize("value", ["", "   ", "\\boxed{}", "\\boxed{ }", "\u200b"])
def test_empty_answers_are_no_answer(value):
    assert score_one(value, {"answer": "x"}).category == Category.NO_ANSWER


def test_huge_input_keeps_the_tail_and_is_fast():
    start = time.perf_counter()
    v = score_one("blah " * 200_000 + "\\boxed{7}", {"answer": "7"})
    huge = score_one("9" * 1_000_000, {"answer": "7"})
    assert v.reward == 1.0
    assert huge.category == Category.INPUT_TOO_LARGE
    assert time.perf_counter() - start < 1.0


def test_bad_gold_is_gold_error_and_counts_as_infra():
    v = score_one("x", {"answer": None})
    assert v.category == Category.GOLD_ERROR and v.is_infra


def test_unknown_option_is_a_clear_error_through_the_runtime():
    # Refused when the runtime is built, before any row is scored (never a verifier_error per row).
    with pytest.raises(OptionsError, match="ignore_cas.*valid: ignore_case"):
        VerifierRuntime(RECORD, {"ignore_cas": True})


def test_runtime_marks_missing_column_invalid_input():
    out = VerifierRuntime(RECORD).score(["a", "b"], [{"answer": "a"}, {"gold": "b"}])
    assert [v.category for v in out] == [Category.OK, Category.INVALID_INPUT]
    assert "answer" in out[1].message
