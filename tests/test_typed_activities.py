"""Workflows call activities by reference, not by name: the SDK then checks the argument against the
activity's signature and decodes the answer as its declared model (`execute_activity_method`, as in
temporalio/samples-python). A call by name takes any dict and returns whatever the activity sent.

The only calls left by name are listed below with why: the SDK ignores `result_type` when given a
method (it takes the method's return type), and histories recorded before the pager outbox hold
answers that today's result models do not decode, so those two are read as dicts.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CALLS = {"execute_activity", "execute_local_activity", "start_activity", "start_local_activity",
         "execute_activity_method", "execute_local_activity_method",
         "start_activity_method", "start_local_activity_method"}
# (file, activity name): why it stays a call by name
BY_NAME = {
    ("workflows/alerting.py", "paging.chat"): "pre-outbox histories: the answer is read as a dict",
    ("workflows/alerting.py", "paging.page"): "pre-outbox histories: the answer is read as a dict",
}


def _calls_by_name() -> list[tuple[str, str, int]]:
    found = []
    for path in sorted((ROOT / "workflows").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in CALLS and node.args):
                continue
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.append((rel, first.value, node.lineno))
            elif isinstance(first, ast.JoinedStr):
                found.append((rel, "<f-string>", node.lineno))
    return found


def test_workflows_call_activities_by_reference():
    loose = [f"{f}:{line} calls {name!r} by name" for f, name, line in _calls_by_name() if (f, name) not in BY_NAME]
    assert not loose, "call the activity's method instead (workflow.execute_activity_method):\n" + "\n".join(loose)


def test_every_exemption_is_still_needed():
    left = {(f, name) for f, name, _ in _calls_by_name()}
    assert set(BY_NAME) <= left, f"exempt but no longer called by name: {set(BY_NAME) - left}"
