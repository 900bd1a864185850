"""Layers point one way (docs/architecture.md): an import against the direction, or a cycle, fails here.

    core/          libraries: etcd client, identity, keys, settings, log, watcher, procs, Temporal connection
    contracts/     pure models and ids shared across the boundary (no I/O)
    manual/        the manual as data
    activities/    touch the world   <-   workflows/  decide (calls activities' methods)   simulator/  the stand-in core
    rollbackctl/   the CLI, dev stack and demo (and worker.py)

Every import counts, including those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# package -> the packages it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "contracts": {"core"},
    "manual": {"core", "contracts"},
    "activities": {"core", "contracts", "manual"},
    # Workflows import activity classes (inside imports_passed_through) to call their methods typed,
    # as the house style and samples-python do; activities never import workflows.
    "workflows": {"core", "contracts", "manual", "activities"},
    "simulator": {"core", "contracts", "manual"},
    "rollbackctl": {"core", "contracts", "manual", "activities", "workflows", "simulator"},
    "worker": {"core", "contracts", "manual", "activities", "workflows"},
}
PACKAGES = set(ALLOWED)


def _modules() -> dict[str, Path]:
    out = {"worker": ROOT / "worker.py"}
    for pkg in PACKAGES - {"worker"}:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


def _imports(path: Path, modname: str, known: set[str]) -> set[str]:
    """The project modules `path` imports (absolute and relative, at any depth of the file)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = modname.split(".")[: -node.level] if path.name != "__init__.py" else modname.split(".")[
                    : len(modname.split(".")) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__" and node.args \
                and isinstance(node.args[0], ast.Constant):
            names = [node.args[0].value]
        else:
            continue
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n and n != modname:
                found.add(n)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(p, m, set(mods)) for m, p in mods.items()}


def _against(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for m, deps in sorted(graph.items()):
        top = m.split(".")[0]
        for d in sorted(deps):
            dtop = d.split(".")[0]
            if dtop != top and dtop not in ALLOWED[top]:
                bad.append(f"{m} imports {d} ({top} may import only {sorted(ALLOWED[top]) or 'nothing of ours'})")
    return bad


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_imports_point_one_way():
    assert _against(_graph()) == []


def test_no_import_cycles():
    # A package importing its own __init__ (re-exports) is not a cycle worth failing on; modules are.
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in _graph().items()}
    assert _cycles(graph) == []


def test_the_checker_sees_an_import_against_the_direction(tmp_path):
    """The checker itself: a lazy import of a workflow inside an activity, and a cycle, are found."""
    graph = {
        "activities.x": {"workflows.y"},  # against the direction (and hidden inside a function below)
        "workflows.y": {"contracts.z"},
        "contracts.z": set(),
        "activities.a": {"activities.b"},
        "activities.b": {"activities.a"},
    }
    assert _against(graph) == ["activities.x imports workflows.y (activities may import only "
                               "['contracts', 'core', 'manual'])"]
    assert _cycles(graph) == [["activities.a", "activities.b"]]
    src = tmp_path / "x.py"
    src.write_text("def f():\n    from workflows.y import Thing\n")
    assert _imports(src, "activities.x", {"activities.x", "workflows.y"}) == {"workflows.y"}


def _test_module_imports() -> list[str]:
    """Test modules that import another test module (helpers belong in tests/support/)."""
    tests = ROOT / "tests"
    mods = {".".join(p.relative_to(ROOT).with_suffix("").parts): p for p in tests.rglob("test_*.py")}
    bad = []
    for m, p in sorted(mods.items()):
        for d in sorted(_imports(p, m, set(mods))):
            bad.append(f"{m} imports {d}")
    return bad


def test_tests_take_helpers_from_tests_support_only():
    """One helpers package: a test module imports tests/support/, never another test module (which
    would also make pytest's collection and fixtures depend on import order)."""
    assert _test_module_imports() == []


def _wait_for_calls(paths) -> list[str]:
    """`asyncio.wait_for(...)` calls: on Python 3.11 it can lose a cancellation (core/aio.py)."""
    bad = []
    for p in paths:
        for node in ast.walk(ast.parse(p.read_text(), filename=str(p))):
            f = node.func if isinstance(node, ast.Call) else None
            if isinstance(f, ast.Attribute) and f.attr == "wait_for" and getattr(f.value, "id", None) == "asyncio":
                bad.append(f"{p.relative_to(ROOT) if p.is_relative_to(ROOT) else p.name}:{node.lineno}")
    return bad


def test_the_product_never_times_out_with_asyncio_wait_for(tmp_path):
    """A monitor cancelled as its read completed went on polling (CI, stop 29): 3.11's wait_for returned
    the read and dropped the cancellation (CPython gh-86296). core/aio.py's `within` and `wait_set`
    are built on asyncio.timeout, which keeps it."""
    product = [ROOT / "worker.py", *(p for pkg in (*PACKAGES - {"worker"}, "bench") for p in (ROOT / pkg).rglob("*.py"))]
    assert _wait_for_calls(product) == []
    seen = tmp_path / "x.py"
    seen.write_text("import asyncio\nasync def f(e):\n    await asyncio.wait_for(e.wait(), 1)\n")
    assert _wait_for_calls([seen]) == ["x.py:3"]
