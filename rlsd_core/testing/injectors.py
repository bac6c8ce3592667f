"""The injector battery: the properties every privileged-context injector must have.

    record            the record validates
    messages          it returns a new list of chat messages ({role: str, content: str or a
                      list of parts}), with a user message, for each example row
    student_untouched the student's messages are never modified (the loop reuses them)
    columns           it reads only the columns it declares, and no value of an undeclared
                      column (a gold answer it does not declare) reaches the teacher
    token_budget      the privileged text it adds stays within ctx.options["max_hint_tokens"]
                      however long the columns and the group's responses are
    group             with needs_group=False the teacher prompt ignores the group (the loop
                      builds one prompt per row), with needs_group=True it still works on a
                      group of one
    deterministic     the same row and context give the same messages

Tokens are counted by a stand-in tokenizer (one token per whitespace-separated word, both
`count_tokens` and `truncate_tokens` given in the context), so the battery needs no model.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

from ..records import Example, InjectorContext, InjectorRecord
from ..verdict import Category, Verdict
from .results import Battery, CheckResult, PropertyFailed, fail, short
from .verifiers import call_with_deadline

INJECTOR_PROPERTIES = ("record", "messages", "student_untouched", "columns", "token_budget",
                       "group", "deterministic")
# Undeclared columns a row carries in the `columns` check; their values must never reach the
# teacher (the canary is a made-up token no template contains).
CANARY = "zq7canary"
UNDECLARED = ("answer", "solution", "reference", "gold", "target", "metadata")
BUDGET = 24
_LONG_WORDS = 5_000


def _count(text: str) -> int:
    return len(text.split())


def _truncate(text: str, n: int) -> str:
    return " ".join(text.split()[:n])


def _text(messages: Any) -> str:
    """All text of a list of messages (string contents and text parts)."""
    out = []
    for m in messages if isinstance(messages, list) else []:
        content = m.get("content") if isinstance(m, Mapping) else None
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out += [p.get("text", "") for p in content if isinstance(p, Mapping)
                    and isinstance(p.get("text", ""), str)]
    return "\n".join(out)


def _group(responses: Sequence[str], messages: Sequence[str]) -> tuple[list[str], list[Verdict]]:
    """A group of four: two right, two wrong with checker messages."""
    verdicts = [Verdict.ok(), Verdict.fail(Category.WRONG_ANSWER, messages[0]),
                Verdict.ok(), Verdict.fail(Category.WRONG_ANSWER, messages[1])]
    return list(responses), verdicts


class _Injector:
    def __init__(self, record: InjectorRecord, options: Mapping[str, Any], rows: list[Mapping]) -> None:
        self.record, self.options, self.rows = record, dict(options), rows

    def context(self, *, index: int = 1, responses=None, verdicts=None, **extra) -> InjectorContext:
        if responses is None:
            responses, verdicts = _group(["I think it is 4.", "It is 5.", "The result is 4.",
                                          "Maybe 6."], ["expected 4, got 5", "expected 4, got 6"])
        return InjectorContext(index=index, responses=responses, verdicts=verdicts,
                               options={**self.options, **extra}, count_tokens=_count,
                               truncate_tokens=_truncate)

    def call(self, row: Mapping, student: list[dict], ctx: InjectorContext, what: str) -> list:
        result, error = call_with_deadline(self.record.fn, (row, student, ctx), {}, 30.0)
        if error is not None:
            fail(f"{what}: fn raised {type(error).__name__}: {short(str(error), 160)}")
        return result


def student_of(row: Mapping[str, Any]) -> list[dict]:
    if row.get("messages"):
        return [dict(m) for m in row["messages"]]
    return [{"role": "system", "content": "You are a careful solver."},
            {"role": "user", "content": str(row.get("prompt", "What is 2 + 2?"))}]


def rows_for(record: InjectorRecord, rows: Sequence[Mapping] = ()) -> list[Mapping]:
    """The record's example rows plus a test's; a synthetic row (prompt and each declared
    column) when there are none."""
    out = [ex.row for ex in record.examples] + [r.row if isinstance(r, Example) else r for r in rows]
    if not out:
        out.append({"prompt": "What is 2 + 2?", **{c: "4" for c in record.columns}})
    return out


def check_injector(record: InjectorRecord, *, options: Mapping[str, Any] | None = None,
                   rows: Sequence[Mapping] = ()) -> list[CheckResult]:
    """Run the injector battery on `record` (its example rows plus `rows`)."""
    battery = Battery("injector", record.name)
    inj = _Injector(record, options or {}, rows_for(record, rows))
    battery.check("record", lambda: record.validate())
    battery.check("messages", lambda: _messages(inj))
    battery.check("student_untouched", lambda: _student_untouched(inj))
    battery.check("columns", lambda: _columns(inj))
    battery.check("token_budget", lambda: _token_budget(inj))
    battery.check("group", lambda: _group_use(inj))
    battery.check("deterministic", lambda: _deterministic(inj))
    return battery.results


def _check_messages(out: Any, what: str) -> None:
    if not isinstance(out, list) or not out:
        fail(f"{what}: returned {short(out)}; return a non-empty list of message dicts")
    for i, m in enumerate(out):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            fail(f"{what}: message {i} is {short(m)}; each message is a dict with a str role")
        content = m.get("content")
        if not isinstance(content, (str, list)):
            fail(f"{what}: message {i} has content {short(content)}; a str or a list of parts")
    if not any(m.get("role") == "user" for m in out):
        fail(f"{what}: no message has role 'user'")


def _messages(inj: _Injector) -> str:
    for i, row in enumerate(inj.rows):
        _check_messages(inj.call(row, student_of(row), inj.context(), f"row {i}"), f"row {i}")
    return f"{len(inj.rows)} row(s)"


def _student_untouched(inj: _Injector) -> str:
    for i, row in enumerate(inj.rows):
        student = student_of(row)
        before = copy.deepcopy(student)
        out = inj.call(row, student, inj.context(), f"row {i}")
        if student != before:
            fail(f"row {i}: the student's messages were modified; build new message dicts")
        if out is student or any(a is b for a in (out or []) for b in student):
            fail(f"row {i}: returns the student's own message objects; return copies (the loop "
                 f"reuses the student's messages)")
    return ""


def _columns(inj: _Injector) -> str:
    declared = set(inj.record.columns)
    for i, row in enumerate(inj.rows):
        secrets = {c: f"{CANARY}{c}" for c in UNDECLARED if c not in declared}
        out = inj.call({**row, **secrets}, student_of(row), inj.context(), f"row {i}")
        text = _text(out)
        leaked = sorted(c for c, value in secrets.items() if value in text)
        if leaked:
            fail(f"row {i}: the teacher prompt holds the value of undeclared column(s) {leaked}; "
                 f"declare every column it reads (columns=...)")
        lean = {k: v for k, v in row.items() if k in declared or k in ("prompt", "messages")}
        try:
            inj.call(lean, student_of(lean), inj.context(), f"row {i} cut to its declared columns")
        except PropertyFailed as exc:
            fail(f"{exc}: it reads a column it does not declare (columns={sorted(declared)})")
    return f"declared {sorted(declared)}"


def _token_budget(inj: _Injector) -> str:
    long = " ".join(f"w{k}" for k in range(_LONG_WORDS))
    grown = []
    for i, row in enumerate(inj.rows):
        short_row = {**row, **{c: "4" for c in inj.record.columns}}
        long_row = {**row, **{c: long for c in inj.record.columns}}
        student = student_of(row)
        base = _count(_text(inj.call(short_row, student, inj.context(max_hint_tokens=BUDGET),
                                     f"row {i}")))
        responses, verdicts = _group([long] * 4, [long, long])
        ctx = inj.context(responses=responses, verdicts=verdicts, max_hint_tokens=BUDGET)
        big = _count(_text(inj.call(long_row, student, ctx, f"row {i} with long columns")))
        grown.append(big - base)
        if big - base > BUDGET:
            fail(f"row {i}: with max_hint_tokens={BUDGET} the teacher prompt grows by {big - base} "
                 f"tokens when the columns and responses are {_LONG_WORDS} tokens long; cut the "
                 f"privileged text to ctx.options['max_hint_tokens'] (ctx.truncate_tokens)")
    return f"grows by at most {max(grown)} tokens (budget {BUDGET})"


def _group_use(inj: _Injector) -> str:
    row = inj.rows[0]
    student = student_of(row)
    if inj.record.needs_group:
        alone = inj.context(index=0, responses=["It is 4."], verdicts=[Verdict.ok()])
        _check_messages(inj.call(row, student, alone, "a group of one"), "a group of one")
        return "needs_group: works on a group of one"
    a = inj.call(row, student, inj.context(index=0), "row 0, response 0")
    others, verdicts = _group(["x 1", "x 2", "x 3", "x 4"], ["no 1", "no 2"])
    b = inj.call(row, student, inj.context(index=3, responses=others, verdicts=verdicts),
                 "row 0, another response and group")
    if a != b:
        fail("the teacher prompt depends on the group's responses or the response's index, but "
             "the record says needs_group=False (the loop would build one prompt per row)")
    return ""


def _deterministic(inj: _Injector) -> str:
    for i, row in enumerate(inj.rows):
        first = inj.call(row, student_of(row), inj.context(), f"row {i}")
        again = inj.call(row, student_of(row), inj.context(), f"row {i}, second call")
        if first != again:
            fail(f"row {i}: two calls gave different messages ({short(_text(first))} vs "
                 f"{short(_text(again))})")
    return ""
