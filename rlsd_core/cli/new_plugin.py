"""`rlsd new-plugin verifier|injector|scheduler NAME`: write a plugin package that installs with
pip and passes `rlsd plugins check` as generated, for the author to make their own.

    rlsd-NAME/
      pyproject.toml        the distribution, its `rlsd` entry point, a `test` extra
      rlsd_NAME/__init__.py the record, its function, its examples, RLSD_API
      tests/test_NAME.py    the one-line conformance battery and a first unit test
      README.md             install, test, check, and where to go next

The templates are small working plugins (a last-line verifier, a hint injector, a linear-decay
scheduler), each with `examples` so that every property of its battery is checked.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from string import Template

from ..hookspecs import API_VERSION

KINDS = ("verifier", "injector", "scheduler")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class ScaffoldError(ValueError):
    """The plugin cannot be written as asked (bad name, existing directory, taken name)."""


PYPROJECT = Template('''\
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "rlsd-$dist"
version = "0.1.0"
description = "An rlsd $kind plugin: $name."
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["rlsd"]

[project.optional-dependencies]
test = ["pytest>=8"]

# rlsd finds plugins through this entry-point group: this table is the whole integration.
[project.entry-points.rlsd]
$name = "$package"

[tool.setuptools]
packages = ["$package"]
''')

HEADER = Template('''\
"""$title

Written by `rlsd new-plugin $kind $name`; the contract of a $kind is in rlsd's
docs/plugin-hooks.md, the conformance battery in docs/writing-a-plugin.md.
"""

from __future__ import annotations

''')

MODULES = {
    "verifier": Template('''\
from rlsd_core import Category, Example, Verdict, VerifierRecord, hookimpl

# The plugin API range this plugin is written for (docs/plugin-api.md).
RLSD_API = ">=$api,<$next_major"


def score_one(completion: str, row) -> Verdict:
    """The last non-empty line of the completion is the answer; it must equal `row["answer"]`
    (case and surrounding spaces ignored)."""
    lines = [line.strip() for line in completion.splitlines() if line.strip()]
    if not lines:
        return Verdict.fail(Category.NO_ANSWER, "no answer found")
    answer, gold = lines[-1], str(row["answer"]).strip()
    if answer.lower() == gold.lower():
        return Verdict.ok(answer=answer)
    shown = answer if len(answer) <= 60 else answer[:57] + "..."
    return Verdict.fail(Category.WRONG_ANSWER, f"expected {gold!r}, got {shown!r}", answer=answer)


def score(completions, rows, **options):
    """One verdict per completion, in order (rlsd may call it with any batch size)."""
    return [score_one(c, r) for c, r in zip(completions, rows)]


EXAMPLES = (
    Example(row={"answer": "42"}, completion="Six times seven.\\n42", reward=1.0),
    Example(row={"answer": "42"}, completion="Six times seven.\\n41", reward=0.0),
    Example(row={"answer": "Paris"}, completion="paris", reward=1.0),
)


@hookimpl
def rlsd_verifiers():
    return [VerifierRecord(
        name="$name", fn=score, columns=("answer",), version="0.1.0",
        description="The last line of the completion equals the row's answer.",
        in_process=True, time_budget_s=1.0, examples=EXAMPLES)]
'''),
    "injector": Template('''\
from rlsd_core import Example, InjectorRecord, hookimpl

# The plugin API range this plugin is written for (docs/plugin-api.md).
RLSD_API = ">=$api,<$next_major"

DEFAULT_MAX_HINT_TOKENS = 256


def _budgeted(text: str, ctx) -> str:
    """At most ctx.options["max_hint_tokens"] tokens of `text`, counted with the policy's
    tokenizer when the loop provides one (4 characters per token otherwise)."""
    budget = int(ctx.options.get("max_hint_tokens", DEFAULT_MAX_HINT_TOKENS))
    if ctx.truncate_tokens is not None:
        return ctx.truncate_tokens(text, budget)
    return text[: 4 * budget]


def add_hint(row, student_messages, ctx):
    """The student's messages with the row's answer added to the last user message as a hint.
    New dicts: the student's messages must never be modified."""
    messages = [dict(m) for m in student_messages]
    last = max(i for i, m in enumerate(messages) if m.get("role") == "user")
    hint = "\\n\\nHint: the answer is " + _budgeted(str(row["answer"]), ctx)
    content = messages[last]["content"]
    if isinstance(content, str):
        messages[last]["content"] = content + hint
    else:  # a list of parts (text, images): add a text part
        messages[last]["content"] = list(content) + [{"type": "text", "text": hint}]
    return messages


EXAMPLES = (
    Example(row={"prompt": "What is 6 * 7?", "answer": "42"}),
    Example(row={"prompt": "Capital of France?", "answer": "Paris"}),
)


@hookimpl
def rlsd_injectors():
    return [InjectorRecord(
        name="$name", fn=add_hint, columns=("answer",), version="0.1.0",
        description="The row's answer as a hint after the question.", examples=EXAMPLES)]
'''),
    "scheduler": Template('''\
from rlsd_core import Magnitude, SchedulerRecord, hookimpl

# The plugin API range this plugin is written for (docs/plugin-api.md).
RLSD_API = ">=$api,<$next_major"


class LinearDecay:
    """lambda falls linearly from lam0 at step 1 to 0 at step 1 + steps; eps_w is constant.
    A pure function of the step: its state is its options, checked on load so that a resume
    with different options fails loudly."""

    def __init__(self, lam0: float = 0.5, steps: int = 50, eps_w: float = 0.2) -> None:
        if not 0.0 <= lam0 <= 1.0:
            raise ValueError(f"lam0 must be in [0, 1], got {lam0!r}")
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        if not 0.0 <= eps_w < 1.0:
            raise ValueError(f"eps_w must be in [0, 1), got {eps_w!r}")
        self.lam0, self.steps, self.eps_w = float(lam0), steps, float(eps_w)

    def __call__(self, step, diagnostics=None) -> Magnitude:
        return Magnitude(self.lam0 * max(0.0, 1.0 - (step - 1) / self.steps), self.eps_w)

    def state_dict(self) -> dict:
        return {"lam0": self.lam0, "steps": self.steps, "eps_w": self.eps_w}

    def load_state_dict(self, state) -> None:
        if dict(state) != self.state_dict():
            raise ValueError(f"cannot resume $name {self.state_dict()} from {dict(state)}")


@hookimpl
def rlsd_schedulers():
    return [SchedulerRecord(name="$name", fn=LinearDecay, version="0.1.0",
                            description="lambda from lam0 to 0 over `steps` steps.")]
'''),
}

TESTS = {
    "verifier": Template('''\
"""The conformance battery (one test per property) and the plugin's own rules."""

from rlsd_core import Category
from rlsd_core.testing import verifier_conformance

from $package import score_one

test_conformance = verifier_conformance(
    "$name", good=[("I think\\nSeven", {"answer": "seven"})],
    bad=[("", {"answer": "seven"}), ("Seven\\nor eight", {"answer": "seven"})])


def test_last_line_is_the_answer():
    assert score_one("first 7\\nthen 8\\n8", {"answer": "8"}).category == Category.OK
    assert score_one("8\\nno, 7", {"answer": "8"}).category == Category.WRONG_ANSWER
'''),
    "injector": Template('''\
"""The conformance battery (one test per property) and the plugin's own rules."""

from rlsd_core import InjectorContext
from rlsd_core.testing import injector_conformance

from $package import add_hint

test_conformance = injector_conformance("$name", rows=[{"prompt": "2 + 2?", "answer": "4"}])


def test_hint_follows_the_question():
    student = [{"role": "user", "content": "2 + 2?"}]
    teacher = add_hint({"answer": "4"}, student, InjectorContext())
    assert teacher[-1]["content"].endswith("Hint: the answer is 4")
    assert student == [{"role": "user", "content": "2 + 2?"}]
'''),
    "scheduler": Template('''\
"""The conformance battery (one test per property) and the plugin's own rules."""

from rlsd_core.testing import scheduler_conformance

from $package import LinearDecay

test_conformance = scheduler_conformance("$name", options={"lam0": 0.4, "steps": 10})


def test_decays_to_zero():
    sched = LinearDecay(lam0=0.4, steps=10)
    assert sched(1, None).lam == 0.4 and sched(11, None).lam == 0.0
'''),
}

README = Template('''\
# rlsd-$dist

An rlsd $kind plugin: `$name`. Written by `rlsd new-plugin $kind $name`.

```bash
pip install -e ".[test]"       # rlsd finds it through its `rlsd` entry point
rlsd plugins                   # lists $name
rlsd plugins check $name       # the conformance battery: a table of properties
python -m pytest tests         # the same battery as tests, and the plugin's own
```

Make it yours: change the function in `$package/__init__.py`, keep `examples`
up to date (the battery scores them), and run the two commands above. The contract of a
$kind is in rlsd's docs/plugin-hooks.md; the battery's properties in docs/writing-a-plugin.md;
`RLSD_API` is explained in docs/plugin-api.md.
''')

TITLES = {"verifier": "An rlsd verifier: scores completions against the row's answer.",
          "injector": "An rlsd injector: what the self-teacher sees that the student does not.",
          "scheduler": "An rlsd magnitude scheduler: lambda and eps_w for each step."}


def files_for(kind: str, name: str) -> dict[str, str]:
    """Relative path -> text of the package for a `kind` plugin called `name`."""
    if kind not in KINDS:
        raise ScaffoldError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not _NAME_RE.match(name):
        raise ScaffoldError(f"NAME must be lower-case letters, digits and '_', starting with a "
                            f"letter (it becomes the record name and rlsd_{name}), got {name!r}")
    major = int(API_VERSION.split(".")[0])
    fields = {"kind": kind, "name": name, "dist": name.replace("_", "-"),
              "package": f"rlsd_{name}", "api": API_VERSION, "next_major": str(major + 1),
              "title": TITLES[kind]}
    return {
        "pyproject.toml": PYPROJECT.substitute(fields),
        f"rlsd_{name}/__init__.py": HEADER.substitute(fields) + MODULES[kind].substitute(fields),
        f"tests/test_{name}.py": TESTS[kind].substitute(fields),
        "README.md": README.substitute(fields),
    }


def write_plugin(kind: str, name: str, parent: Path, *, force: bool = False) -> Path:
    """Write the package under parent/rlsd-<name>; return its directory."""
    files = files_for(kind, name)
    root = parent / f"rlsd-{name.replace('_', '-')}"
    if root.exists() and any(root.iterdir()) and not force:
        raise ScaffoldError(f"{root} already exists and is not empty; pick another --dir or "
                            f"pass --force to overwrite its files")
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def _taken(kind: str, name: str) -> str | None:
    """The distribution that already provides a `kind` named `name`, if any."""
    from ..plugins import get_plugin_manager

    table = get_plugin_manager().registry.by_kind[kind]
    return str(table[name].origin) if name in table else None


def run_new_plugin(args: argparse.Namespace) -> int:
    try:
        files_for(args.kind, args.name)  # the name is checked before anything is loaded
        taken = _taken(args.kind, args.name)
        if taken and not args.force:
            raise ScaffoldError(f"a {args.kind} named {args.name!r} is already installed ({taken}); "
                                f"two plugins may not share a name: pick another, or --force")
        root = write_plugin(args.kind, args.name, Path(args.dir), force=args.force)
    except (ScaffoldError, OSError) as exc:
        print(f"rlsd new-plugin: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {root}/\n"
          f"next:\n  pip install -e '{root}[test]'\n  rlsd plugins check {args.name}\n"
          f"  python -m pytest {root}/tests")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "new-plugin", help="write a plugin package (verifier, injector or scheduler) to start from",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=KINDS, help="what the plugin provides")
    p.add_argument("name", metavar="NAME", help="the record name (lower case, e.g. my_checker); "
                                                "the package is rlsd_NAME, the distribution rlsd-NAME")
    p.add_argument("--dir", default=".", help="where to create rlsd-NAME/ (default: here)")
    p.add_argument("--force", action="store_true", help="overwrite an existing directory's files")
    p.set_defaults(func=run_new_plugin)
