r"""Hand-written labeled rows for the math verifier, one group per defect class of issue 17.

Each class is reproduced on minimal inputs, with near misses beside the equivalent forms, so
that a rule that reads too much fails here too. These rows are rlsd's own ("rlsd-classes");
the reasoning-gym set (math_labeled.py) and the peer suites (peer_suites.py) are the others.
Rows: (class, completion, gold, expected).
"""

from __future__ import annotations

SOURCE = "rlsd-classes"

CASES: list[tuple[str, str, str, bool]] = [
    # Minerva's format: the phrase nested in "Final Answer:" is read, the sign-off is not.
    ("minerva", "Final Answer: The final answer is 7.78. I hope it is correct.", "7.78", True),
    ("minerva", "Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.", "0.5", True),
    ("minerva", "Final Answer: The final answer is 7.78. I hope it is correct.", "7.79", False),
    ("minerva", "Final Answer: The area of $ABCD$ is 120. I hope it is correct.", "120", True),
    ("minerva", "Answer: 42", "42", True),
    ("minerva", "Some work.\n#### 1,234", "1234", True),
    ("minerva", "We get \\boxed{200} and \\boxed{255} on the way. The final answer is $10,455$.", "10455", True),
    # The fallback never reads digits out of a larger token or formula.
    ("fallback_tokens", "So it is $\\frac{7}{3}$", "3", False),
    ("fallback_tokens", "So it is $\\frac{7}{3}$", "7/3", True),
    ("fallback_tokens", "The ratio is $\\frac{1+\\sqrt5}{2}$", "2", False),
    ("fallback_tokens", "The ratio is $\\frac{1+\\sqrt5}{2}$", "\\frac{1+\\sqrt{5}}{2}", True),
    ("fallback_tokens", "We need $x\\in[0,1)$", "1", False),
    ("fallback_tokens", "We need $x\\in[0,1)$", "[0,1)", True),
    ("fallback_tokens", "The probability is .4", "0.4", True),
    ("fallback_tokens", "The probability is .4", "4", False),
    ("fallback_tokens", "The floor is 12 m\u00b2", "12", True),
    ("fallback_tokens", "The floor is 12 m\u00b2", "2", False),
    ("fallback_tokens", "The code is AZYUK2A", "2", False),
    ("fallback_tokens", "Use x_1 and x_2", "2", False),
    ("fallback_tokens", "It equals $\\frac13$", "1/3", True),
    ("fallback_tokens", "Thus \\(x = \\frac{3}{4}\\).", "0.75", True),
    ("fallback_tokens", "Thus \\[x = \\frac{3}{4}\\]", "3", False),
    ("fallback_tokens", "Hence $$y = 2x + 1$$", "2x - y + 1 = 0", True),
    # A hedge without a box is a hedge.
    ("fallback_hedge", "It is either 3 or 4.", "3", False),
    ("fallback_hedge", "It is either 3 or 4.", "4", False),
    ("fallback_hedge", "So $x = 3$ or $x = 4$.", "4", False),
    ("fallback_hedge", "We add 3 and get 7.", "7", True),
    ("fallback_hedge", "The answer is not 5.", "5", False),
    ("fallback_hedge", "It is not 5. We check again and get 6.", "6", True),
    ("fallback_hedge", "It cannot be 5", "5", False),
    # A comma list is not a thousands separator.
    ("list_not_thousands", "\\boxed{3, 100}", "3100", False),
    ("list_not_thousands", "\\boxed{3, 100}", "3, 100", True),
    ("list_not_thousands", "\\boxed{3,100}", "3100", True),
    # A gold with several boxes lists several values (any order).
    ("gold_boxes", "\\boxed{13}", "\\boxed{2}, \\boxed{3}, \\boxed{5}, \\boxed{7}, \\boxed{13}", False),
    ("gold_boxes", "\\boxed{2, 3, 5, 7, 13}", "\\boxed{2}, \\boxed{3}, \\boxed{5}, \\boxed{7}, \\boxed{13}", True),
    ("gold_boxes", "\\boxed{13, 7, 5, 3, 2}", "\\boxed{2}, \\boxed{3}, \\boxed{5}, \\boxed{7}, \\boxed{13}", True),
    ("gold_boxes", "\\boxed{2} and \\boxed{3}", "\\boxed{2} and \\boxed{3}", True),
    ("gold_boxes", "\\boxed{2} and \\boxed{3}", "2", False),
    # Clock times and ratios are pairs, never divisions.
    ("times", "\\boxed{5:00}", "12:00", False),
    ("times", "\\boxed{12:00}", "12:00", True),
    ("times", "The train leaves at $9:30$.", "9:30", True),
    ("times", "\\boxed{9:03}", "9:30", False),
    ("times", "\\boxed{3:2}", "3:2", True),
    ("times", "\\boxed{2:3}", "3:2", False),
    # Sets, tuples and intervals.
    ("sets_tuples", "\\boxed{\\{1,3\\}}", "(3,1)", False),
    ("sets_tuples", "\\boxed{\\{1,3\\}}", "(1,3)", False),
    ("sets_tuples", "\\boxed{\\{3,1\\}}", "\\{1,3\\}", True),
    ("sets_tuples", "\\boxed{(1,3)}", "(1,3)", True),
    ("sets_tuples", "\\boxed{1, 3}", "(1,3)", True),
    ("sets_tuples", "\\boxed{3, 1}", "(1,3)", False),
    ("sets_tuples", "\\boxed{[1,3)}", "[1,3]", False),
    ("sets_tuples", "\\boxed{(1,2),(3,4),(1,2)}", "(3,4),(1,2)", True),
    # Inequalities up to equivalence.
    ("inequalities", "$-x > -1$", "x < 1", True),
    ("inequalities", "$-x > -1$", "x > 1", False),
    ("inequalities", "\\boxed{-x \\ge -1}", "x \\le 1", True),
    ("inequalities", "\\boxed{-x \\ge -1}", "x < 1", False),
    ("inequalities", "\\boxed{(-2, 5)}", "-2 < x < 5", True),
    ("inequalities", "\\boxed{[-2, 5)}", "-2 < x < 5", False),
    ("inequalities", "\\boxed{x \\in [-2, 5]}", "-2 \\le x \\le 5", True),
    ("inequalities", "\\boxed{x \\ne 3}", "x \\neq 3", True),
    # Currency before the thousands separator (GSM8K style).
    ("currency", "The answer is $1,234.", "1234", True),
    ("currency", "The answer is $1,234.", "1235", False),
    ("currency", "She pays \\$1,000.50 in total, so \\boxed{\\$1,000.50}", "1000.5", True),
    ("currency", "It costs $10 and then $20 more, so 30 in all.", "30", True),
    ("currency", "The total is **$1,234.50**.", "1234.5", True),
    # Units and text wrappers.
    ("units_text", "\\boxed{\\frac{1}{3} \\text{ meters}}", "1/3", True),
    ("units_text", "\\boxed{\\frac{1}{3} \\text{ meters}}", "3", False),
    ("units_text", "\\boxed{125\\textnormal{ miles}}", "125", True),
    ("units_text", "\\boxed{125\\textnormal{ miles}}", "126", False),
    ("units_text", "\\boxed{\\textnormal{odd}}", "\\text{odd}", True),
    ("units_text", "\\boxed{\\text{even}}", "odd", False),
    ("units_text", "\\boxed{2\\sqrt{3}\\text{ cm}}", "2\\sqrt{3}", True),
    # \pm, including inside \frac.
    ("plus_minus", "\\boxed{\\frac{-1 \\pm \\sqrt{13}}{4}}",
     "\\frac{-1 + \\sqrt{13}}{4}, \\frac{-1 - \\sqrt{13}}{4}", True),
    ("plus_minus", "\\boxed{x = \\frac{-1 \\pm \\sqrt{13}}{4}}", "\\frac{-1 \\pm \\sqrt{13}}{4}", True),
    ("plus_minus", "\\boxed{\\frac{-1 + \\sqrt{13}}{4}}", "\\frac{-1 \\pm \\sqrt{13}}{4}", False),
    ("plus_minus", "\\boxed{\\pm 2021}", "-2021, 2021", True),
    ("plus_minus", "\\boxed{2021}", "\\pm 2021", False),
    # Labels in the gold or the answer.
    ("labels", "\\boxed{(1, 2)}", "(x, y) = (1, 2)", True),
    ("labels", "\\boxed{(x, y) = (1, 2)}", "(1, 2)", True),
    ("labels", "\\boxed{(2, 1)}", "(x, y) = (1, 2)", False),
    ("labels", "\\boxed{4, 5}", "AB=4, CD=5", True),
    ("labels", "\\boxed{7:32}", "S_{ABC}:S=7:32", True),
    ("labels", "\\boxed{1}", "f(x)=1", True),
    ("labels", "\\boxed{(5,2),(7,2)}", "p=5,q=2;p=7,q=2", True),
    ("labels", "\\boxed{y = 2x + 1}", "y = 2x + 2", False),
    ("labels", "\\boxed{x = 1/3 \\approx 0.33}", "1/3", True),
    ("labels", "\\boxed{5 \\times 6 \\times 4 = 120}", "120", True),
    # Lists written with "and".
    ("lists_and", "$19, 46, \\text{ and } 82$", "19, 46, and 82", True),
    ("lists_and", "\\boxed{19, 46, 82}", "19, 46, and 82", True),
    ("lists_and", "\\boxed{19, 46, 81}", "19, 46, and 82", False),
    ("lists_and", "\\boxed{19 \\text{ and } 46}", "19", False),
    # Alternatives for one left side, spaces lost as `\text{or}` reads stripped (the class of
    # math-verify's numina case 24): split only between a value and the same left side again.
    ("lists_and", "W(x)=1orW(x)=-1", "1, -1", True),
    ("lists_and", "x=2andx=3", "2, 3", True),
    ("lists_and", "W(x)=5orW(x)=-1", "1, -1", False),
    ("lists_and", "x=1ory=-1", "1, -1", False),
    ("lists_and", "x=1forx=-1", "1, -1", False),
    # A gold's box that is never closed runs to the end (a completion's stays malformed), also
    # when the gold's commands are escaped twice.
    ("gold_boxes", "\\boxed{7}", "\\boxed{7", True),
    ("gold_boxes", "\\boxed{W(x)=1 \\text{ or } W(x)=-1}", "\\\\boxed{W(n) = 1 \\\\text{ and } W(n) = -1", True),
    ("gold_boxes", "\\boxed{-1}", "\\\\boxed{W(n) = 1 \\\\text{ and } W(n) = -1", False),
    ("gold_boxes", "\\boxed{7", "7", False),
    # Identities that reduce to a constant.
    ("identities", "\\boxed{\\sin^2 x + \\cos^2 x}", "1", True),
    ("identities", "\\boxed{\\sin^2 x + \\cos^2 x}", "2", False),
    ("identities", "\\boxed{\\sec^2(y)}", "\\tan^2(y) + 1", True),
    ("identities", "\\boxed{x}", "y", False),
    # Matrices after evaluation.
    ("matrices", "$\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix} + \\begin{pmatrix}5 & 6 \\\\ 7 & 8\\end{pmatrix}$",
     "\\begin{pmatrix}6 & 8 \\\\ 10 & 12\\end{pmatrix}", True),
    ("matrices", "$\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix} + \\begin{pmatrix}5 & 6 \\\\ 7 & 8\\end{pmatrix}$",
     "\\begin{pmatrix}6 & 8 \\\\ 10 & 13\\end{pmatrix}", False),
    ("matrices", "$\\begin{pmatrix}0 & 1 \\\\ 1 & 0\\end{pmatrix}\\begin{pmatrix}0 & 1 \\\\ 1 & 0\\end{pmatrix}$",
     "\\begin{pmatrix}1 & 0 \\\\ 0 & 1\\end{pmatrix}", True),
    ("matrices", "\\boxed{\\begin{bmatrix}1 & 2 \\\\ 3 & 4\\end{bmatrix}}",
     "\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix}", True),
    # Thin spaces and decimal commas.
    ("separators", "\\boxed{16,\\!386.20}", "16386.2", True),
    ("separators", "\\boxed{1\\,000}", "1000", True),
    ("separators", "The result is 2,74 \u20ac.", "2.74", True),
    ("separators", "\\boxed{1,2}", "1.2", False),
    # A bare answer is read whole; the last formula wins over earlier ones.
    ("bare", "(1, 2)", "(1, 2)", True),
    ("bare", "\\text{yes}", "yes", True),
    ("bare", "\\boxed 7", "7", True),
    ("bare", "We have $x = 2$, so the area is $4$.", "4", True),
    ("bare", "We have $x = 2$, so the area is $4$.", "2", False),
]


def load() -> list[dict]:
    return [{"source": SOURCE, "origin": f"{cls}[{i}]", "class": cls, "completion": c, "gold": g,
             "expected": e} for i, (cls, c, g, e) in enumerate(CASES)]
