"""Answer strings -> values.

Three routes, all ending in exact objects:
- a fast path, without sympy, for what most answers are: integers of any length, decimals,
  scientific notation, `a/b` and `\\frac{a}{b}` with integer parts -> `fractions.Fraction`. This
  is literal recognition by one regex, not a parser: anything else goes to the next route;
- integer polynomials written plainly (`7224 x^{6} - 6450 x^{5}`, `x^{3} (19 x - 35)`,
  `C + \\frac{187 x^{2}}{56}`) -> sympy, by a small exact reader (`fast_polynomial`) that gives
  up on anything latex2sympy might read differently; antlr needs 5-500 ms for such a string;
- everything else -> latex2sympy2_extended (the maintained LaTeX-to-sympy parser that
  Math-Verify uses; it runs on the antlr4 4.13 runtime that is installed, whereas sympy's own
  `parse_latex` needs exactly antlr4 4.11 and would conflict with it, and its lark backend
  covers less of what models write). Plain-text math (`x**2`, `sqrt(2)`, `pi`) is first
  rewritten into LaTeX; sympy's `parse_expr` is never used (it calls eval on its input).

Guards before the parser sees anything: balanced braces, bracket nesting at most
MAX_DEPTH (the antlr parser's time grows with every level of parentheses), and at most
MAX_PARSE_CHARS characters on the slow route. Big numbers are never evaluated while parsing:
latex2sympy keeps `10^{10^{10}}` as an unevaluated power (see equivalence.py for how such
values are compared).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from functools import lru_cache
from typing import Any

from .answers import Cleaned, _split_top, _top_level, choice_letter, clean_answer, is_words

MAX_DEPTH = 10
MAX_PARSE_CHARS = 1_500
MAX_DIGITS = 25_000  # a literal integer longer than this is not parsed
MAX_EXPONENT = 10_000  # 1e10000 is fine, 1e99999999 is not expanded

_INT_STR_SAFE = 4_000  # below CPython's int(str) digit limit (4300)

_DEC_RE = re.compile(r"^([+-]?)(\d+(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d{1,6}))?$")
_SCI_LATEX_RE = re.compile(r"^([+-]?)(\d+(?:\.\d*)?)(?:\\times|\\cdot|\*|×)10\^\{?([+-]?\d{1,6})\}?$")
_SLASH_RE = re.compile(r"^([+-]?)(\d{1,4000})/(\d{1,4000})$")
_LFRAC_RE = re.compile(r"^([+-]?)\\frac\{([+-]?\d{1,4000})\}\{(\d{1,4000})\}$")
_HAS_DECIMAL = re.compile(r"\d\.\d|(?<![\d.])\.\d|\d[eE][+-]?\d")

_FUNCS = re.compile(r"(?<![\\A-Za-z])(arcsin|arccos|arctan|sinh|cosh|tanh|sin|cos|tan|cot|sec|csc|log|ln|exp)(?=\s*\()")
_PI = re.compile(r"(?<![\\A-Za-z])pi(?![A-Za-z])")
# "e = 3" / "i = 2": the parser reads e and i as constants and sympy then evaluates Eq(E, 3) to
# False; as the left side of an assignment they are variables.
_CONST_LHS = re.compile(r"(?<![A-Za-z\\])([ei])(?=\s*=)")
_INF = re.compile(r"(?<![\\A-Za-z])(?:infinity|inf|oo)(?![A-Za-z])")
_SYMBOL_MAP = str.maketrans({"×": "\\times ", "·": "\\cdot ", "⋅": "\\cdot ", "÷": "\\div ",
                             "√": "\\sqrt ", "π": "\\pi ", "∞": "\\infty ", "≤": "\\le ",
                             "≥": "\\ge ", "≠": "\\ne "})


class ParseFailure(ValueError):
    """The string is not an answer the parser can read (-> parse_error or gold_error)."""


@dataclass
class Value:
    """A parsed answer or gold.

    kind: "num" (value is a Fraction), "sym" (value is a sympy object), "text" (value is a
      lower-case string), "choice" (value is a letter A-E).
    inexact: written with a decimal point or exponent: compared with a tolerance.
    percent / degrees: the answer carried a % or degree sign (see equivalence.py).
    """

    kind: str
    value: Any
    inexact: bool = False
    percent: bool = False
    degrees: bool = False
    display: str = ""
    places: int | None = None  # decimal places as written ("6.32" -> 2, "1.5e-3" -> 4)
    shape: str = ""  # how a collection was written: set, tuple, list or "" (answers.clean_answer)


def to_int(digits: str) -> int:
    """int() of a digit string of any length, without touching the process-wide digit limit."""
    if len(digits) <= _INT_STR_SAFE:
        return int(digits)
    return int(Decimal(digits))


def fast_number(s: str) -> Fraction | None:
    """Literal numbers only: '42', '-0.25', '1.5e3', '3/4', '\\frac{3}{4}'. None otherwise."""
    if len(s) > MAX_DIGITS + 32:
        return None
    m = _DEC_RE.match(s)
    if m:
        sign, body, exp = m.groups()
        if exp is not None and abs(int(exp)) > MAX_EXPONENT:
            return None
        try:
            d = Decimal(body if exp is None else f"{body}e{exp}")
        except InvalidOperation:
            return None
        num, den = d.as_integer_ratio()
        f = Fraction(num, den)
        return -f if sign == "-" else f
    m = _SLASH_RE.match(s) or _LFRAC_RE.match(s)
    if m:
        sign, a, b = m.groups()
        den = to_int(b)
        if den == 0:
            return None
        f = Fraction(to_int(a), den)
        return -f if sign == "-" else f
    return None


_ASSIGN_RE = re.compile(r"^\\?(?:mathit\{)?[A-Za-z]\}?\s*=\s*(.+)$")
_COMPLEX_RE = re.compile(
    r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*([+-])\s*((?:\d+(?:\.\d*)?|\.\d+)?)\s*\*?\s*i$")


def _literal(part: str) -> Fraction | None:
    part = part.strip()
    m = _ASSIGN_RE.match(part)
    if m:
        part = m.group(1)
    return fast_number(part.replace(" ", ""))


def _fast_shapes(s: str) -> tuple[str, Any] | None:
    """Shapes the parser would return without ambiguity, built directly (it is slow):
    'x = 3' -> 3; '1, -2.5' and 'x = 1, x = 2' -> a set of literals; '3 - 2i' -> 3 - 2*i
    (with `i` a symbol, as the parser reads it). None: let the parser decide."""
    if "=" in s and "," not in s:
        f = _literal(s)
        return ("num", f) if f is not None else None
    if "," in s and not s.startswith(("(", "[", "\\{")):
        parts = s.split(",")
        if 1 < len(parts) <= 100:
            values = [_literal(p) for p in parts]
            if all(v is not None for v in values):
                import sympy

                # in written order: a bare list is compared as a set, or in order against a
                # tuple (equivalence.equivalent decides from the shapes)
                return "sym", sympy.Tuple(*(sympy.Rational(v.numerator, v.denominator) for v in values))
        return None
    m = _COMPLEX_RE.match(s.strip())
    if m:
        import sympy

        re_, sign, im_ = m.groups()
        re_v, im_v = fast_number(re_), fast_number(im_ or "1")
        if re_v is not None and im_v is not None:
            im_v = -im_v if sign == "-" else im_v
            return "sym", sympy.Rational(re_v.numerator, re_v.denominator) + sympy.Rational(
                im_v.numerator, im_v.denominator) * sympy.Symbol("i")
    return None


# Integer polynomials written plainly ("7224 x^{6} - 6450 x^{5}", "x^{3} (19 x - 35)",
# "3*x^2 + C"): tokens of such a string, anything else (a backslash command other than
# \cdot/\times, a decimal point, a slash, a comma, a relation) makes the fast reader give up.
_POLY_TOKEN = re.compile(
    r"\s*(?:(\d+)|([A-Za-z])|(\\cdot(?![A-Za-z])|\\times(?![A-Za-z])|\*)|([-+^(){}]|\\frac(?=\{)))")
_POLY_MAX_EXPONENT = 100
_POLY_MAX_DIGITS = 200


class _NotPolynomial(Exception):
    pass


class _PolyReader:
    """Recursive descent over integer polynomials, building the sympy value directly.

    The antlr parser needs 5-500 ms for such a string (more with every term; SLL prediction
    fails on `x^{9} - x^{8}`, so it parses twice), this reader well under 1 ms. It accepts only
    what latex2sympy reads the same way (tests compare the two on every row of the labeled
    sources): integers, single-letter symbols other than `e` and `I` (constants to the parser),
    `+ - * \\cdot \\times`, `\\frac{..}{..}` of such polynomials, parentheses, implicit products
    (`3x y`, `2(x+1)`, `x^{3} (x-1)`) and powers with a small integer exponent (`x^2`, `x^{12}`).
    It gives up, and the parser decides, on everything else, including what LaTeX reads oddly:
    `x2`, `2 3`, `x^23`, `x^2^3`, a letter before a parenthesis that holds no sum (`f(x)`,
    `x^{2} (x)` are function calls to the parser, `x(x+1)` a product), a power of a number
    (`10^{400}` is kept unevaluated for the big-number rules), a zero denominator.
    """

    def __init__(self, s: str) -> None:
        self.toks: list[tuple[str, str]] = []
        pos = 0
        s = s.rstrip()
        while pos < len(s):
            m = _POLY_TOKEN.match(s, pos)
            if m is None:
                raise _NotPolynomial
            num, name, mul, op = m.groups()
            if num is not None:
                if len(num) > _POLY_MAX_DIGITS:
                    raise _NotPolynomial
                self.toks.append(("int", num))
            elif name is not None:
                if name in ("e", "I"):  # constants to the parser: Euler's number, the imaginary unit
                    raise _NotPolynomial
                self.toks.append(("name", name))
            elif mul is not None:
                self.toks.append(("*", "*"))
            else:
                self.toks.append((op, op))
            pos = m.end()
        self.i = 0

    def peek(self) -> str | None:
        return self.toks[self.i][0] if self.i < len(self.toks) else None

    def take(self, kind: str) -> str:
        if self.peek() != kind:
            raise _NotPolynomial
        self.i += 1
        return self.toks[self.i - 1][1]

    def _sum_inside(self) -> bool:
        """The parenthesis at the cursor holds a sum or difference at its top level."""
        depth = 0
        for j in range(self.i, len(self.toks)):
            kind = self.toks[j][0]
            if kind in ("(", "{"):
                depth += 1
            elif kind in (")", "}"):
                depth -= 1
                if depth == 0:
                    return False
            elif kind in ("+", "-") and depth == 1 and self.toks[j - 1][0] not in ("(", "{"):
                return True
        return False

    def read(self) -> Any:
        value = self.expr()
        if self.i != len(self.toks):
            raise _NotPolynomial
        return value

    def expr(self) -> Any:
        sign = 1
        if self.peek() in ("+", "-"):  # a leading sign, at the start or after "("
            sign = -1 if self.take(self.peek()) == "-" else 1
        value = sign * self.term()
        while self.peek() in ("+", "-"):
            op = self.take(self.peek())
            t = self.term()  # "a - -b" gives up here: a term never starts with a sign
            value = value + t if op == "+" else value - t
        return value

    def term(self) -> Any:
        value = self.factor(first=True)
        while True:
            kind = self.peek()
            if kind == "*":
                self.take("*")
                value = value * self.factor(first=True)
            elif kind in ("name", "(", "\\frac"):
                if kind == "(" and self.toks[self.i - 1][0] in ("name", "}", "int") \
                        and not self._sum_inside():
                    raise _NotPolynomial
                value = value * self.factor(first=False)
            else:
                return value

    def factor(self, first: bool) -> Any:
        import sympy

        kind = self.peek()
        if kind == "int":
            if not first:  # "2 3", "x2", "(x+1)2": LaTeX readers disagree on what these are
                raise _NotPolynomial
            return sympy.Integer(int(self.take("int")))
        if kind == "name":
            base = sympy.Symbol(self.take("name"))
            if self.peek() == "(" and not self._sum_inside():  # f(x): a function call
                raise _NotPolynomial
        elif kind == "\\frac":
            self.take("\\frac")
            self.take("{")
            num = self.expr()
            self.take("}")
            self.take("{")
            den = self.expr()
            self.take("}")
            if den == 0:
                raise _NotPolynomial
            base = num / den
            if self.peek() == "^":  # \frac{1}{2}^2: the parser's reading is not obvious
                raise _NotPolynomial
            return base
        elif kind == "(":
            self.take("(")
            base = self.expr()
            self.take(")")
        else:
            raise _NotPolynomial
        if self.peek() != "^":
            return base
        self.take("^")
        if self.peek() == "{":
            self.take("{")
            exp = self.take("int")
            self.take("}")
        else:
            exp = self.take("int")
            if len(exp) != 1:  # x^23 is x^{2} 3 in LaTeX
                raise _NotPolynomial
        if int(exp) > _POLY_MAX_EXPONENT or self.peek() == "^" or not base.free_symbols:
            raise _NotPolynomial
        return base ** int(exp)


def fast_polynomial(s: str) -> Any | None:
    """The sympy value of an integer polynomial written plainly, or None (see _PolyReader)."""
    if "\\" in s and "\\cdot" not in s and "\\times" not in s and "\\frac{" not in s:
        return None
    try:
        return _PolyReader(s).read()
    except _NotPolynomial:
        return None


def check_structure(s: str) -> None:
    """Balanced braces and bounded nesting, in one linear pass."""
    depth = braces = 0
    for ch in s:
        if ch in "({[":
            depth += 1
            if depth > MAX_DEPTH:
                raise ParseFailure(f"brackets nested deeper than {MAX_DEPTH}")
            if ch == "{":
                braces += 1
        elif ch in ")}]":
            depth = max(0, depth - 1)
            if ch == "}":
                braces -= 1
                if braces < 0:
                    raise ParseFailure("unbalanced braces")
    if braces:
        raise ParseFailure("unbalanced braces")


def _match_paren(s: str, open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(s)):
        if s[i] == "(":
            depth += 1
        elif s[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    return -1


def _brace_calls(s: str, marker: str, replace_with: str) -> str:
    """'x^(3/2)' -> 'x^{(3/2)}', 'sqrt(2)' -> '\\sqrt{2}': parenthesised argument -> braces."""
    out = []
    i = 0
    while True:
        j = s.find(marker, i)
        if j < 0:
            out.append(s[i:])
            return "".join(out)
        k = j + len(marker)
        while k < len(s) and s[k] == " ":
            k += 1
        if k >= len(s) or s[k] != "(":
            out.append(s[i:k])
            i = k
            continue
        close = _match_paren(s, k)
        if close < 0:
            out.append(s[i:])
            return "".join(out)
        inner = s[k + 1: close] if replace_with == "\\sqrt" else s[k: close + 1]
        out.append(s[i:j] + replace_with + "{" + inner + "}")
        i = close + 1


def plain_to_latex(s: str) -> str:
    """Rewrite plain-text math (as Python or a calculator writes it) into LaTeX."""
    s = s.translate(_SYMBOL_MAP)
    if "**" in s:
        s = s.replace("**", "^")
    if "^(" in s or "^ (" in s:
        s = _brace_calls(s, "^", "^")
    if "sqrt" in s:
        s = re.sub(r"(?<![\\A-Za-z])sqrt", r"\\sqrt", s)
        s = _brace_calls(s, "\\sqrt", "\\sqrt")
    s = _FUNCS.sub(r"\\\1", s)
    if "=" in s:
        s = _CONST_LHS.sub(r"\\mathit{\1}", s)
    s = _PI.sub(r"\\pi ", s)
    s = _INF.sub(r"\\infty ", s)
    return s


_L2S = None


def _latex2sympy():
    """The parser function, built lazily: the parent process (cache keys, CLI) never imports
    sympy or antlr.

    antlr's default LL prediction spends most of its time in full-context lookahead on this
    grammar. We parse with SLL prediction first and fall back to LL only when SLL reports a
    syntax error: the standard two-stage antlr strategy (an SLL parse that succeeds is a
    valid parse of the input); about 3x faster on the labeled set with identical verdicts.
    (SLL does fail on some superscripts, `x^{9} - x^{8}`, and those are parsed twice; sending
    every `^` straight to LL was measured slower overall.)
    """
    global _L2S
    if _L2S is None:
        from latex2sympy2_extended.latex2sympy2 import ConversionConfig, latex2sympy
        from latex2sympy2_extended.math_normalization import NormalizationConfig, normalize_latex

        norm = NormalizationConfig(basic_latex=True, units=False, malformed_operators=True,
                                   nits=True, boxed="none", equations=False)
        conv = ConversionConfig(interpret_as_mixed_fractions=True,
                                interpret_simple_eq_as_assignment=False,
                                interpret_contains_as_eq=True, lowercase_symbols=False)
        try:
            from antlr4.atn.PredictionMode import PredictionMode
            from latex2sympy2_extended.latex2sympy2 import _Latex2Sympy

            class _TwoStage(_Latex2Sympy):
                sll = True

                def create_parser(self, latex_str):
                    parser = super().create_parser(latex_str)
                    if self.sll:
                        parser._interp.predictionMode = PredictionMode.SLL
                    return parser

            def parse(latex: str):
                latex = normalize_latex(latex, norm)
                try:
                    return _TwoStage(config=conv).parse(latex)
                except Exception:  # noqa: BLE001 - SLL gave up: full LL decides
                    slow = _TwoStage(config=conv)
                    slow.sll = False
                    return slow.parse(latex)
        except ImportError:  # a latex2sympy2_extended without the class: the public entry point
            def parse(latex: str):
                return latex2sympy(latex, normalization_config=norm, conversion_config=conv)
        _L2S = parse
    return _L2S


def _floats_to_rationals(expr: Any) -> Any:
    """Decimals become the exact rationals they were written as (0.1 -> 1/10)."""
    import sympy

    if not isinstance(expr, sympy.Basic):
        return expr
    floats = expr.atoms(sympy.Float)
    if not floats:
        return expr
    return expr.xreplace({f: sympy.Rational(str(f)) for f in floats})


@lru_cache(maxsize=8192)
def parse_math(s: str) -> tuple[str, Any]:
    """('num', Fraction) or ('sym', sympy object). Raises ParseFailure. Cached per process."""
    if not s:
        raise ParseFailure("empty answer")
    f = fast_number(s.replace(" ", "")) if len(s) <= MAX_DIGITS + 32 else None
    if f is not None:
        return "num", f
    if len(s) > MAX_PARSE_CHARS:
        raise ParseFailure(f"answer longer than {MAX_PARSE_CHARS} characters")
    check_structure(s)
    while s.startswith(("\\boxed{", "\\fbox{")) and s.endswith("}"):
        s = s[s.index("{") + 1: -1].strip()  # \boxed{\boxed{3}}
    latex = plain_to_latex(s)
    f = fast_number(latex.replace(" ", ""))
    if f is not None:
        return "num", f
    fast = _fast_shapes(latex)
    if fast is not None:
        return fast
    poly = fast_polynomial(latex)
    if poly is not None:
        if poly.is_Rational:  # "2*3", "(4)"
            return "num", Fraction(int(poly.p), int(poly.q))
        return "sym", poly
    composite = _composite(latex)
    if composite is not None:
        return composite
    try:
        expr = _latex2sympy()(latex)
    except (Exception, RecursionError) as exc:  # antlr and sympy raise all kinds
        raise ParseFailure(f"{type(exc).__name__}") from None
    import sympy

    if isinstance(expr, (list, tuple)):
        expr = sympy.Tuple(*expr) if expr else sympy.EmptySet
    if not isinstance(expr, (sympy.Basic, sympy.MatrixBase)):
        raise ParseFailure(f"parser returned {type(expr).__name__}")
    if isinstance(expr, sympy.MatrixExpr) and not isinstance(expr, sympy.MatrixBase):
        try:  # an unevaluated sum or product of explicit matrices
            expr = expr.doit()
        except Exception:  # noqa: BLE001 - shapes that do not fit: compared unevaluated
            pass
    if isinstance(expr, sympy.MatrixBase):
        expr = sympy.ImmutableMatrix(expr)
    expr = _floats_to_rationals(expr)
    if isinstance(expr, sympy.Rational):
        return "num", Fraction(int(expr.p), int(expr.q))
    return "sym", expr


_PM = re.compile(r"\\(?:pm|mp)(?![A-Za-z])|±|∓")
_CLOCK = re.compile(r"^\s*\d{1,2}\s*:\s*\d{2}\s*$")


def _composite(s: str) -> tuple[str, Any] | None:
    """Shapes built from parts parsed one by one (the parser reads them wrongly or not at all):
    - `\\pm` / `\\mp` anywhere in a list element: both signs, as a set of values
      ('\\frac{-1 \\pm \\sqrt{13}}{4}', '\\pm 2021');
    - a ratio or a clock time `a:b`: the tuple (a, b), compared in order ('12:00' != '1:00',
      where a parser reads 12/00);
    - a top-level list ('\\frac{1}{2}, \\sqrt{3}'): its elements in written order.
    """
    import sympy

    has_pm = _PM.search(s) is not None
    commas = _top_level(s, ",")
    if not has_pm and ":" not in s and not commas:
        return None
    parts = _split_top(s, ",") if commas else [s]
    if len(parts) > 100:
        return None
    values: list[Any] = []
    for part in parts:
        part = part.strip()
        if not part:
            raise ParseFailure("empty list element")
        if _PM.search(part):
            plus = _PM.sub(lambda m: "+" if m.group(0) in ("\\pm", "±") else "-", part)
            minus = _PM.sub(lambda m: "-" if m.group(0) in ("\\pm", "±") else "+", part)
            values += [_sym(parse_math(plus)), _sym(parse_math(minus))]
        elif ":" in part and "=" not in part and len(_top_level(part, ":")) == 1:
            a, b = _split_top(part, ":")
            values.append(sympy.Tuple(_sym(parse_math(a.strip())), _sym(parse_math(b.strip()))))
        elif len(parts) > 1:
            values.append(_sym(parse_math(part)))
        else:
            return None
    if has_pm:
        return "sym", sympy.FiniteSet(*values)
    if len(values) == 1:
        return "sym", values[0]
    return "sym", sympy.Tuple(*values)


def _sym(parsed: tuple[str, Any]) -> Any:
    import sympy

    kind, value = parsed
    return sympy.Rational(value.numerator, value.denominator) if kind == "num" else value


def parse_value(raw: str, *, is_gold: bool = False) -> Value:
    """Clean, then parse one answer string. Gold strings may also be choices or plain words."""
    c: Cleaned = clean_answer(raw)
    text = c.text
    if not text:
        raise ParseFailure("empty answer")
    if is_gold:
        letter = choice_letter(text)
        if letter is not None:
            return Value("choice", letter, display=text)
        if is_words(text):
            return Value("text", " ".join(text.lower().split()), display=text)
    kind, value = parse_math(text)
    inexact = bool(_HAS_DECIMAL.search(text))
    return Value(kind, value, inexact=inexact, percent=c.percent, degrees=c.degrees, display=text,
                 shape=c.shape,
                 places=decimal_places(text) if inexact and kind == "num" else None)


def decimal_places(text: str) -> int | None:
    """Places after the decimal point of a written literal, exponent included."""
    compact = text.replace(" ", "")
    m = _DEC_RE.match(compact) or _SCI_LATEX_RE.match(compact)
    if not m:
        return None
    _sign, body, exp = m.groups()
    places = len(body.split(".", 1)[1]) if "." in body else 0
    return places - (int(exp) if exp else 0)
