"""A labeled set of math-equivalence cases generated from reasoning-gym tasks (fixed seeds).

Each case is (completion, gold, expected, tag): a model-style completion, the task's gold answer
exactly as reasoning-gym gives it, whether a correct grader must accept it, and a short tag
saying which reformulation or near miss it is. Equivalent reformulations change the notation
(LaTeX vs plain text, x = v, term order, factored form, decimals, separators, wrappers);
near misses change the value (off by one, sign, reciprocal, a dropped root or term, a
too-coarse decimal) or hedge. Used by tests/test_math_verifier.py and bench/verifiers.py.

Some reasoning-gym generators (polynomial_multiplication) iterate over sets, so their items
depend on PYTHONHASHSEED as well as on the seed. The set is therefore generated under
PYTHONHASHSEED=0 and frozen in tests/data/math_labeled.jsonl (`load()`); regenerate it with

    python tests/math_labeled.py > tests/data/math_labeled.jsonl

(which re-executes itself with PYTHONHASHSEED=0); a test checks the file against a fresh build.
"""

from __future__ import annotations

import json
import os
import sys
from fractions import Fraction

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "math_labeled.jsonl")

SEED = 20261127
ITEMS_PER_TASK = 4

INTEGER_TASKS = ("basic_arithmetic", "chain_sum", "simple_equations", "gcd", "lcm", "products",
                 "leg_counting", "count_primes", "gsm_symbolic")


def _int_cases(gold: str, meta: dict) -> list[tuple[str, bool, str]]:
    n = int(gold)
    var = meta.get("variable", "x")
    out = [
        (f"Adding it all up gives \\boxed{{{n}}}.", True, "boxed"),
        (f"The final answer is ${n}$.", True, "final_answer_phrase"),
        (f"<answer>{n}</answer>", True, "answer_tag"),
        (f"So {var} = {n}, i.e. \\boxed{{{var} = {n}}}", True, "assignment"),
        (f"\\boxed{{{n}.0}}", True, "decimal_form"),
        (f"\\boxed{{\\text{{{n}}}}}", True, "text_wrapper"),
        (f"\\boxed{{{n + 1}}}", False, "off_by_one"),
        (f"\\boxed{{{n * 10 + 1}}}", False, "digit_shift"),
        (f"It is \\boxed{{{n}}} or maybe \\boxed{{{n + 2}}}", False, "hedge_two_boxes"),
        (f"\\boxed{{{n} \\text{{ or }} {n - 1}}}", False, "hedge_or"),
        (f"The answer is {n} or {n + 1}.", False, "hedge_phrase"),
    ]
    if n != 0:
        out.append((f"\\boxed{{{-n}}}", False, "sign"))
    if abs(n) >= 1000:
        out.append((f"\\boxed{{{n:,}}}", True, "thousands_separator"))
    return out


def _fraction_cases(gold: str, meta: dict) -> list[tuple[str, bool, str]]:
    a, b = meta["simplified_numerator"], meta["simplified_denominator"]
    dec = f"{a / b:.10f}"
    coarse = f"{a / b:.3f}"
    out = [
        (f"\\boxed{{\\frac{{{a}}}{{{b}}}}}", True, "latex_frac"),
        (f"\\boxed{{{a}/{b}}}", True, "slash"),
        (f"The final answer is $\\dfrac{{{a}}}{{{b}}}$.", True, "dfrac_phrase"),
        (f"\\boxed{{{dec}}}", True, "decimal_10_places"),
        (f"\\boxed{{\\frac{{{b}}}{{{a}}}}}", False, "reciprocal"),
        (f"\\boxed{{\\frac{{{a + 1}}}{{{b}}}}}", False, "numerator_off_by_one"),
        (f"\\boxed{{-\\frac{{{a}}}{{{b}}}}}", False, "sign"),
    ]
    if Fraction(coarse) != Fraction(a, b):
        out.append((f"\\boxed{{{coarse}}}", False, "decimal_too_coarse"))
    return out


def _decimal_cases(gold: str, meta: dict) -> list[tuple[str, bool, str]]:
    v = Fraction(gold)
    off = float(v) + (0.1 if v >= 0 else -0.1)
    return [
        (f"\\boxed{{{gold}}}", True, "boxed"),
        (f"\\boxed{{{gold}0}}", True, "trailing_zero"),
        (f"The final answer is {gold}", True, "final_answer_phrase"),
        (f"\\boxed{{{off:.4f}}}", False, "tenth_off"),
        (f"\\boxed{{{-float(v) if v else 1.0}}}", False, "sign"),
        (f"\\boxed{{{gold}}} or \\boxed{{{off:.4f}}}", False, "hedge_two_boxes"),
    ]


def _float_cases(gold: str, meta: dict) -> list[tuple[str, bool, str]]:
    v = Fraction(gold)
    mant, _, exp = f"{float(v):.10e}".partition("e")
    sci = f"{mant} \\times 10^{{{int(exp)}}}"
    out = [
        (f"\\boxed{{{gold}}}", True, "as_given"),
        (f"\\boxed{{{sci}}}", True, "scientific_latex"),
        (f"\\boxed{{{float(v) * 1.001!r}}}", False, "relative_1e-3"),
        (f"\\boxed{{{float(v) * 10!r}}}", False, "power_of_ten"),
    ]
    if abs(v) < Fraction(1, 10**6):
        out.append(("\\boxed{0}", False, "tiny_is_not_zero"))
    return out


def _sympy_expr(gold: str):
    import sympy

    return sympy.sympify(gold.replace("+ C", "+ C_const").replace("- C", "- C_const"),
                         locals={"C_const": sympy.Symbol("C")})


def _poly_cases(gold: str, meta: dict) -> list[tuple[str, bool, str]]:
    import sympy

    expr = _sympy_expr(gold)
    x = sorted(expr.free_symbols, key=lambda s: s.name)[0]
    terms = sympy.Add.make_args(sympy.expand(expr))
    first = terms[0]
    coeff = first.as_coeff_Mul()[0]
    bumped = expr + first / coeff if coeff != 0 else expr + 1
    dropped = expr - terms[-1]
    mirrored = expr.subs(x, -x)
    out = [
        (f"\\boxed{{{sympy.latex(expr)}}}", True, "latex"),
        (f"\\boxed{{{sympy.latex(expr, order='rev-lex')}}}", True, "term_order"),
        (f"\\boxed{{{sympy.latex(sympy.factor(expr))}}}", True, "factored"),
        (f"The final answer is {gold}", True, "plain_text"),
        (f"\\boxed{{{sympy.latex(bumped)}}}", False, "coefficient_off_by_one"),
        (f"\\boxed{{{sympy.latex(dropped)}}}", False, "dropped_term"),
    ]
    if sympy.expand(mirrored - expr) != 0:  # an even polynomial is its own mirror image
        out.append((f"\\boxed{{{sympy.latex(mirrored)}}}", False, "variable_sign"))
    return out


def _integration_cases(gold: str, meta: dict) -> list[tuple[str, bool, str]]:
    import sympy

    expr = _sympy_expr(gold)
    c = sympy.Symbol("C")
    body = expr - c
    terms = sympy.Add.make_args(sympy.expand(body))
    first = terms[0]
    return [
        (f"\\boxed{{{sympy.latex(body)} + C}}", True, "latex"),
        (f"\\boxed{{C + {sympy.latex(body, order='rev-lex')}}}", True, "term_order"),
        (f"\\boxed{{{sympy.latex(body + first)} + C}}", False, "doubled_term"),
        (f"\\boxed{{{sympy.latex(-body)} + C}}", False, "sign"),
    ]


def _roots_cases(gold: str, meta: dict) -> list[tuple[str, bool, str]]:
    roots = [r.strip() for r in gold.split(",")]
    var = meta.get("variable", "x")
    out = [
        (f"\\boxed{{{', '.join(roots)}}}", True, "listed"),
        (f"\\boxed{{{', '.join(reversed(roots))}}}", True, "other_order"),
        (f"\\boxed{{{', '.join(f'{var} = {r}' for r in roots)}}}", True, "assignments"),
    ]
    if len(roots) > 1:
        out.append((f"\\boxed{{{', '.join(roots[:-1])}}}", False, "missing_root"))
    bad = [str(-Fraction(roots[0]) + 1)] + roots[1:]
    out.append((f"\\boxed{{{', '.join(str(float(Fraction(r))) for r in bad)}}}", False, "wrong_root"))
    return out


def _complex_cases(gold: str, meta: dict) -> list[tuple[str, bool, str]]:
    z = complex(gold.replace(" ", "").replace("i", "j"))
    re_, im_ = int(z.real) if z.real == int(z.real) else z.real, int(z.imag) if z.imag == int(z.imag) else z.imag
    sign = "+" if im_ >= 0 else "-"
    conj = "-" if im_ >= 0 else "+"
    return [
        (f"\\boxed{{{gold}}}", True, "as_given"),
        (f"\\boxed{{{re_} {sign} {abs(im_)}i}}", True, "integer_parts"),
        (f"\\boxed{{{re_} {conj} {abs(im_)}i}}", False, "conjugate"),
        (f"\\boxed{{{re_ + 1} {sign} {abs(im_)}i}}", False, "real_part_off"),
    ]


def _factor_cases(gold: str, meta: dict) -> list[tuple[str, bool, str]]:
    factors = [int(f) for f in gold.replace("×", " ").split()]
    powers: dict[int, int] = {}
    for f in factors:
        powers[f] = powers.get(f, 0) + 1
    compact = " \\times ".join(f"{p}^{{{k}}}" if k > 1 else str(p) for p, k in sorted(powers.items()))
    wrong = factors[:-1] + [factors[-1] + 2]
    times, cdot = " \\times ", " \\cdot "
    return [
        (f"\\boxed{{{times.join(map(str, factors))}}}", True, "times"),
        (f"\\boxed{{{compact}}}", True, "powers"),
        (f"\\boxed{{{cdot.join(map(str, factors))}}}", True, "cdot"),
        (f"\\boxed{{{times.join(map(str, wrong))}}}", False, "wrong_factor"),
    ]


TASKS = {
    **{name: _int_cases for name in INTEGER_TASKS},
    "fraction_simplification": _fraction_cases,
    "decimal_arithmetic": _decimal_cases,
    "decimal_chain_sum": _decimal_cases,
    "polynomial_multiplication": _poly_cases,
    "simple_integration": _integration_cases,
    "polynomial_equations": _roots_cases,
    "complex_arithmetic": _complex_cases,
    "prime_factorization": _factor_cases,
    "power_function": _float_cases,
}


def build(items_per_task: int = ITEMS_PER_TASK, seed: int = SEED) -> list[dict]:
    """The labeled set: a list of {task, completion, gold, expected, tag}, deterministic."""
    import reasoning_gym

    cases: list[dict] = []
    for task, make in TASKS.items():
        ds = reasoning_gym.create_dataset(task, seed=seed, size=items_per_task)
        for i in range(items_per_task):
            entry = ds[i]
            gold = str(entry["answer"])
            meta = dict(entry.get("metadata") or {})
            for completion, expected, tag in make(gold, meta):
                cases.append({"task": task, "completion": completion, "gold": gold,
                              "expected": expected, "tag": tag})
    return cases


def load() -> list[dict]:
    """The frozen labeled set (what tests and the benchmark score)."""
    with open(FIXTURE, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def dumps(cases: list[dict]) -> str:
    return "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in cases)


if __name__ == "__main__":
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})
    sys.stdout.write(dumps(build()))
