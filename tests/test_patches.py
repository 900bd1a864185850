"""Every patch a workflow asks about is decided in its run's first activation (workflows/base.patches_first),
so no patch is first asked after a local activity's result, where a replay can answer it differently from
the run (the reason is in patches_first's docstring). Read from the source: a new `workflow.patched` call
that patches_first does not decide fails here, before a replay somewhere fails on it."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from workflows import base

WORKFLOWS = Path(__file__).parent.parent / "workflows"
ASKED_FIRST = {base.PAGER_OUTBOX, "flip-first", base.PATCHES_FIRST}  # asked at the top of `run`, before any await


def _value(mod, node: ast.expr) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return getattr(mod, node.id)
    raise AssertionError(f"{mod.__name__}: a patch id that is neither a literal nor a module name: {ast.dump(node)}")


def _calls(name: str):
    for path in sorted(WORKFLOWS.glob("*.py")):
        mod = importlib.import_module(f"workflows.{path.stem}")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                called = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                if called == name:
                    yield path.stem, mod, node


def test_every_patch_asked_is_decided_first():
    decided = set(base.RUNNER_PATCHES) | ASKED_FIRST
    for _, mod, call in _calls("patches_first"):
        decided |= {_value(mod, a) for a in call.args}
    asked = {(stem, _value(mod, call.args[0])) for stem, mod, call in _calls("patched")
             if not (stem == "base" and isinstance(call.args[0], ast.Name) and call.args[0].id == "name")}
    assert len(asked) >= 15, asked
    missing = sorted((stem, p) for stem, p in asked if p not in decided)
    assert not missing, f"patches asked but not decided by patches_first: {missing}"


def test_every_workflow_with_a_run_decides_its_patches_first():
    runs = {stem for stem, _, _ in _calls("patched")} - {"base", "runner", "gate", "gateway"}
    firsts = {stem for stem, _, _ in _calls("patches_first")} - {"base"}
    assert runs <= firsts, sorted(runs - firsts)
