"""The `code` verifier: runs a completion's Python against tests inside an OS sandbox.

Data flow: completion + row -> the program (code extracted from a ```python fence if there is
one; the row's `prompt` is prepended when the completion only continues it) -> a fresh
bubblewrap sandbox per sample (sandbox.py) whose judge (harness.py) runs the tests -> per-test
records -> one Verdict.

Two row styles; the record declares no columns because each style needs different ones:
- HumanEval style: `test` (code defining `check(candidate)`), `entry_point` (the function's
  name), optional `prompt` (the function's signature and docstring; test helpers such as
  HumanEval/32's `poly` are taken from it, never from the candidate). The whole `check` is one
  test. Values the candidate returns are serialised to plain data in its own process and
  compared by the judge in another process: an object with a lying `__eq__` cannot pass.
- Stdin/stdout style: `tests`, a list of {"input": str, "output": str}. Each test runs the
  program as __main__ with the input on stdin; its stdout is compared here, in the host, after
  whitespace normalisation (trailing spaces on each line and blank lines at either end do not
  count). Expected outputs never enter the sandbox.
A row with neither `test` + `entry_point` nor `tests` is invalid_input.

A sample passes only on the judge's result, delivered over a pipe the candidate cannot reach
and carrying a per-run nonce; an exit status of 0 never means "passed".

Options (keyword arguments):
  sandbox          "bwrap" (default) | "degraded": explicit opt-in to run WITHOUT isolation
                   (subprocess + rlimits only), with a loud warning
  timeout          seconds per test (default 3.0)
  sample_timeout   seconds per sample, all tests together (default 10.0)
  partial_credit   reward = fraction of tests passed (default False: all or nothing)
  memory_mb, max_processes, max_open_files, max_file_mb, tmpfs_mb, max_output_bytes,
  max_value_bytes  limits (see sandbox.Limits)
  max_code_chars   longer programs are input_too_large without running (default 100,000)
  extract_code     "auto" (default: the first ```python block if any) | "none"
  python           interpreter run inside the sandbox (default /usr/bin/python3; it must be
                   readable by uid 65534)
  bwrap            path of bubblewrap (default: `bwrap` on PATH)

If bubblewrap or user namespaces are missing, every sample is sandbox_error with install help
(masked by the trainer, never a false 0), and `check_sandbox()` raises SandboxUnavailable:
call it at start-up to refuse early.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, model_validator

from rlsd_core import Category, Example, Verdict, VerifierRecord, hookimpl

from .sandbox import Limits, SandboxUnavailable, check_sandbox, run_sandboxed

__all__ = ["score", "score_one", "check_sandbox", "SandboxUnavailable", "Limits", "build_program",
           "normalize_output", "RECORD"]

NAME = "code"
VERSION = "1.0"

_LIMIT_KEYS = ("memory_mb", "max_processes", "max_open_files", "max_file_mb", "tmpfs_mb",
               "max_output_bytes", "max_value_bytes")
_OPTION_KEYS = ("sandbox", "timeout", "sample_timeout", "partial_credit", "max_code_chars",
                "extract_code", "python", "bwrap") + _LIMIT_KEYS

_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+\-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)

# The judge's statuses that map to a category as they are.
_STATUS = {c.value: c for c in Category}


def extract_code(completion: str) -> str:
    """The first ```python (or unlabelled) fenced block, else the first fenced block, else the
    whole completion."""
    if "```" not in completion:
        return completion
    blocks = _FENCE_RE.findall(completion)
    for lang, body in blocks:
        if lang.lower() in ("python", "py", "python3", ""):
            return body
    return blocks[0][1] if blocks else completion


def build_program(completion: str, row: Mapping[str, Any], extract: str = "auto") -> str:
    """The program to run: the completion's code, after the prompt when it only continues it."""
    code = extract_code(completion) if extract == "auto" else completion
    prompt = row.get("prompt")
    entry = row.get("entry_point")
    if isinstance(prompt, str) and prompt and isinstance(entry, str):
        defines = re.search(rf"^[ \t]*(?:async[ \t]+)?def[ \t]+{re.escape(entry)}[ \t]*\(", code, re.M)
        # A full function (chat models) overrides the prompt's stub; a body continues it.
        return prompt + "\n" + code if defines else prompt + code
    return code


def normalize_output(text: str) -> str:
    """Whitespace normalisation for stdout comparison: line endings, trailing spaces on each
    line and blank lines at either end do not count."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return "\n".join(lines).strip("\n")


def _trunc(s: str, n: int) -> str:
    s = s if isinstance(s, str) else repr(s)
    return s if len(s) <= n else s[: n - 3] + "..."


def _parse_options(options: Mapping[str, Any]) -> tuple[Limits, dict[str, Any]]:
    unknown = set(options) - set(_OPTION_KEYS)
    if unknown:
        raise TypeError(f"code verifier: unknown option(s) {sorted(unknown)}; valid: {sorted(_OPTION_KEYS)}")
    limits = Limits(test_timeout=options.get("timeout", 3.0),
                    sample_timeout=options.get("sample_timeout", 10.0),
                    **{k: options[k] for k in _LIMIT_KEYS if k in options})
    limits.validate()
    rest = {
        "sandbox": options.get("sandbox", "bwrap"),
        "partial_credit": options.get("partial_credit", False),
        "max_code_chars": options.get("max_code_chars", 100_000),
        "extract_code": options.get("extract_code", "auto"),
        "python": options.get("python", "/usr/bin/python3"),
        "bwrap": options.get("bwrap"),
    }
    if rest["sandbox"] not in ("bwrap", "degraded"):
        raise ValueError(f"code verifier: sandbox must be 'bwrap' or 'degraded', got {rest['sandbox']!r}")
    if rest["extract_code"] not in ("auto", "none"):
        raise ValueError(f"code verifier: extract_code must be 'auto' or 'none', got {rest['extract_code']!r}")
    if not isinstance(rest["partial_credit"], bool):
        raise TypeError(f"code verifier: partial_credit must be True or False, got {rest['partial_credit']!r}")
    mcc = rest["max_code_chars"]
    if isinstance(mcc, bool) or not isinstance(mcc, int) or mcc <= 0:
        raise ValueError(f"code verifier: max_code_chars must be a positive integer, got {mcc!r}")
    return limits, rest


class CodeOptions(BaseModel):
    """The options `rlsd_core.check_options` validates before any sample runs (the rules are
    `_parse_options` and `Limits.validate`; None: the verifier's default)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    sandbox: str | None = None
    timeout: float | None = None
    sample_timeout: float | None = None
    partial_credit: bool | None = None
    max_code_chars: int | None = None
    extract_code: str | None = None
    python: str | None = None
    bwrap: str | None = None
    memory_mb: int | None = None
    max_processes: int | None = None
    max_open_files: int | None = None
    max_file_mb: int | None = None
    tmpfs_mb: int | None = None
    max_output_bytes: int | None = None
    max_value_bytes: int | None = None

    @model_validator(mode="after")
    def _valid(self):
        try:
            _parse_options(self.model_dump(exclude_none=True))
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        return self


def _row_style(row: Mapping[str, Any]) -> tuple[str | None, Verdict | None]:
    if "tests" in row:
        tests = row["tests"]
        if (not isinstance(tests, (list, tuple)) or not tests
                or not all(isinstance(t, Mapping) and isinstance(t.get("input"), str)
                           and isinstance(t.get("output"), str) for t in tests)):
            return None, Verdict.fail(Category.GOLD_ERROR, "column `tests` must be a non-empty list of "
                                      "{'input': str, 'output': str}")
        return "stdio", None
    if "test" in row and "entry_point" in row:
        if not isinstance(row["test"], str) or "def check" not in row["test"]:
            return None, Verdict.fail(Category.GOLD_ERROR, "column `test` must be Python source that "
                                      "defines check(candidate)")
        entry = row["entry_point"]
        if not isinstance(entry, str) or not entry.isidentifier():
            return None, Verdict.fail(Category.GOLD_ERROR, f"column `entry_point` must name a function, "
                                      f"got {entry!r}")
        if "prompt" in row and row["prompt"] is not None and not isinstance(row["prompt"], str):
            return None, Verdict.fail(Category.GOLD_ERROR, "column `prompt` must be a string")
        return "function", None
    present = sorted(map(str, row))[:12]
    return None, Verdict.fail(Category.INVALID_INPUT,
                              "the code verifier needs either `test` + `entry_point` (HumanEval style) "
                              f"or `tests` (stdin/stdout style); the row has {present}")


def score_one(completion: Any, row: Any, **options: Any) -> Verdict:
    limits, opt = _parse_options(options)
    if not isinstance(row, Mapping):
        return Verdict.fail(Category.INVALID_INPUT, f"row must be a mapping, got {type(row).__name__}")
    if not isinstance(completion, str):
        return Verdict.fail(Category.INVALID_INPUT, f"completion must be a str, got {type(completion).__name__}")
    style, bad = _row_style(row)
    if bad is not None:
        return bad
    if len(completion) > opt["max_code_chars"]:
        return Verdict.fail(Category.INPUT_TOO_LARGE,
                            f"completion is {len(completion)} characters (limit {opt['max_code_chars']})")
    code = extract_code(completion) if opt["extract_code"] == "auto" else completion
    if not code.strip():
        return Verdict.fail(Category.NO_ANSWER, "the completion contains no code")
    program = build_program(completion, row, opt["extract_code"])
    if len(program) > opt["max_code_chars"] + len(row.get("prompt") or ""):
        return Verdict.fail(Category.INPUT_TOO_LARGE, f"program is {len(program)} characters")
    if "\x00" in program:
        return Verdict.fail(Category.COMPILE_ERROR, "the program contains NUL bytes")
    try:
        program.encode("utf-8")
    except UnicodeEncodeError as exc:
        return Verdict.fail(Category.COMPILE_ERROR, f"the program is not valid Unicode text: {exc.reason} "
                            f"at position {exc.start}")
    if style == "function":
        job = {"program": program, "entry": row["entry_point"], "test": row["test"],
               "prompt": row.get("prompt") or "", "test_timeout": limits.test_timeout}
    else:
        job = {"program": program, "inputs": [t["input"] for t in row["tests"]],
               "test_timeout": limits.test_timeout, "partial": opt["partial_credit"]}
    try:
        res = run_sandboxed(style, job, limits, mode=opt["sandbox"], python=opt["python"], bwrap=opt["bwrap"])
    except SandboxUnavailable as exc:
        return Verdict.fail(Category.SANDBOX_ERROR, str(exc))
    if res.failure is not None:
        cat, msg = res.failure
        if res.log.strip() and cat in ("timeout", "output_limit"):
            msg += "; output: " + _trunc(res.log.strip()[-150:], 150)
        return Verdict.fail(_STATUS.get(cat, Category.SANDBOX_ERROR), msg)
    if style == "function":
        return _function_verdict(res.tests, res.log)
    return _stdio_verdict(res.tests, row["tests"], opt["partial_credit"])


def _category(status: Any) -> Category:
    cat = _STATUS.get(status)
    return cat if cat is not None and cat is not Category.OK else Category.SANDBOX_ERROR


def _function_verdict(tests: list[dict], log_text: str) -> Verdict:
    if len(tests) != 1:
        return Verdict.fail(Category.SANDBOX_ERROR, f"judge returned {len(tests)} results for one check()")
    t = tests[0]
    if t.get("status") == "pass":
        return Verdict.ok("all tests passed")
    msg = str(t.get("message", ""))
    if log_text.strip():
        msg += " | output: " + _trunc(log_text.strip()[-120:], 120)
    return Verdict.fail(_category(t.get("status")), msg)


def _stdio_verdict(results: list[dict], tests: Sequence[Mapping[str, str]], partial: bool) -> Verdict:
    if len(results) != len(tests):
        return Verdict.fail(Category.SANDBOX_ERROR, f"judge returned {len(results)} results for {len(tests)} tests")
    passed = 0
    first: tuple[Category, str] | None = None
    for i, (r, t) in enumerate(zip(results, tests)):
        status = r.get("status")
        where = f"test {i + 1}/{len(tests)} (input {_trunc(t['input'], 60)!r})"
        if status == "exited":
            got = r.get("stdout")
            if isinstance(got, str) and normalize_output(got) == normalize_output(t["output"]):
                passed += 1
                continue
            cat = Category.WRONG_ANSWER
            msg = (f"{where}: expected {_trunc(normalize_output(t['output']), 80)!r}, "
                   f"got {_trunc(normalize_output(str(got)), 120)!r}")
        elif status == "skipped":
            continue
        else:
            cat = _category(status)
            msg = f"{where}: {r.get('message', '')}"
            stderr = str(r.get("stderr") or "").strip()
            if stderr:
                msg += " | stderr: " + _trunc(stderr.splitlines()[-1], 150)
        if first is None:
            first = (cat, msg)
    if first is None:
        return Verdict.ok(f"{passed}/{len(tests)} tests passed")
    reward = passed / len(tests) if partial else 0.0
    return Verdict(reward, first[0], f"{passed}/{len(tests)} passed; first failure: {first[1]}")


def score(completions: Sequence[Any], rows: Sequence[Mapping[str, Any]], **options: Any) -> list[Verdict]:
    _parse_options(options)  # bad options fail the whole call loudly, before any sandbox starts
    return [score_one(c, r, **options) for c, r in zip(completions, rows)]


def startup_check(**options: Any) -> None:
    """Refuse at start-up (SandboxUnavailable, with install help) when the sandbox cannot run
    here, unless the caller explicitly opted into the degraded mode."""
    if options.get("sandbox", "bwrap") == "bwrap":
        check_sandbox(options.get("python", "/usr/bin/python3"), options.get("bwrap"))


_ADD = {"prompt": 'def add(a, b):\n    """Return a + b."""\n', "entry_point": "add",
        "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"}

RECORD = VerifierRecord(
    name=NAME,
    fn=score,
    # Each row style needs different columns (see the module docstring); score_one checks them.
    columns=(),
    version=VERSION,
    description="Runs Python completions against HumanEval-style or stdin/stdout tests in a "
                "bubblewrap sandbox.",
    needs_sandbox=True,
    time_budget_s=15.0,
    in_process=False,
    cacheable=False,
    startup_check=startup_check,
    optional_columns=("prompt", "test", "entry_point", "tests"),
    examples=(
        Example(row=_ADD, completion="```python\ndef add(a, b):\n    return a + b\n```", reward=1.0),
        Example(row=_ADD, completion="```python\ndef add(a, b):\n    return a - b\n```", reward=0.0),
        Example(row={"tests": [{"input": "2 3\n", "output": "5\n"}]},
                completion="a, b = map(int, input().split())\nprint(a + b)", reward=1.0),
    ),
    options_schema=CodeOptions,
)


@hookimpl
def rlsd_verifiers() -> list[VerifierRecord]:
    return [RECORD]
