"""The `reasoning_gym` verifier: each generator's own scorer, on rows from the real task source.

Reference answers must score 1 and corrupted ones (one digit or letter changed) below 1 on a
sample of generators across reasoning-gym's families (arithmetic, puzzles, ciphers, graphs,
games, logic). Measured on all 100 generators that have gold (seed 7, 3 rows each): every
reference answer scores 1; the corrupted answers score below 1 except on five generators whose
scorers tolerate the change (coin_flip, decimal_arithmetic, number_format, number_sorting:
numeric tolerance; game_of_life_halting: scores some wrong answers 1), left out here.
"""

from __future__ import annotations

import pytest

from rlsd_core import Category
from rlsd_core.rewards import VerifierRuntime
from rlsd_plugins.task_sources import reasoning_gym_rows
from rlsd_verifiers.reasoning_gym import RECORD, score

GENERATORS = [
    "ab", "acre", "aiw", "base_conversion", "basic_arithmetic", "bf", "binary_matrix",
    "caesar_cipher", "chain_sum", "count_bits", "course_schedule", "cryptarithm",
    "family_relationships", "fraction_simplification", "gcd", "gsm_symbolic", "jugs",
    "knights_knaves", "letter_counting", "maze", "n_queens", "palindrome_generation",
    "polynomial_multiplication", "prime_factorization", "rotate_matrix", "shortest_path",
    "simple_equations", "sokoban", "spell_backward", "tower_of_hanoi", "word_sequence_reversal",
]


def corrupt(gold: str) -> str:
    """Change the last digit (else the last letter) of the answer."""
    for i in range(len(gold) - 1, -1, -1):
        if gold[i].isdigit():
            return gold[:i] + str((int(gold[i]) + 1) % 10) + gold[i + 1:]
    for i in range(len(gold) - 1, -1, -1):
        if gold[i].isalpha():
            return gold[:i] + ("c" if gold[i].lower() == "b" else "b") + gold[i + 1:]
    return gold + "?"


@pytest.fixture(scope="module")
def rows_by_generator():
    return {name: reasoning_gym_rows(name, size=3, seed=7) for name in GENERATORS}


def test_at_least_twenty_generators():
    assert len(set(GENERATORS)) >= 20


@pytest.mark.parametrize("name", GENERATORS)
def test_reference_scores_one_and_a_corrupted_answer_less(rows_by_generator, name):
    rows = rows_by_generator[name]
    right = score([f"Thinking...\n<answer>{r['answer']}</answer>" for r in rows], rows)
    assert [(v.reward, v.category) for v in right] == [(1.0, Category.OK)] * 3, right
    wrong = score([f"<answer>{corrupt(r['answer'])}</answer>" for r in rows], rows)
    for v, r in zip(wrong, rows):
        assert v.reward < 1.0 and v.category == Category.WRONG_ANSWER, (r["answer"], v)


def test_the_task_source_scores_with_it_by_default(pm):
    assert pm.registry.task_source("reasoning_gym").verifier == "reasoning_gym"


def test_the_generator_config_travels_in_the_row():
    rows = reasoning_gym_rows("decimal_arithmetic", size=2, seed=1,
                              config={"min_num_decimal_places": 1, "max_num_decimal_places": 2})
    assert rows[0]["metadata"]["rlsd_dataset_config"] == {"min_num_decimal_places": 1,
                                                          "max_num_decimal_places": 2}
    assert [v.reward for v in score([f"<answer>{r['answer']}</answer>" for r in rows], rows)] == [1.0, 1.0]


def test_unscorable_rows_and_answers_get_precise_categories():
    row = reasoning_gym_rows("prime_factorization", size=1, seed=3)[0]
    # its scorer raises on junk: the model's fault, not the harness's
    assert score(["<answer>lots of junk</answer>"], [row])[0].category == Category.PARSE_ERROR
    assert score([""], [row])[0].category == Category.NO_ANSWER
    no_meta = {"answer": "4", "metadata": {}}
    assert score(["<answer>4</answer>"], [no_meta])[0].category == Category.GOLD_ERROR
    unknown = {"answer": "4", "metadata": {"source_dataset": "no_such_generator"}}
    assert score(["<answer>4</answer>"], [unknown])[0].category == Category.GOLD_ERROR


def test_binary_option_drops_partial_credit():
    row = reasoning_gym_rows("spell_backward", size=1, seed=3)[0]
    wrong = f"<answer>{corrupt(row['answer'])}</answer>"
    assert 0 < score([wrong], [row])[0].reward < 1  # the scorer's partial credit
    assert score([wrong], [row], binary=True)[0].reward == 0.0


def test_through_the_worker_pool():
    """The path training uses: a worker process that imports reasoning-gym while it starts."""
    rows = reasoning_gym_rows("basic_arithmetic", size=2, seed=5)
    with VerifierRuntime(RECORD, workers=1, cache=0) as rt:
        assert rt.wait_ready(180)
        got = rt.score([f"<answer>{rows[0]['answer']}</answer>", "<answer>nope</answer>"], rows)
    assert [v.category for v in got] == [Category.OK, Category.WRONG_ANSWER]
