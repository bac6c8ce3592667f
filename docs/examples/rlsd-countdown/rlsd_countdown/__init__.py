"""A verifier for the countdown numbers game, packaged as a third-party rlsd plugin.

A row gives `numbers` (the tiles) and `target`; the completion must end with an arithmetic
expression (inside <answer>...</answer>, or on its last line) that uses each tile at most once,
only + - * / and parentheses, and evaluates exactly to the target.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from fractions import Fraction

from rlsd_core import Category, Example, Verdict, VerifierRecord, hookimpl

# The plugin API range this plugin is written for (docs/plugin-api.md).
RLSD_API = ">=1.0,<2"

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
        ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}


def _evaluate(node: ast.AST, used: list[int]) -> Fraction:
    """Exact rational evaluation of a tiny arithmetic AST; anything else is rejected."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, used)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _evaluate(node.left, used), _evaluate(node.right, used)
        if isinstance(node.op, ast.Div) and right == 0:
            raise ZeroDivisionError("division by zero")
        return _OPS[type(node.op)](left, right)
    raise ValueError(f"only integers, + - * / and parentheses are allowed, found {type(node).__name__}")


def score_one(completion: str, numbers: list[int], target: int) -> Verdict:
    tagged = _ANSWER.findall(completion)
    lines = [ln for ln in completion.strip().splitlines() if ln.strip()]
    expr = (tagged[-1] if tagged else (lines[-1] if lines else "")).strip()
    expr = expr.split("=")[0].strip()  # "3 * 4 = 12" -> "3 * 4"
    if not expr:
        return Verdict.fail(Category.NO_ANSWER, "no expression found")
    if len(expr) > 200:
        return Verdict.fail(Category.INPUT_TOO_LARGE, "expression longer than 200 characters")
    used: list[int] = []
    try:
        value = _evaluate(ast.parse(expr, mode="eval"), used)
    except (SyntaxError, ValueError, ZeroDivisionError) as exc:
        return Verdict.fail(Category.PARSE_ERROR, f"cannot evaluate {expr!r}: {exc}")
    extra = Counter(used) - Counter(numbers)
    if extra:
        return Verdict.fail(Category.WRONG_ANSWER, f"uses numbers not available: {sorted(extra.elements())}")
    if value != target:
        return Verdict.fail(Category.WRONG_ANSWER, f"expected {target}, got {value}", answer=str(value))
    return Verdict.ok(answer=str(value))


def score(completions, rows, **options):
    return [score_one(c, list(r["numbers"]), int(r["target"])) for c, r in zip(completions, rows)]


# Known cases shipped with the record: `rlsd plugins check countdown` scores them.
EXAMPLES = (
    Example(row={"numbers": [25, 5, 3, 7], "target": 60}, completion="<answer>(25 - 5) * 3</answer>",
            reward=1.0),
    Example(row={"numbers": [25, 5], "target": 31}, completion="<answer>25 + 5</answer>", reward=0.0),
    Example(row={"numbers": [5, 2], "target": 25}, completion="<answer>5 * 5</answer>", reward=0.0),
)


@hookimpl
def rlsd_verifiers():
    return [VerifierRecord(
        name="countdown", fn=score, columns=("numbers", "target"), version="0.1.0",
        description="Countdown numbers game: expression over the given numbers hits the target.",
        in_process=True, time_budget_s=1.0, examples=EXAMPLES)]
