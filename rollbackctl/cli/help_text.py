"""Help text for every option: what a command gives itself, else the shared meaning of its name here
(an option with no help is a question the on-call cannot answer at 3 a.m.; tests/test_cli_help.py)."""

from __future__ import annotations

import argparse

# (dest, command path prefix) -> help; the longest matching prefix wins, "" matches every command
SHARED: dict[tuple[str, str], str] = {
    ("actor", ""): "who does it: an operator (`rollbackctl operator list`); signed with their key when signing is on",
    ("reason", ""): "why: recorded with the change or decision, in the audit and in the pages",
    ("json", ""): "print JSON (machine-readable) instead of text",
    ("incident", ""): "the incident id it belongs to (its workflow id is derived from it)",
    ("wait", ""): "follow the workflow until it ends, as `status ID --follow` does",
    ("severity", ""): "the decision tree's severity: critical_path_failure, non_critical or data_inconsistency",
    ("scope", ""): "the rollback level: single_module, cross_module or full_system (Level 3, API down)",
    ("name", "switch"): "the switch (`rollbackctl switch list`)",
    ("value", "switch"): "the new value in the switch's type: true/false, 2.5 (or 2.5x), 10000 (or $10,000), "
                         "BTC,ETH, HL_MODE",
    ("name", "operator"): "the operator's name",
    ("role", "operator"): "viewer, on_call, risk_manager or super_admin",
    ("level", "degrade"): "degradation level: 1 partial function, 2 read-only + limited, 3 maintenance (API 503)",
    ("level", "escalate"): "HL down: the degradation level you choose, 2 or 3 (3 needs a super admin)",
    ("id", ""): "a workflow id or an incident id (`rollbackctl status` lists what runs)",
    ("note", "tick"): "a note kept with the checklist item",
    ("phase", "canary"): "phase2 or phase3",
    ("target", "canary"): "a canary's workflow id, or a phase (phase2, phase3) for its running canary",
    ("time_scale", "canary"): "divide the plan's durations by this factor (drills and demos; 1 = the manual's days)",
}


def fill(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> None:
    """Give every option of `parser` and its subcommands without help the shared text for its name."""
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sp in a.choices.items():
                fill(sp, (*path, name))
            continue
        if a.help or isinstance(a, argparse._HelpAction):
            continue
        cmd = " ".join(path)
        best = max(((pre, text) for (dest, pre), text in SHARED.items()
                    if dest == a.dest and cmd.startswith(pre)), key=lambda x: len(x[0]), default=None)
        if best is not None:
            a.help = best[1]


def missing(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[str]:
    """Options without help, as "command: option" (for the test)."""
    out = []
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sp in a.choices.items():
                out += missing(sp, (*path, name))
        elif not a.help and not isinstance(a, argparse._HelpAction):
            out.append(f"{' '.join(path)}: {'/'.join(a.option_strings) or a.dest}")
    return out
