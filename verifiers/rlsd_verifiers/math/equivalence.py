"""When two parsed values are the same answer.

Rules (docs/verifiers.md has the table):
- exact numbers compare exactly: Fractions, big integers of any length;
- a value written with a decimal point or an exponent ("inexact") matches within a relative
  tolerance `rel_tol` (default 1e-6): 0.3333333 == 1/3, but 0.333 != 1/3 and 6.32 != 6.3209;
- percentages: "50%" matches 50 and 0.5; a gold written "50%" accepts 50, 0.5 and 50%;
- degrees: "30^\\circ" matches 30 and pi/6;
- constants (sqrt, pi, logs) compare numerically at 40 significant digits;
- expressions with variables: same free symbols, and equal values at several fixed sample
  points (exact-looking expressions to 1e-12, inexact ones to rel_tol);
- `x = 3` vs `3` (a lone symbol on one side), equations up to a constant factor, inequalities
  either way round, sets (any order), tuples (in order), intervals (ends and openness), unions,
  matrices element by element;
- values too large to build (10^{10^{10}}, 1000000!, power towers) are never evaluated: their
  log-magnitudes (mpmath) must agree, then their residues modulo (2^127-1)(2^61-1); a tower
  whose magnitude overflows even that is equal only to the same tree.
Sympy objects never leave this module as anything but a bool.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import mpmath
import sympy
from sympy import (And, Eq, FiniteSet, Interval, MatrixBase, Rel, Symbol, Tuple, Union,
                   factorial)

from .parsing import Value

EVAL_DIGITS = 50_000  # exact evaluation is refused above this many digits
_MOD = (2**127 - 1) * (2**61 - 1)
_MAG_DPS = 60
_EXACT_REL = mpmath.mpf("1e-25")
_SAMPLE_POINTS = (
    (Fraction(3719, 10000), Fraction(1, 7)),
    (Fraction(12613, 10000), Fraction(-2, 9)),
    (Fraction(-6211, 10000), Fraction(5, 13)),
    (Fraction(21817, 10000), Fraction(3, 11)),
    (Fraction(4, 3), Fraction(-1, 17)),
)


class TooBig(Exception):
    """Exact evaluation would build a number with more than EVAL_DIGITS digits."""


def _digits(f: Fraction) -> float:
    n = max(abs(f.numerator), f.denominator)
    return n.bit_length() * 0.30103


# ---------------------------------------------------------------------------- exact values
def rational(e: Any) -> Fraction | None:
    """The exact rational value of a number-only tree, None if it is not rational.

    Raises TooBig instead of building an enormous integer.
    """
    if isinstance(e, Fraction):
        return e
    if not isinstance(e, sympy.Basic):
        return None
    if e.is_Rational:
        return Fraction(int(e.p), int(e.q))
    if e.is_Float:
        return Fraction(str(e))
    if e.is_Add:
        total = Fraction(0)
        for arg in e.args:
            v = rational(arg)
            if v is None:
                return None
            total += v
        return total
    if e.is_Mul:
        prod = Fraction(1)
        for arg in e.args:
            v = rational(arg)
            if v is None:
                return None
            prod *= v
            if _digits(prod) > EVAL_DIGITS:
                raise TooBig
        return prod
    if e.is_Pow:
        base, ex = rational(e.base), rational(e.exp)
        if base is None or ex is None:
            return None
        if ex.denominator != 1:
            return _rational_root(base, ex)
        n = ex.numerator
        if base == 0:
            return None if n < 0 else (Fraction(1) if n == 0 else Fraction(0))
        if abs(base) == 1:
            return base ** n
        if abs(n) > 4 * EVAL_DIGITS or abs(n) * _digits(base) > EVAL_DIGITS:
            raise TooBig  # |base| >= 2 here, so n itself bounds the size
        return base ** n
    if isinstance(e, factorial):
        n = rational(e.args[0])
        if n is None or n.denominator != 1 or n < 0:
            return None
        if n > 15_000:  # 15000! has ~56,000 digits
            raise TooBig
        return Fraction(math.factorial(int(n)))
    if isinstance(e, (sympy.Sum, sympy.Product)):
        done = e.doit()
        if done.has(sympy.Sum, sympy.Product):
            return None
        return rational(done)
    return None


def _rational_root(base: Fraction, ex: Fraction) -> Fraction | None:
    """base**(p/q) when it is rational (4^{1/2} = 2), else None."""
    if base < 0 or _digits(base) > 2000 or abs(ex.numerator) > 1000:
        return None
    q = ex.denominator
    num = _int_root(base.numerator, q)
    den = _int_root(base.denominator, q)
    if num is None or den is None:
        return None
    return Fraction(num, den) ** ex.numerator


def _int_root(n: int, q: int) -> int | None:
    r = round(n ** (1.0 / q)) if n.bit_length() < 1000 else int(sympy.integer_nthroot(n, q)[0])
    for c in (r - 1, r, r + 1):
        if c >= 0 and c ** q == n:
            return c
    return None


# ------------------------------------------------------------------- huge-number compare
def magnitude(e: Any) -> Any:
    """mpmath value of a number-only tree at 60 digits, or None when it cannot be had."""
    with mpmath.workdps(_MAG_DPS):
        try:
            return _mag(e)
        except (OverflowError, ValueError, ZeroDivisionError, TypeError):
            return None


def _mag(e: Any) -> Any:
    if isinstance(e, Fraction):
        return mpmath.mpf(e.numerator) / e.denominator
    if e.is_Integer:
        return mpmath.mpf(int(e))
    if e.is_Rational:
        return mpmath.mpf(int(e.p)) / int(e.q)
    if e.is_Add:
        parts = [_mag(a) for a in e.args]
        if any(p is None for p in parts):
            return None
        return mpmath.fsum(parts)
    if e.is_Mul:
        out = mpmath.mpf(1)
        for a in e.args:
            p = _mag(a)
            if p is None:
                return None
            out *= p
        return out
    if e.is_Pow:
        b, x = _mag(e.base), _mag(e.exp)
        if b is None or x is None:
            return None
        if b != 0 and abs(b) != 1 and abs(x) * abs(mpmath.log10(abs(b))) > 1e15:
            return None  # more than 10^15 digits: beyond any honest answer
        if b < 0 and x != mpmath.floor(x):
            return None
        return mpmath.power(b, x)
    if isinstance(e, factorial):
        n = _mag(e.args[0])
        if n is None or n > 1e15:
            return None
        return mpmath.factorial(n)
    if isinstance(e, (sympy.Sum, sympy.Product)):
        done = e.doit()
        return None if done.has(sympy.Sum, sympy.Product) else _mag(done)
    if e.is_number and not e.has(sympy.Pow, factorial):
        v = sympy.N(e, _MAG_DPS)
        return mpmath.mpf(str(v)) if v.is_real and v.is_finite else None
    return None


def residue(e: Any, mod: int = _MOD) -> int | None:
    """The value of an integer/rational tree modulo `mod`, or None."""
    try:
        return _res(e, mod)
    except (ValueError, ZeroDivisionError, TooBig):
        return None


def _res(e: Any, m: int) -> int | None:
    if isinstance(e, Fraction):
        return e.numerator * pow(e.denominator, -1, m) % m
    if e.is_Integer:
        return int(e) % m
    if e.is_Rational:
        return int(e.p) * pow(int(e.q), -1, m) % m
    if e.is_Add or e.is_Mul:
        acc = 0 if e.is_Add else 1
        for a in e.args:
            r = _res(a, m)
            if r is None:
                return None
            acc = (acc + r) % m if e.is_Add else (acc * r) % m
        return acc
    if e.is_Pow:
        b = _res(e.base, m)
        x = rational(e.exp)  # an exponent too large to build raises TooBig -> None
        if b is None or x is None or x.denominator != 1:
            return None
        return pow(b, int(x.numerator), m)
    if isinstance(e, factorial):
        n = rational(e.args[0])
        if n is None or n.denominator != 1 or n < 0 or n > 3_000_000:
            return None
        acc = 1
        for k in range(2, int(n) + 1):
            acc = acc * k % m
        return acc
    if isinstance(e, (sympy.Sum, sympy.Product)):
        done = e.doit()
        return None if done.has(sympy.Sum, sympy.Product) else _res(done, m)
    return None


# ------------------------------------------------------------------------- comparisons
def _close(x: Any, y: Any, rel: Any) -> bool:
    if x == y:
        return True
    return abs(x - y) <= rel * max(abs(x), abs(y))


def num_equal(x: Fraction, y: Fraction, inexact: bool, rel_tol: float,
              places: int | None = None) -> bool:
    """Exact, or (one side written as a decimal) within rel_tol *and*, when the decimal places
    are known, within half a unit of the last written place: 0.3333333 == 1/3, 6.320988 ==
    6.32098837209, but 12.0000001 != 12 and 1000000.4 != 1000000."""
    if x == y:
        return True
    if not inexact:
        return False
    diff = abs(x - y)
    if diff > Fraction(rel_tol) * max(abs(x), abs(y)):
        return False
    return places is None or diff <= Fraction(1, 2) * Fraction(10) ** -places


def const_equal(a: Any, g: Any, inexact: bool, rel_tol: float) -> bool:
    """Two number-only values (no free symbols)."""
    too_big = False
    try:
        ra = rational(a)
        rg = rational(g)
    except TooBig:
        too_big = True
        ra = rg = None
    if ra is not None and rg is not None:
        return num_equal(ra, rg, inexact, rel_tol)
    if too_big:
        return big_equal(a, g)
    va, vg = _evalf(a), _evalf(g)
    if va is None or vg is None:
        return False
    rel = mpmath.mpf(rel_tol) if inexact else _EXACT_REL
    with mpmath.workdps(_MAG_DPS):
        return bool(_close(va, vg, rel))


def _evalf(e: Any) -> Any:
    if isinstance(e, Fraction):
        return mpmath.mpf(e.numerator) / e.denominator
    mag = magnitude(e)
    if mag is None and _has_big_power(e):
        return None
    v = sympy.N(e, 40)
    if not v.is_number or v.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):
        return None
    re_, im_ = v.as_real_imag()
    try:
        return mpmath.mpc(mpmath.mpf(str(sympy.N(re_, 40))), mpmath.mpf(str(sympy.N(im_, 40))))
    except (TypeError, ValueError):
        return None


def _has_big_power(e: Any) -> bool:
    for p in e.atoms(sympy.Pow):
        try:
            x = rational(p.exp)
        except TooBig:
            return True
        if x is not None and abs(x) > 10_000:
            return True
    return False


def big_equal(a: Any, g: Any) -> bool:
    """Values too big to build: equal magnitude, then equal residues; else same tree only."""
    if a == g:
        return True
    ma, mg = magnitude(a), magnitude(g)
    if ma is None or mg is None:
        return False  # an overflowing tower equals only itself (checked above)
    with mpmath.workdps(_MAG_DPS):
        if not _close(ma, mg, mpmath.mpf("1e-50")):
            return False
    ra, rg = residue(a), residue(g)
    if ra is None or rg is None:
        return False
    return ra == rg


def _sympify(v: Any) -> Any:
    if isinstance(v, Fraction):
        return sympy.Rational(v.numerator, v.denominator)
    return v


def _subs_value(e: Any, point: dict) -> Any:
    try:
        if e.has(sympy.Sum, sympy.Product):
            # at integer points (see _points) a sum is finite: add it up instead of evalf's
            # Euler-Maclaurin estimate, which takes seconds on symbolic terms
            v = sympy.N(e.xreplace(point).doit(), 30)
        else:
            v = e.evalf(30, subs=point)
    except (TypeError, ValueError, ZeroDivisionError, AttributeError):
        return None
    if not getattr(v, "is_number", False) or v.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):
        return None
    re_, im_ = v.as_real_imag()
    try:
        return mpmath.mpc(mpmath.mpf(str(sympy.N(re_, 30))), mpmath.mpf(str(sympy.N(im_, 30))))
    except (TypeError, ValueError):
        return None


def _points(symbols: list, integer: bool = False) -> list[dict]:
    """Five sample points; small distinct integers when a sum or product needs integer bounds."""
    out = []
    for k, (base, step) in enumerate(_SAMPLE_POINTS):
        if integer:
            out.append({s: sympy.Integer(3 + k + 2 * i) for i, s in enumerate(symbols)})
        else:
            out.append({s: sympy.Rational(base + step * i) for i, s in enumerate(symbols)})
    return out


def expr_equal(a: Any, g: Any, inexact: bool, rel_tol: float) -> bool:
    """Two sympy expressions (or Fractions)."""
    if isinstance(a, Fraction) and isinstance(g, Fraction):
        return num_equal(a, g, inexact, rel_tol)
    a, g = _sympify(a), _sympify(g)
    if a == g:
        return True
    fa, fg = a.free_symbols, g.free_symbols
    if not fa and not fg:
        return const_equal(a, g, inexact, rel_tol)
    # Sampled over the union of both sides' symbols: a side without some symbol is constant in
    # it, so '\\sin^2 x + \\cos^2 x' can equal the gold 1, and 'x' still differs from 'y'.
    by_name = {s.name: s for s in fg}
    by_name.update({s.name: s for s in fa})
    g = g.xreplace({s: by_name[s.name] for s in fg if s is not by_name[s.name]})
    symbols = sorted(by_name.values(), key=lambda s: s.name)
    rel = mpmath.mpf(rel_tol) if inexact else mpmath.mpf("1e-12")
    agreed = 0
    for point in _points(symbols, a.has(sympy.Sum, sympy.Product) or g.has(sympy.Sum, sympy.Product)):
        va, vg = _subs_value(a, point), _subs_value(g, point)
        if va is None or vg is None:
            continue
        with mpmath.workdps(30):
            if not _close(va, vg, rel):
                return False
        agreed += 1
        if agreed >= 3:
            return True
    if agreed >= 2:
        return True
    try:
        return sympy.simplify(a - g) == 0
    except Exception:  # noqa: BLE001
        return False


def _is_rel(v: Any) -> bool:
    return isinstance(v, Rel)


def _lone(v: Any) -> bool:
    """A single letter: a Symbol, or e / i that the parser read as constants ("e = 3")."""
    return isinstance(v, Symbol) or v is sympy.E or v is sympy.I


def _unwrap_assignment(v: Any) -> Any:
    """x = 3 -> 3 (a lone letter on one side)."""
    if isinstance(v, Eq):
        if _lone(v.lhs) and not _lone(v.rhs):
            return v.rhs
        if _lone(v.rhs) and not _lone(v.lhs):
            return v.lhs
        if isinstance(v.lhs, Symbol) and isinstance(v.rhs, Symbol):
            return v.rhs
    return v


def _as_elements(v: Any) -> tuple[list, bool] | None:
    """(elements, ordered) for sets, tuples and 2-point open intervals; None otherwise."""
    if isinstance(v, FiniteSet):
        return list(v.args), False
    if isinstance(v, (Tuple, tuple, list)):
        return list(v), True
    if isinstance(v, Interval) and v.left_open and v.right_open:
        return [v.start, v.end], True
    if v is sympy.EmptySet:
        return [], False
    return None


def _match_all(xs: list, ys: list, ordered: bool, inexact: bool, rel_tol: float) -> bool:
    if ordered:
        return len(xs) == len(ys) and all(same(x, y, inexact, rel_tol) for x, y in zip(xs, ys))
    if len(xs) == len(ys):
        free = list(range(len(ys)))
        for x in xs:
            hit = next((j for j in free if same(x, ys[j], inexact, rel_tol)), None)
            if hit is None:
                break
            free.remove(hit)
        else:
            return True
    # As sets: an element listed twice ("(3,17,3,7)" repeated in a list of solutions) is one
    # element. Every element on each side must equal one on the other.
    return all(any(same(x, y, inexact, rel_tol) for y in ys) for x in xs) and \
        all(any(same(x, y, inexact, rel_tol) for x in xs) for y in ys)


def _equations_equal(a: Eq, g: Eq, inexact: bool, rel_tol: float) -> bool:
    for lhs_a, rhs_a in ((a.lhs, a.rhs), (a.rhs, a.lhs)):
        if _lone(lhs_a) and lhs_a == g.lhs:
            if same(rhs_a, g.rhs, inexact, rel_tol):
                return True
    da, dg = a.lhs - a.rhs, g.lhs - g.rhs
    if expr_equal(da, dg, inexact, rel_tol) or expr_equal(da, -dg, inexact, rel_tol):
        return True
    # proportional: da / dg is a non-zero constant
    syms = sorted(da.free_symbols | dg.free_symbols, key=lambda s: s.name)
    if not syms:
        return False
    ratios = []
    for point in _points(syms, da.has(sympy.Sum, sympy.Product) or dg.has(sympy.Sum, sympy.Product)):
        va, vg = _subs_value(da, point), _subs_value(dg, point)
        if va is None or vg is None or vg == 0:
            continue
        ratios.append(va / vg)
    if len(ratios) < 3 or ratios[0] == 0:
        return False
    with mpmath.workdps(30):
        return all(_close(r, ratios[0], mpmath.mpf("1e-12")) for r in ratios[1:])


def _condition(v: Any) -> bool:
    """An inequality, a chain of them (And) or an alternative of them (Or)."""
    if isinstance(v, (And, sympy.Or)):
        return all(_condition(x) for x in v.args)
    return _is_rel(v) and not isinstance(v, Eq)


def _real_set(v: Any) -> Any:
    """The set of reals a condition in one unknown describes ('-x > -1' -> (-oo, 1), '0 < f(x)
    < 1' -> (0, 1), '1 <= |z| <= 3/2' -> [-3/2, -1] U [1, 3/2]), or None. The unknown is a lone
    symbol or one function application; it is taken to be real."""
    unknowns = set(v.free_symbols)
    applied = v.atoms(sympy.core.function.AppliedUndef)
    if applied:
        if len(applied) != 1:
            return None
        (f,) = applied
        unknowns -= f.free_symbols
        if unknowns:
            return None
        target = f
    elif len(unknowns) == 1:
        (target,) = unknowns
    else:
        return None
    t = sympy.Dummy("t", real=True)
    try:
        out = v.xreplace({target: t}).as_set()
    except Exception:  # noqa: BLE001 - sympy cannot solve it: no set reading
        return None
    return out if isinstance(out, sympy.Set) else None


def _as_set(v: Any) -> Any:
    """A value read as a set of reals: a condition, an interval or union, or an open interval
    written as a pair '(a, b)' with a < b; None otherwise."""
    if _condition(v):
        return _real_set(v)
    if isinstance(v, (Interval, Union)):
        return v
    if isinstance(v, Tuple) and len(v) == 2 and all(getattr(x, "is_number", False) or x in (
            sympy.oo, -sympy.oo) for x in v):
        try:
            if bool(v[0] < v[1]):
                return Interval.open(v[0], v[1])
        except TypeError:
            return None
    return None


def same(a: Any, g: Any, inexact: bool, rel_tol: float, ordered: bool | None = None) -> bool:
    """The structural dispatcher: a is the model's value, g the gold's. `ordered` overrides
    whether two collections compare in order (the written shapes decide it at the top level)."""
    if isinstance(a, Fraction) and isinstance(g, Fraction):
        return num_equal(a, g, inexact, rel_tol)
    a, g = _sympify(a), _sympify(g)
    if isinstance(a, Eq) and isinstance(g, Eq):
        return _equations_equal(a, g, inexact, rel_tol)
    if isinstance(a, Eq) and not _is_rel(g):
        a = _unwrap_assignment(a)
    if isinstance(g, Eq) and not _is_rel(a):
        g = _unwrap_assignment(g)
    if _condition(a) or _condition(g):
        if _is_rel(a) and _is_rel(g) and not isinstance(a, Eq) and not isinstance(g, Eq):
            if type(a) is type(g) and same(a.lhs, g.lhs, inexact, rel_tol) and \
                    same(a.rhs, g.rhs, inexact, rel_tol):
                return True
            r = a.reversed
            if type(r) is type(g) and same(r.lhs, g.lhs, inexact, rel_tol) and \
                    same(r.rhs, g.rhs, inexact, rel_tol):
                return True
        if isinstance(a, And) and isinstance(g, And) and \
                _match_all(list(a.args), list(g.args), False, inexact, rel_tol):
            return True
        # up to equivalence: the same set of solutions ('-x > -1' = 'x < 1' = (-oo, 1))
        sa, sg = _as_set(a), _as_set(g)
        return sa is not None and sg is not None and _sets_equal(sa, sg)
    if _is_rel(a) or _is_rel(g):
        return False
    ea, eg = _as_elements(a), _as_elements(g)
    if ea is not None or eg is not None:
        if ea is None:
            ea = ([a], False)
        if eg is None:
            eg = ([g], False)
        if isinstance(a, Interval) and isinstance(g, Interval):
            pass  # both open intervals: compare as intervals below
        else:
            in_order = ea[1] and eg[1] if ordered is None else ordered
            return _match_all(ea[0], eg[0], in_order, inexact, rel_tol)
    if isinstance(a, Interval) and isinstance(g, Interval):
        return (a.left_open == g.left_open and a.right_open == g.right_open
                and same(a.start, g.start, inexact, rel_tol) and same(a.end, g.end, inexact, rel_tol))
    if isinstance(a, Union) and isinstance(g, Union):
        return _match_all(list(a.args), list(g.args), False, inexact, rel_tol)
    if isinstance(a, sympy.Set) and isinstance(g, sympy.Set):
        return _sets_equal(a, g)
    if isinstance(a, MatrixBase) or isinstance(g, MatrixBase):
        if not (isinstance(a, MatrixBase) and isinstance(g, MatrixBase)) or a.shape != g.shape:
            return False
        return all(same(x, y, inexact, rel_tol) for x, y in zip(list(a), list(g)))
    if isinstance(a, sympy.Expr) and isinstance(g, sympy.Expr):
        return expr_equal(a, g, inexact, rel_tol)
    return a == g


def _sets_equal(a: Any, g: Any) -> bool:
    """Two sets of reals with the same elements (sympy's canonical forms, then difference)."""
    if a == g:
        return True
    try:
        return a.symmetric_difference(g) == sympy.EmptySet
    except Exception:  # noqa: BLE001
        return False


def _variants(v: Value) -> list[tuple[Any, int | None]]:
    """(value, decimal places) as written, then as a percentage, then degrees as radians."""
    out = [(v.value, v.places)]
    number = isinstance(v.value, Fraction) or (isinstance(v.value, sympy.Expr) and not v.value.free_symbols)
    if v.percent and number:
        out.append((v.value / 100, None if v.places is None else v.places + 2))
    if v.degrees and number:
        out.append((_sympify(v.value) * sympy.pi / 180, None))
    return out


def equivalent(answer: Value, gold: Value, rel_tol: float = 1e-6) -> bool:
    """Is the parsed answer the gold answer? (See the module docstring for the rules.)"""
    inexact = answer.inexact or gold.inexact
    shapes = {answer.shape, gold.shape}
    if shapes == {"set", "tuple"}:
        return False  # '\\{1, 3\\}' is not the pair '(3, 1)'
    ordered = ("tuple" in shapes) if "list" in shapes else None
    for a, pa in _variants(answer):
        for g, pg in _variants(gold):
            if isinstance(a, Fraction) and isinstance(g, Fraction):
                known = [p for p in (pa, pg) if p is not None]
                if num_equal(a, g, inexact, rel_tol, min(known) if known else None):
                    return True
            elif same(a, g, inexact, rel_tol, ordered):
                return True
    return False


def size(v: Value) -> int:
    """How many elements a gold value lists (sets/tuples), for the hedging rule."""
    el = _as_elements(v.value) if v.kind == "sym" else None
    return len(el[0]) if el is not None else 1
