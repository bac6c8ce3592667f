"""The house rules of docs/architecture.md, checked on the source (AST, nothing imported):

- no import cycle between the modules of rlsd_core, rlsd_plugins and rlsd_verifiers, counting
  imports inside functions too (a cycle hidden in a function is still a cycle);
- built-in plugins import only what a third-party plugin can: the public contract at the root of
  `rlsd_core` and the public maths `rlsd_core.algo`; nobody imports a private (underscore) name
  across packages, and bench/ uses public names only;
- the loop's functions stay short enough to read (about 60 lines).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"rlsd_core": ROOT / "rlsd_core", "rlsd_plugins": ROOT / "plugins" / "rlsd_plugins",
            "rlsd_verifiers": ROOT / "verifiers" / "rlsd_verifiers"}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg, base in PACKAGES.items():
        for path in base.rglob("*.py"):
            parts = [pkg, *path.relative_to(base).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names imported from it, line) for every import in the file."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((mod, [a.name for a in node.names], node.lineno))
    return out


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for name, path in MODULES.items():
        for mod, names, _line in _imports(name, path):
            targets = [f"{mod}.{n}" for n in names if f"{mod}.{n}" in MODULES] or [mod]
            for t in targets:
                while t and t not in MODULES:  # `import a.b.c` of a non-module attribute
                    t = t.rpartition(".")[0]
                if t and t != name:
                    graph[name].add(t)
    return graph


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("pkg", ["rlsd_plugins", "rlsd_verifiers"])
def test_built_in_plugins_import_only_the_public_contract(pkg):
    bad = []
    for name, path in MODULES.items():
        if not name.startswith(pkg):
            continue
        for mod, names, line in _imports(name, path):
            if mod.startswith("rlsd_core") and mod not in ("rlsd_core", "rlsd_core.algo"):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod}")
            if mod.split(".")[0] in PACKAGES and mod.split(".")[0] != pkg:
                bad += [f"{path.relative_to(ROOT)}:{line} imports private {mod}.{n}"
                        for n in names if n.startswith("_")]
    assert not bad, "\n".join(bad)


def test_no_private_names_cross_packages_or_reach_bench():
    bad = []
    files = [(n, p) for n, p in MODULES.items()] + [
        (f"bench.{p.stem}", p) for p in (ROOT / "bench").glob("*.py")]
    for name, path in files:
        here = name.split(".")[0]
        for mod, names, line in _imports(name, path):
            top = mod.split(".")[0]
            if top in PACKAGES and top != here:
                private = [n for n in names if n.startswith("_")]
                private += [p for p in mod.split(".") if p.startswith("_")]
                bad += [f"{path.relative_to(ROOT)}:{line} imports {mod}: {n}" for n in private]
    assert not bad, "\n".join(bad)


def test_loop_functions_are_short():
    long = []
    for name, path in MODULES.items():
        if not name.startswith("rlsd_core.loop"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 65:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} is {n} lines")
    assert not long, "\n".join(long)
