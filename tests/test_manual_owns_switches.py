"""The manual holds every rule: no module outside `manual/` names a switch (issue 15, "the manual leaks").

A switch name written as a string in workflows/, activities/, rollbackctl/, core/, contracts/ or worker.py
is a rule that moved out of the manual: "internalization is coming back" decided from three names in a
workflow, the auto mode switch's thresholds read by name in the monitor. Those places take the names
from `manual/` (its tables, or a named constant there with its reason). Checked on the syntax tree: a
string constant equal to a switch's name, anywhere, including inside f-strings.

Not checked, each for a reason:
- `simulator/`: it is the other end (the trading core), which consumes switches by name as a real core
  does; its contract is the switch matrix itself.
- `rollbackctl/demo*.py`: the demo types commands as a user would (`switch set hedge_max_leverage ...`);
  the names there are keystrokes, not rules.
"""

from __future__ import annotations

import ast
from pathlib import Path

from manual import switches

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ("workflows", "activities", "rollbackctl", "core", "contracts")
NOT_CHECKED = {"rollbackctl/demo.py", "rollbackctl/demo_rollback.py", "rollbackctl/demo_canary.py",
               "rollbackctl/demo_identity.py"}
NAMES = frozenset(s.name for s in switches.SWITCHES)


def _named(source: str, filename: str) -> list[str]:
    """`file:line name` for every string constant in `source` that is a switch's name."""
    out = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in NAMES:
            out.append(f"{filename}:{node.lineno} {node.value}")
    return sorted(out, key=lambda h: int(h.split(":")[1].split()[0]))


def _files() -> list[Path]:
    files = [ROOT / "worker.py"]
    for pkg in CHECKED:
        files += sorted((ROOT / pkg).rglob("*.py"))
    return [p for p in files if str(p.relative_to(ROOT)) not in NOT_CHECKED]


def test_no_switch_is_named_outside_the_manual():
    found = [hit for p in _files() for hit in _named(p.read_text(), str(p.relative_to(ROOT)))]
    assert not found, "switch names outside manual/ (take them from the manual):\n" + "\n".join(found)


def test_the_check_sees_a_switch_named_in_a_workflow():
    # the shape of the leak issue 15 found in workflows/rollback.py, and one inside an f-string
    leak = ('back = restore_to.get("global_betting_enabled") is True\n'
            'msg = f"{x}" + "routing_mode"\n'
            'text = "auto_mode_switch: forced"  # a sentence that mentions a switch is not a rule\n')
    assert _named(leak, "w.py") == ["w.py:1 global_betting_enabled", "w.py:2 routing_mode"]


def test_every_exempt_file_exists():
    # an exemption for a file that was renamed or removed would silently exempt nothing, or hide a new one
    missing = [f for f in NOT_CHECKED if not (ROOT / f).exists()]
    assert not missing, missing
