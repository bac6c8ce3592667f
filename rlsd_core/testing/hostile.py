"""Hostile completions: what a policy can emit, and what every verifier must survive.

The G01-G04 class of docs/../shared bad-inputs (sizes, binary, nesting, invisible characters),
built without randomness so that a failure names a reproducible input. Each is (label, text):
the label goes into the reason of a failed check ("raised RecursionError on 'nested
parentheses x 9000'"). The runtime caps a text verifier's input at 20,000 characters keeping
the tail, so the nesting comes in sizes that pass the cap whole (what a plugin really meets)
and in sizes beyond it (what the cap must handle).
"""

from __future__ import annotations

_BINARY = "".join(chr(i) for i in range(256)) * 64  # every byte value as a code point, NULs too


def hostile_completions() -> list[tuple[str, str]]:
    """(label, completion) pairs; about 4 MB in all."""
    return [
        ("empty", ""),
        ("blank", " \n\t \n"),
        ("1 MB of digits", "7" * 1_000_000),
        ("1 MB of prose ending in an answer",
         "Let me think step by step. " * 38_000 + "The final answer is \\boxed{3}. <answer>3</answer>"),
        ("binary bytes 0-255 (16 KB)", _BINARY),
        ("NUL bytes", "\x00" * 4096 + "42" + "\x00" * 4096),
        ("lone surrogates", "answer: \ud800\udfff\udbff 5 \ud834"),
        ("nested parentheses x 9000", "(" * 9_000 + "1" + ")" * 9_000),
        ("nested parentheses x 50000", "(" * 50_000 + "1" + ")" * 50_000),
        ("unbalanced parentheses x 19000", "(" * 19_000),
        ("nested \\boxed{ x 2000", "\\boxed{" * 2_000 + "1" + "}" * 2_000),
        ("unbalanced \\frac{ x 1000", "\\frac{" * 1_000),
        ("nested brackets x 9000", "[" * 9_000 + "]" * 9_000),
        ("nested braces x 9000", "{" * 9_000 + "}" * 9_000),
        ("nested JSON x 4000", '{"a": ' * 4_000 + "1" + "}" * 4_000),
        ("10000 answer tags", "<answer>1</answer>" * 10_000),
        ("power tower", "\\boxed{5^{5^{5^{5^{5^{5^{5}}}}}}}"),
        ("huge number", "\\boxed{" + "9" * 5_000 + "}"),
        ("invisible and bidi characters",
         "\u202e\u200b\u2066The answer is \uff14\uff12\u2212\u200d1\u2069\ufeff"),
        ("combining marks", "4" + "\u0301" * 10_000),
        ("emoji and astral planes", "\U0001F600" * 2_000 + " \U0001D7D0\U0001D7D1"),
        ("code that loops forever", "```python\nwhile True:\n    pass\n```"),
        ("code that forks", "```python\nimport os\nwhile True:\n    os.fork()\n```"),
        ("a million newlines", "\n" * 1_000_000 + "1"),
    ]
