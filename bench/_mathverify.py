"""Math-Verify 0.9.0 wrapped as an rlsd verifier record, so that the benchmark runs it under the
same runtime as rlsd's math verifier: worker processes, the same hard wall-clock deadline,
the same number of workers. (Math-Verify's own SIGALRM timeouts then work, because each
worker calls it on its main thread; in-process from a trainer thread they would not.)"""

from __future__ import annotations

from rlsd_core import Verdict, VerifierRecord


def score(completions, rows, **options):
    from math_verify import parse, verify

    out = []
    for completion, row in zip(completions, rows):
        gold = str(row["answer"])
        # gold as Math-Verify's docs advise (a LaTeX formula), plain text as a second try
        parsed_gold = parse(f"${gold}$") or parse(gold)
        if not parsed_gold:
            out.append(Verdict.fail("gold_error", "Math-Verify could not parse the gold"))
            continue
        pred = parse(completion)
        out.append(Verdict.ok() if verify(parsed_gold, pred) else Verdict.fail("wrong_answer"))
    return out


RECORD = VerifierRecord(name="math_verify", fn=score, columns=("answer",), version="0.9.0",
                        time_budget_s=5.0, cacheable=False)


def score_rlsd_extraction(completions, rows, **options):
    """The engine alternative measured for issue 17: rlsd's hygiene, extraction and hedge rules,
    then Math-Verify's parser and comparison on the extracted answer (its SIGALRM timeouts off:
    the runtime's hard deadline is the only one)."""
    from math_verify import parse, verify

    from rlsd_core import Category, clean_tail
    from rlsd_verifiers.math.answers import clean_answer, extract

    out = []
    for completion, row in zip(completions, rows):
        gold = str(row["answer"])
        parsed_gold = parse(f"${gold}$", parsing_timeout=None) or parse(gold, parsing_timeout=None)
        if not parsed_gold:
            out.append(Verdict.fail(Category.GOLD_ERROR, "Math-Verify could not parse the gold"))
            continue
        text, bad = clean_tail(completion)
        if bad is not None:
            out.append(bad)
            continue
        ex = extract(text)
        if ex.text is None:
            out.append(Verdict.fail(Category.NO_ANSWER, "no answer"))
            continue
        source = ", ".join(ex.boxes) if ex.hedge and ex.boxes else ex.text
        if ex.hedge and len(parsed_gold) and not ex.boxes:
            out.append(Verdict.fail(Category.WRONG_ANSWER, "hedge"))
            continue
        pred = parse(f"${clean_answer(source).text}$", parsing_timeout=None)
        ok = verify(parsed_gold, pred, timeout_seconds=None)
        out.append(Verdict.ok() if ok else Verdict.fail(Category.WRONG_ANSWER, "not equal"))
    return out


HYBRID_RECORD = VerifierRecord(name="rlsd_extract_math_verify", fn=score_rlsd_extraction,
                               columns=("answer",), version="0.9.0", time_budget_s=5.0,
                               cacheable=False)
