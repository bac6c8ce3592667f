"""Finding the final answer in a completion, and the string-level clean-up before parsing.

Everything here is plain string work in linear time (no sympy, no backtracking regex), because
it also runs in the trainer's process: the reward cache keys on `answer_key`, computed in the
parent before any worker is involved.

Extraction order (the first step that finds something wins; docs/verifiers.md has examples):
1. boxes: the last `\\boxed{...}` / `\\fbox{...}` (nested braces; `\\boxed 7`). Several *different*
   boxes are a hedge, unless the gold lists several values: then they are read as that list
   (`\\boxed{(2, 2)} and \\boxed{(6, 2)}`). A last `\\boxed{` never closed is a malformed answer.
2. the last `<answer>...</answer>` tag;
3. the last answer phrase: "the final answer is", "the answer is", "Answer:", GSM8K's "####"
   (Minerva's "Final Answer: The final answer is 7.78. I hope it is correct." reads 7.78). The
   rest of its sentence is the answer when it is a bare answer ("x = 3", "19, 46, and 82");
   when it is prose ("The volume of $V$ is 120") the last candidate in it (below) is.
4. the last bold number (`**42**`, `**$1,234.50**`): how chat models mark a final result;
5. the last candidate: a formula (`$...$`, `$$...$$`, `\\(...\\)`, `\\[...\\]`) or a standalone
   number, whichever ends last. A number is standalone when it is not part of a larger token or
   formula: no letter, digit, `.`, `_`, `^` or `\\` just before it (`AZYUK2A`, `m2`, `x_1`, the 3
   of `$\\frac{7}{3}$` are not candidates; `.4` is 0.4). A completion that is one bare answer
   (`(1, 2)`, `\\text{yes}`) is that answer.
Step 5 runs only with `fallback="last_number"` (the default); with `"none"` the answer must be
boxed, tagged or phrased. Two candidates joined by "or" ("either 3 or 4") are a hedge.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..extract import (_closing_braces, boxed_spans, first_sentence_end, formula_spans,
                       last_answer_tag, last_phrase, unclosed_box)

# A standalone number: not glued to a preceding word, subscript, power or command.
_NUMBER_RE = re.compile(
    r"(?<![A-Za-z0-9_.^\\{])(?:[-+]\s?)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+|,\d\d(?![\d,]))?(?:/\d+)?"
    r"|(?<![A-Za-z0-9_.^\\{])(?:[-+]\s?)?\.\d+")
_BOLD_NUMBER_RE = re.compile(r"\*\*\s*(\$?\s*[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?)\s*\*\*")
_OR_GAP_RE = re.compile(r"^[\s$,]*(?:\\text\{\s*)?(?:or|either)(?:\s+(?:maybe|perhaps|possibly|else))?"
                        r"\s*\}?[\s$,]*$", re.IGNORECASE)
_NEGATION_RE = re.compile(r"\b(?:not|never|cannot|isn't|aren't|wasn't|can't)\b", re.IGNORECASE)
_HEDGE_RE = re.compile(r"(?<![A-Za-z\\])(?:or|and)(?![A-Za-z])|\\(?:lor|vee)(?![A-Za-z])")
# `\,` and friends are spacing; `\\ ` (a row break followed by a space) is not.
_SPACE_CMDS = re.compile(r"(?<!\\)\\[,;:! ]|\\q?quad(?![A-Za-z])|\\displaystyle(?![A-Za-z])|~")
_LEFT_RIGHT = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])\s*")
_FRAC_ALIAS = re.compile(r"\\[dt]frac(?![A-Za-z])")
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree(?![A-Za-z])|\\circ(?![A-Za-z])")
_PERCENT_RE = re.compile(r"\\?%\s*$")
_TEXT_WRAP = re.compile(
    r"\\(?:text|textbf|textit|textrm|textnormal|textsf|texttt|mathrm|mathbf|mathit|mathsf|mbox"
    r"|operatorname)\s*\{([^{}]*)\}")
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_CHOICE_RE = re.compile(r"^\(?\s*([A-Ea-e])\s*\)?[.:]?$")
_CHOICE_PREFIX_RE = re.compile(r"^(?:\\text\{)?\(?\s*([A-Ea-e])\s*(?:\)|[.:]|\}|$)")
# A number followed by words only (units, nouns): "12 cm", "5 apples", "3 square feet", "12 m2".
_NUM_THEN_WORDS = re.compile(
    r"^(?P<num>[-+]?\$?\s*(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:\s*/\s*\d+)?)\s*(?P<words>[A-Za-z][A-Za-z .^2-3/]*)$")
# Trailing unit words after any expression, once \text{} is unwrapped: "\frac{1}{3} meters".
_TRAILING_WORDS = re.compile(r"(?<=[\d}\)\]])\s+(?P<words>[A-Za-z]{2,}(?:\s+[A-Za-z]{2,})*)$")
_WORDS_ONLY = re.compile(r"^[A-Za-z][A-Za-z '\-]*$")
_MATH_WORDS = {"pi", "e", "i", "x", "y", "z", "n", "inf", "infty", "infinity", "sqrt", "ln", "log",
               "sin", "cos", "tan", "cot", "sec", "csc", "exp", "oo", "nan", "arcsin", "arccos",
               "arctan", "sinh", "cosh", "tanh", "frac", "dfrac", "tfrac"}
# Words a bare answer may contain besides math: list and alternative conjunctions.
_BARE_WORDS = _MATH_WORDS | {"or", "and"}
_LETTER_RUN = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")
_COMMAND = re.compile(r"\\(?:begin|end)\{[A-Za-z*]*\}|\\[A-Za-z]+")
_TEXT_CONTENT = re.compile(r"\\(?:text|textbf|textnormal|mathrm|mbox)\s*\{[^{}]*\}")


# An equation's left side at the start of an answer: 'x', 'x_1', 'W(x)', 'f(n)'.
_LEADING_LABEL = re.compile(r"\s*([A-Za-z](?:_\{?[A-Za-z0-9]+\}?)?(?:\([A-Za-z]\))?)\s*=")


def unglue_alternatives(s: str) -> str:
    """Equations for one left side joined by "or"/"and" with the spaces lost, as `\\text{or}`
    reads once its markup is stripped: 'W(x)=1orW(x)=-1' -> 'W(x)=1 or W(x)=-1'. Only where the
    word sits between a value's end and the same left side again, so words are never split."""
    m = _LEADING_LABEL.match(s)
    if m is None or ("or" not in s and "and" not in s):
        return s
    again = re.escape(m.group(1))
    return re.sub(rf"(?<=[0-9)\]}}])(or|and)(?=\s*{again}\s*=)", r" \1 ", s)


@dataclass(frozen=True)
class Extracted:
    """What was found: the raw answer text, how, and whether the completion hedged."""

    text: str | None
    how: str  # boxed | answer_tag | final_answer | bold | formula | last_number | bare | none
    hedge: str = ""  # why the answer is a hedge ("" when it is not)
    boxes: tuple[str, ...] = ()  # the distinct boxed answers, in order, when there are several


def _squash(s: str) -> str:
    return " ".join(s.split())


def is_bare(s: str) -> bool:
    """A string that is only an answer, no prose: every word of two or more letters outside LaTeX
    commands and \\text{} is a math word or "and"/"or" ('x = 1 or x = 2', '(1, 2)', '19, 46, and
    82'; not 'The volume is 120')."""
    s = _TEXT_CONTENT.sub(" ", s)
    s = _COMMAND.sub(" ", s)
    return all(w.lower() in _BARE_WORDS for w in _LETTER_RUN.findall(s))


def _candidates(s: str) -> list[tuple[int, int, str, str]]:
    """(start, end, text, kind) of every formula and standalone number, in order of position."""
    out = []
    formulas = formula_spans(s)
    pos = 0
    for a, b, ia, ib in formulas + [(len(s), len(s), len(s), len(s))]:
        for m in _NUMBER_RE.finditer(s, pos, a):
            out.append((m.start(), m.end(), m.group(0), "last_number"))
        if a < len(s):
            inner = s[ia:ib].strip()
            if inner:
                out.append((a, b, s[a:b], "formula"))
        pos = b
    return out


def _last_candidate(s: str) -> Extracted | None:
    cands = _candidates(s)
    if not cands:
        return None
    a, b, text, kind = cands[-1]
    lead_from = 0
    if len(cands) > 1:
        pa, pb, ptext, _ = cands[-2]
        if _OR_GAP_RE.match(s[pb:a]) and _squash(ptext) != _squash(text):
            return Extracted(text, kind, f"alternatives offered ({_squash(ptext)[:25]} or "
                                         f"{_squash(text)[:25]})")
        lead_from = pb
    lead = s[max(lead_from, a - 80): a]
    cut = max(lead.rfind(". "), lead.rfind("\n"))
    if _NEGATION_RE.search(lead[cut + 1:]):
        # "It is not 5." states what the answer is not: no answer, rather than a false 5
        return Extracted(text, kind, f"a negated value ({_squash(text)[:25]})")
    return Extracted(text, kind)


def _from_region(region: str, how: str) -> Extracted:
    """The answer inside a phrase's sentence: a leading formula, the bare sentence, else the
    last candidate in it."""
    spans = formula_spans(region)
    if spans and spans[0][0] == 0:
        a, b, _, _ = spans[0]
        return Extracted(region[a:b], how)
    sentence = region[: first_sentence_end(region)].rstrip(".").strip()
    if is_bare(sentence) or not sentence:
        return Extracted(sentence or None, how)
    inner = _last_candidate(sentence)
    if inner is not None:
        return Extracted(inner.text, how, inner.hedge)
    return Extracted(sentence, how)  # words only: "The answer is Friday"


def open_box_content(s: str) -> str | None:
    """What follows a `\\boxed{` (or `\\fbox{`) that opens `s` and is never closed; None
    otherwise."""
    m = re.match(r"\\(?:boxed|fbox)\s*\{", s)
    if m is None or _closing_braces(s).get(m.end() - 1) is not None:
        return None
    return s[m.end():]


def extract(text: str, fallback: str = "last_number") -> Extracted:
    """The final answer of a cleaned completion (see the module docstring)."""
    spans = boxed_spans(text)
    open_at = unclosed_box(text, spans) if "box" in text else -1
    if open_at >= 0:
        # the last \boxed is never closed: a malformed answer (parse_error), not a missing one
        return Extracted(text[open_at:], "boxed")
    phrase = last_phrase(text)
    if spans and phrase is not None and phrase[0] > spans[-1][1]:
        # "... \boxed{200} ... \boxed{255} ... The final answer is $10,455$.": a statement of the
        # answer after the last box supersedes the boxes (they were intermediate results),
        # when it states a formula or a number.
        late = _from_region(phrase[1], "final_answer")
        if late.text is not None and _candidates(late.text):
            return late
    if spans:
        boxes = [text[a:b] for a, b in spans]
        seen: dict[str, str] = {}  # squashed -> first spelling, in order of first appearance
        for b in boxes:
            seen.setdefault(_squash(b), b)
            if len(seen) > 64:
                break
        if len(seen) > 1:
            shown = ", ".join(sorted(seen, key=len)[:3])
            return Extracted(boxes[-1], "boxed", f"several different boxed answers ({shown[:60]})",
                             tuple(seen.values()))
        return Extracted(boxes[-1], "boxed")
    tag = last_answer_tag(text)
    if tag is not None:
        return Extracted(tag, "answer_tag")
    if phrase is not None:
        return _from_region(phrase[1], "final_answer")
    if fallback != "last_number":
        return Extracted(None, "none")
    bold = None
    for m in _BOLD_NUMBER_RE.finditer(text):
        if any(c.isdigit() for c in m.group(1)):
            bold = m
    if bold is not None:
        return Extracted(bold.group(1), "bold")
    stripped = text.strip()
    if len(stripped) <= 200:
        stripped = unglue_alternatives(stripped)
        if is_bare(stripped) and not formula_spans(stripped):
            return Extracted(stripped, "bare")
    found = _last_candidate(text)
    return found if found is not None else Extracted(None, "none")


@dataclass(frozen=True)
class Cleaned:
    """An answer string ready for the parser, and what the clean-up took off it."""

    text: str
    percent: bool = False
    degrees: bool = False
    words: str = ""  # trailing unit words that were dropped
    shape: str = ""  # "set" (\\{1, 2\\}), "tuple" ((1, 2)), "list" (1, 2) or "" (one value)


def _unwrap_text(s: str) -> str:
    for _ in range(16):  # innermost first; bounded
        new = _TEXT_WRAP.sub(r" \1 ", s)
        if new == s:
            break
        s = new
    return s


def _unwrap_formulas(s: str) -> str:
    """Every paired formula delimiter removed, wherever it is ('$125$ miles' -> '125 miles',
    '$21,16$ or $11$' -> '21,16 or 11'); an unpaired `$` is left for the currency rule."""
    s = s.strip()
    spans = formula_spans(s)
    if not spans:
        return s
    out, pos = [], 0
    for a, b, ia, ib in spans:
        out.append(s[pos:a])
        out.append(" " + s[ia:ib].strip() + " ")
        pos = b
    out.append(s[pos:])
    return "".join(out).strip()


def _top_level(s: str, seps: str) -> list[int]:
    """Indices of the characters in `seps` that sit outside every bracket pair."""
    depth, out = 0, []
    for i, ch in enumerate(s):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        elif depth == 0 and ch in seps:
            out.append(i)
    return out


def _split_top(s: str, seps: str) -> list[str]:
    cuts = _top_level(s, seps)
    parts, pos = [], 0
    for c in cuts:
        parts.append(s[pos:c])
        pos = c + 1
    parts.append(s[pos:])
    return parts


_APPROX_RE = re.compile(r"\\approx(?![A-Za-z])|\\sim(?![A-Za-z])|≈")
_LABEL_NOISE = re.compile(r"_\{[^{}]*\}|_[A-Za-z0-9]|\\(?:frac|left|right|cdot|mathrm|overline|angle|"
                          r"triangle|mathit|operatorname|vec|bar|hat)(?![A-Za-z])|[\s|(),:{}/']")
_LETTER = re.compile(r"[A-Za-z]")


def _label_like(lhs: str) -> bool:
    """A name rather than a value: 'x', '(p, q)', 'AB', 'S_{MBCN}:S', '\\frac{NO}{BO}', '|AB|',
    'f(x)', 'x_{1}' (letters, subscripts, brackets; no digits outside subscripts)."""
    rest = _LABEL_NOISE.sub("", lhs)
    return bool(rest) and rest.isalpha()


def _value_like(rhs: str) -> bool:
    """No variable letters outside LaTeX commands: '(3, 2)', '\\frac{1}{\\sqrt{6}}', '7:32'."""
    return not _LETTER.search(_COMMAND.sub("", rhs)) and bool(rhs.strip())


def strip_labels(s: str) -> str:
    """'(x, y) = (1, 2)' -> '(1, 2)'; 'AB=4, CD=5' -> '4, 5'; 'p=5,q=2; p=7,q=2' ->
    '(5, 2), (7, 2)'; a chain 'z = 3+3 = 2' -> '2' and '5 \\times 6 = 30' -> '30' (a computation
    ends with its result); '1/3 \\approx 0.33' -> '1/3'. An equation whose right side has
    variables ('y = 2x + 1') is left alone: it may be compared as an equation."""
    if "=" not in s and "\\approx" not in s and ";" not in s:
        return s
    groups = _split_top(s, ";")
    out = []
    for group in groups:
        parts = []
        for part in _split_top(group, ","):
            part = part.strip()
            m = _APPROX_RE.search(part)
            if m and part[: m.start()].strip():
                before = part[: m.start()].strip()
                # the exact value comes before its approximation; 'x \approx 11' names it only
                part = part[m.end():].strip() if _label_like(before) else before
            eqs = [i for i in _top_level(part, "=")
                   if (i == 0 or part[i - 1] not in "<>!=:\\") and part[i + 1: i + 2] != "="]
            if len(eqs) >= 2:
                part = part[eqs[-1] + 1:].strip()
            elif len(eqs) == 1:
                lhs, rhs = part[: eqs[0]].strip(), part[eqs[0] + 1:].strip()
                if _value_like(rhs) and (_label_like(lhs) or _value_like(lhs)):
                    part = rhs
            parts.append(part)
        joined = ", ".join(p for p in parts if p)
        if len(groups) > 1 and len(parts) > 1:
            joined = f"({joined})"
        out.append(joined)
    return ", ".join(out)


_MATRIX_PRODUCT = re.compile(r"(\\end\{[pbvBV]?matrix\})\s*\\begin(?=\{[pbvBV]?matrix\})")
_THIN_COMMA = re.compile(r",\s*\\!\s*")
_OVERESCAPED = re.compile(r"(?<!\\)\\\\(?=[A-Za-z])")
# A decimal comma: two decimals ("2,74", "1000,99") or a leading zero ("0,111"); "1,234" is a
# thousands separator and "1,2" a list.
_DECIMAL_COMMA = re.compile(r"^([-+]?)(\d+),(\d{2})$|^([-+]?)0,(\d+)$")
_CURRENCY_RE = re.compile(r"(?<![\\\w])\$\s*(?=[-+]?\.?\d)")
_SPACE_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(?: \d{3})+(?:\.\d+)?$")


def unescape_commands(s: str) -> str:
    """'-2 \\\\le x' -> '-2 \\le x': commands escaped twice (text that went through JSON or a
    Python string once too often). Left alone where `\\\\` may be a row break (matrices)."""
    return s if "\\begin" in s else _OVERESCAPED.sub(r"\\", s)


def clean_answer(raw: str) -> Cleaned:
    """String-level normalisation of an extracted answer (documented in docs/verifiers.md)."""
    s = _unwrap_formulas(raw)
    s = s.replace("\\$", "$").replace("{,}", "").replace("\\%", "%")
    s = _THIN_COMMA.sub(",", s)  # "16,\\!386.20": a comma set tight is a thousands separator
    s = unescape_commands(s)
    s = _CURRENCY_RE.sub("", s)  # "$1,234" -> "1,234", before the thousands rule below
    s = s.replace("$", " ")
    s = _SPACE_CMDS.sub(" ", s)
    s = _LEFT_RIGHT.sub("", s)
    s = _FRAC_ALIAS.sub(r"\\frac", s)
    degrees = False
    if _DEGREE_RE.search(s):
        degrees = True
        s = _DEGREE_RE.sub("", s)
    s = _unwrap_text(s)
    s = _MATRIX_PRODUCT.sub(r"\1 \\cdot \\begin", s)  # juxtaposed matrices are a product
    s = _squash(s).strip().rstrip(".").strip()
    if s.startswith("{") and s.endswith("}") and len(_top_level(s[1:-1], ",")) and \
            _closing_braces(s).get(0) == len(s) - 1:
        s = s[1:-1].strip()  # bare braces group a list ("{1,3}"); a set is written \{1,3\}
    percent = False
    if _PERCENT_RE.search(s):
        percent = True
        s = _PERCENT_RE.sub("", s).strip()
    words = ""
    m = _NUM_THEN_WORDS.match(s)
    if m and m.group("words").strip().lower() not in _MATH_WORDS and len(m.group("words").strip()) > 1:
        words = m.group("words").strip()
        s = m.group("num").replace("$", "").strip()
    else:
        m = _TRAILING_WORDS.search(s)
        if m and not (set(m.group("words").lower().split()) & _BARE_WORDS) and m.start() > 0:
            words = m.group("words")
            s = s[: m.start()].strip()  # "\frac{1}{3} meters": units after an expression
    s = strip_labels(s)
    if _DECIMAL_COMMA.match(s):
        s = s.replace(",", ".")
    elif _THOUSANDS.match(s) or _SPACE_THOUSANDS.match(s):
        s = s.replace(",", "").replace(" ", "")
    return Cleaned(s, percent, degrees, words, _shape(s))


def _shape(s: str) -> str:
    """How a collection is written; sets and tuples never equal each other, a bare list takes
    the order of a tuple it is compared with (see equivalence.equivalent)."""
    if s.startswith("\\{") and s.endswith("\\}"):
        return "set"
    if s.startswith("(") and s.endswith(")") and _wraps(s) and _top_level(s[1:-1], ","):
        return "tuple"
    return "list" if _top_level(s, ",") else ""


def _wraps(s: str) -> bool:
    """The bracket opening `s` closes at its end: '(1, 2)' yes, '(1, 2), (3, 4)' no."""
    depth = 0
    for i, ch in enumerate(s):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                return i == len(s) - 1
    return False


def hedge_words(s: str) -> bool:
    """'1 or 2', 'x = 1 and 2': alternatives offered inside one answer."""
    return _HEDGE_RE.search(s) is not None


def choice_letter(s: str) -> str | None:
    """'B', '(b)', 'C.' -> the letter; None when the string is not a bare choice."""
    m = _CHOICE_RE.match(s.strip())
    return m.group(1).upper() if m else None


def leading_choice(s: str) -> str | None:
    """The option letter an answer starts with: '(B) 12' -> 'B'."""
    m = _CHOICE_PREFIX_RE.match(s.strip())
    return m.group(1).upper() if m else None


def is_words(s: str) -> bool:
    """A plain-word answer such as 'Friday' or 'yes' (compared as text, not parsed)."""
    t = s.strip()
    return bool(_WORDS_ONLY.match(t)) and len(t) > 1 and t.lower() not in _MATH_WORDS


def answer_key(text: str, fallback: str = "last_number") -> str:
    """The normalised extracted answer plus what else decides the verdict (the cache key)."""
    ex = extract(text, fallback)
    if ex.text is None:
        return "none"
    c = clean_answer(ex.text)
    hedge = "h" + "\x1e".join(_squash(b) for b in ex.boxes) if ex.hedge else ""
    return "\x1f".join((hedge,
                        "p" if c.percent else "", "d" if c.degrees else "", c.text))
