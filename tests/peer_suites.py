"""Labeled math-grading rows taken from other projects' test suites ("peer suites").

A verifier that scores 100% on the cases its own authors wrote can still be tuned to them; these
rows were written by other people for their own graders, so they test how rlsd reads answers it
was not written against. Each peer is a pinned source distribution on PyPI (the only registry
CI can reach), checked by sha256, and its test files are *read* with `ast` (never imported or
executed): every `@pytest.mark.parametrize` table (or, for tinker-cookbook, a few known test
shapes) becomes rows of

    {"source": peer, "origin": "file::test[i]", "completion": ..., "gold": ..., "expected": bool,
     "settings": {...}}

Peers and licences (both permit redistribution with attribution; tests/data/peers/NOTICE):
- math-verify 0.9.0 (huggingface/Math-Verify; Apache-2.0, its tests/test_all.py carries an MIT
  header): gold/prediction/expected tables. Kept: rows at Math-Verify's default comparison
  settings (float_rounding 6, strict, no set-relation comparison); dropped: the tests that
  switch those off (test_strict, test_set_rel_assymetry, precision 2 or 5) and rows built with
  f-strings (not literals). The extraction targets a test used are recorded in `settings`.
- tinker-cookbook 0.6.1 (thinking-machines-lab; Apache-2.0): its math grading and numeric
  answer tests (answer extraction from completions, grade_answer pairs).

The rows are frozen in tests/data/peers/*.jsonl so that the test suite needs no network;
`python tests/peer_suites.py` downloads the pinned sdists (pip, into ~/.cache/rlsd/peers) and
rewrites the files; `python tests/peer_suites.py --fetch` only downloads them (scripts/test.sh
does this while it installs, so the tests themselves never reach the network), and a test checks
that a fresh build from the downloaded sdists equals the committed files.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "peers")
CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "rlsd", "peers")


@dataclass(frozen=True)
class Sdist:
    name: str
    version: str
    sha256: str
    licence: str

    @property
    def filename(self) -> str:
        return f"{self.name.replace('-', '_')}-{self.version}.tar.gz"


PEERS = {
    "math-verify": Sdist("math-verify", "0.9.0",
                         "45ac6c61344ba056b9e99a660a4bc8d044ed408f730aed68c60435aa5eec4645",
                         "Apache-2.0 (tests/test_all.py: MIT), Copyright The HuggingFace Team"),
    "tinker-cookbook": Sdist("tinker-cookbook", "0.6.1",
                             "edf66f0a4b2c3b375b9328a4d748a3dae104170bb2bcde0d156f0b22de7a1aa3",
                             "Apache-2.0, Copyright Thinking Machines Lab"),
}


# ------------------------------------------------------------------------------ fetching
def fetch(peer: Sdist, *, download: bool = True) -> bytes:
    """The sdist's bytes, from the cache or (download=True) from PyPI through pip;
    sha256-checked. FileNotFoundError when it is not cached and download is False."""
    path = os.path.join(CACHE_DIR, peer.filename)
    if not os.path.exists(path):
        if not download:
            raise FileNotFoundError(f"{path} is not downloaded: python tests/peer_suites.py --fetch")
        os.makedirs(CACHE_DIR, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--no-binary", ":all:", f"{peer.name}=={peer.version}", "-d", CACHE_DIR],
                       check=True, capture_output=True, timeout=600)
    with open(path, "rb") as fh:
        data = fh.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != peer.sha256:
        raise RuntimeError(f"{peer.filename}: sha256 {digest} is not the pinned {peer.sha256}")
    return data


def _files(data: bytes, wanted) -> dict[str, str]:
    """{path inside the package: text} for the members `wanted(path)` accepts."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            rel = member.name.split("/", 1)[1] if "/" in member.name else member.name
            if member.isfile() and wanted(rel):
                out[rel] = tar.extractfile(member).read().decode("utf-8")
    return out


# ------------------------------------------------------------------- reading test sources
def _parametrize_tables(source: str):
    """(function name, argument names, [row tuples], {keyword: literal} of the graded call) for
    every parametrize table whose rows are all literals."""
    tree = ast.parse(source)
    for fn in tree.body:
        if not isinstance(fn, ast.FunctionDef):
            continue
        for dec in fn.decorator_list:
            if not (isinstance(dec, ast.Call) and getattr(dec.func, "attr", "") == "parametrize"):
                continue
            names = ast.literal_eval(dec.args[0])
            if isinstance(names, str):
                names = [n.strip() for n in names.split(",")]
            try:
                rows = ast.literal_eval(dec.args[1])
            except ValueError:
                continue  # built with f-strings or calls: not a literal table
            kwargs = {}
            for node in ast.walk(fn):
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("compare_strings",
                                                                                   "verify"):
                    for kw in node.keywords:
                        try:
                            kwargs[kw.arg] = ast.literal_eval(kw.value)
                        except ValueError:
                            kwargs[kw.arg] = ast.unparse(kw.value)  # a parameter name
            yield fn.name, list(names), rows, kwargs


_MV_DEFAULTS = {"precision": 6, "strict": True, "allow_set_relation_comp": False}


def math_verify_rows(data: bytes) -> list[dict]:
    files = _files(data, lambda p: p.startswith("tests/test_") and p.endswith(".py"))
    out = []
    for path in sorted(files):
        for fn, names, rows, kwargs in _parametrize_tables(files[path]):
            if "gold" not in names or "pred" not in names:
                continue  # string-extraction configs, not gold/prediction pairs
            for i, row in enumerate(rows):
                r = dict(zip(names, row))
                settings = {k: (r[v] if isinstance(v, str) and v in r else v)
                            for k, v in kwargs.items()}
                if any(settings.get(k, d) != d for k, d in _MV_DEFAULTS.items()):
                    continue
                expected = r.get("expected", r.get("result"))
                out.append({"source": "math-verify", "origin": f"{path}::{fn}[{i}]",
                            "completion": r["pred"], "gold": r["gold"], "expected": bool(expected),
                            "settings": {"match_types": settings.get("match_types",
                                                                     ["latex", "expr"])}})
    return out


def _asserts(fn: ast.FunctionDef):
    for node in ast.walk(fn):
        if isinstance(node, ast.Assert):
            yield node.test


def _literal(node):
    try:
        return True, ast.literal_eval(node)
    except ValueError:
        return False, None


def tinker_rows(data: bytes) -> list[dict]:
    """tinker-cookbook's answer-grading tests, read by shape:
    - `assert extract_*(TEXT) == ANSWER` (a completion and the answer a grader must read from
      it): a row (TEXT, gold ANSWER, expected True);
    - `assert grade_answer(GIVEN, TRUTH) is True/False`: (GIVEN, TRUTH, expected);
    - numeric_grading_test.py's parametrized tables, expanded as the tests use them (a response
      must score its stated answer and not a different one; AIME's integer rule).
    """
    files = _files(data, lambda p: p.endswith(("math_env_test.py", "numeric_grading_test.py")))
    out = []

    def add(path, fn, i, completion, gold, expected):
        out.append({"source": "tinker-cookbook", "origin": f"{path}::{fn}[{i}]",
                    "completion": completion, "gold": str(gold), "expected": bool(expected),
                    "settings": {}})

    for path in sorted(files):
        tree = ast.parse(files[path])
        for cls_or_fn in tree.body:
            fns = [cls_or_fn] if isinstance(cls_or_fn, ast.FunctionDef) else [
                n for n in getattr(cls_or_fn, "body", []) if isinstance(n, ast.FunctionDef)]
            for fn in fns:
                i = 0
                local = {}  # `text = "..."` before `assert extract(text) == ...`
                for node in ast.walk(fn):
                    if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                            isinstance(node.targets[0], ast.Name):
                        ok, value = _literal(node.value)
                        if ok:
                            local[node.targets[0].id] = value
                for test in _asserts(fn):
                    if not (isinstance(test, ast.Compare) and isinstance(test.left, ast.Call)):
                        continue
                    call = test.left
                    name = getattr(call.func, "id", "")
                    ok_args = [(True, local[a.id]) if isinstance(a, ast.Name) and a.id in local
                               else _literal(a) for a in call.args]
                    if not all(ok for ok, _ in ok_args):
                        continue
                    args = [v for _, v in ok_args]
                    ok_rhs, rhs = _literal(test.comparators[0])
                    if not ok_rhs:
                        continue
                    if "extract_" in name and isinstance(test.ops[0], ast.Eq) and \
                            rhs not in (None, "", []):
                        add(path, fn.name, i, args[0], rhs, True)
                        i += 1
                    elif name == "grade_answer" and isinstance(test.ops[0], ast.Is) and \
                            isinstance(args[0], str):
                        add(path, fn.name, i, args[0], args[1], rhs)
                        i += 1
        if path.endswith("numeric_grading_test.py"):
            for fn, names, rows, _ in _parametrize_tables(files[path]):
                if names == ["response", "expected", "reward"]:  # AIME: integer answers
                    for i, (response, expected, reward) in enumerate(rows):
                        # AIME's env also refuses integers outside 0-999 whatever the text says:
                        # a rule of that task, not a reading of the answer.
                        if 0 <= expected <= 999:
                            add(path, fn, i, response, expected, reward)
                elif names == ["response", "expected"]:  # the stated answer, and not "2"
                    for i, (response, expected) in enumerate(rows):
                        add(path, fn, 2 * i, response, expected, True)
                        add(path, fn, 2 * i + 1, response, "2", False)
                elif names == ["response"]:
                    for i, response in enumerate(rows):  # one name: the rows are bare values
                        add(path, fn, 2 * i, response, "123", True)
                        add(path, fn, 2 * i + 1, response, "2", False)
            # test_answer_statement_sentence_period: two stacked tables, expanded as its body does
            tables = {tuple(names): rows for _, names, rows, _ in _parametrize_tables(files[path])
                      if len(names) == 1}
            answers, markers = tables.get(("answer",)), tables.get(("marker",))
            if answers and markers:
                i = 0
                for marker in markers:
                    for answer in answers:
                        plain = answer.replace(",", "")
                        add(path, "test_answer_statement_sentence_period", i,
                            f"{marker}{answer}.", plain, True)
                        add(path, "test_answer_statement_sentence_period", i + 1,
                            f"{marker}{answer}.", repr(float(plain) + 1), False)
                        i += 2
    return out


BUILDERS = {"math-verify": math_verify_rows, "tinker-cookbook": tinker_rows}


def build(peer: str, *, download: bool = True) -> list[dict]:
    return BUILDERS[peer](fetch(PEERS[peer], download=download))


def path_for(peer: str) -> str:
    return os.path.join(DATA_DIR, f"{peer}.jsonl")


def dumps(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)


# Labels that are mathematically wrong, by origin, with the reason. The frozen rows keep the
# peer's label (they must equal a fresh build); `with_errata` gives the corrected view, which
# bench/verifiers.py reports beside the labeled one (never instead of it).
ERRATA = {
    "tests/test_yujianll.py::test_string_extraction[9]":
        "labelled equivalent, but 1 + 1/e - (1 - 1/e) = 2/e != 0",
}


def with_errata(rows: list[dict]) -> list[dict]:
    """`rows` with every ERRATA label flipped (and the reason in `erratum`)."""
    return [{**r, "expected": not r["expected"], "erratum": ERRATA[r["origin"]]}
            if r.get("origin") in ERRATA else r for r in rows]


def load(peer: str | None = None) -> list[dict]:
    """The frozen rows of one peer, or of all peers."""
    out = []
    for name in ([peer] if peer else sorted(PEERS)):
        with open(path_for(name), encoding="utf-8") as fh:
            out += [json.loads(line) for line in fh if line.strip()]
    return out


if __name__ == "__main__":
    if sys.argv[1:] == ["--fetch"]:
        for name in sorted(PEERS):
            fetch(PEERS[name])
        sys.exit(0)
    os.makedirs(DATA_DIR, exist_ok=True)
    for name in sorted(PEERS):
        rows = build(name)
        with open(path_for(name), "w", encoding="utf-8") as fh:
            fh.write(dumps(rows))
        print(f"{name}: {len(rows)} rows ({sum(r['expected'] for r in rows)} equivalent) -> "
              f"{os.path.relpath(path_for(name))}")
