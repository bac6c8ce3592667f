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
