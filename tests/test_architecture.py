"""The layer contract (docs/design.md): imports point down the layers only, no module takes part in an import
loop, and a function-local import of slmkit is rare and says why. `make lint` runs the same contract through
import-linter (`lint-imports`, configured in pyproject.toml)."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import grimp

import slmkit

SRC = Path(slmkit.__file__).parent
MAX_LOCAL_IMPORTS = 20
LAYERS = ["cli", "ship|study", "engine", "runs", "data", "model", "base"]  # top to bottom, as pyproject.toml


def _graph():
    return grimp.build_graph("slmkit", cache_dir=None)


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None
    for i, names in enumerate(LAYERS):
        if parts[1] in names.split("|"):
            return i
    return None


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    return out


def test_no_import_loops():
    cycles = _cycles(_graph())
    assert not cycles, f"import loops: {cycles}"


def test_imports_point_down_the_layers():
    graph = _graph()
    upward = []
    for m in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(m):
            a, b = _layer(m), _layer(imported)
            if a is not None and b is not None and b < a:
                upward.append(f"{m} -> {imported}")
            if a is not None and b is not None and a == b and LAYERS[a] == "ship|study":
                if m.split(".")[1] != imported.split(".")[1]:
                    upward.append(f"{m} -> {imported} (ship and study are independent)")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_nothing_imports_the_cli():
    graph = _graph()
    importers = {m for cli in graph.find_children("slmkit.cli") | {"slmkit.cli"}
                 for m in graph.find_modules_that_directly_import(cli)}  # fmt: skip
    assert {m for m in importers if not m.startswith("slmkit.cli")} <= {"slmkit.__main__"}


def _local_imports() -> list[tuple[str, int, str]]:
    """(file, line, source line) of each `import slmkit...` inside a function."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        lines = text.splitlines()
        for fn in ast.walk(ast.parse(text)):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if any(n.startswith("slmkit") for n in names):
                    found.append((str(path.relative_to(SRC)), node.lineno, lines[node.lineno - 1]))
    return found


def test_function_local_imports_are_few_and_say_why():
    found = _local_imports()
    assert len(found) < MAX_LOCAL_IMPORTS, "\n".join(f"{f}:{n}: {s}" for f, n, s in found)
    silent = [f"{f}:{n}: {s.strip()}" for f, n, s in found if "#" not in s]
    assert not silent, "function-local imports without a comment saying why:\n" + "\n".join(silent)


def test_every_module_imports():
    for info in pkgutil.walk_packages(slmkit.__path__, "slmkit."):
        if info.name != "slmkit.__main__":
            importlib.import_module(info.name)
