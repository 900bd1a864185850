"""The patch ids workflows/ asks about, read from the source (one reader for tests/test_patches.py and
tests/test_replay.py): each `workflow.patched` / `workflow.deprecate_patch` call and each `patches_first`
call, with its ids resolved from a literal or the module's constant."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

WORKFLOWS = Path(__file__).parent.parent.parent / "workflows"


def value(mod, node: ast.expr) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return getattr(mod, node.id)
    raise AssertionError(f"{mod.__name__}: a patch id that is neither a literal nor a module name: {ast.dump(node)}")


def calls(*names: str):
    """(module stem, module, call node) for each call of a function or method named one of `names`."""
    for path in sorted(WORKFLOWS.glob("*.py")):
        mod = importlib.import_module(f"workflows.{path.stem}")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                if (f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)) in names:
                    yield path.stem, mod, node


def asked() -> set[tuple[str, str]]:
    """(module stem, id) for every patch asked by id. base.patches_first's own loop asks the others' ids
    through a variable; those are the ids its callers pass (decided())."""
    return {(stem, value(mod, c.args[0])) for stem, mod, c in calls("patched", "deprecate_patch")
            if not (stem == "base" and isinstance(c.args[0], ast.Name) and c.args[0].id == "name")}


def decided_first() -> set[str]:
    """The ids patches_first decides: the runner's shared ones and each workflow's own."""
    from workflows import base

    out = set(base.RUNNER_PATCHES)
    for _, mod, c in calls("patches_first"):
        out |= {value(mod, a) for a in c.args}
    return out
