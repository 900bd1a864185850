"""Every option of every command says what it is for (`--help` is the on-call's manual at 3 a.m.), and
`--version` says which rollbackctl runs."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from rollbackctl.cli import build_parser
from rollbackctl.cli.help_text import missing


def test_every_option_of_every_command_has_help():
    assert missing(build_parser()) == []


def test_the_shared_help_says_what_an_option_means_for_its_command():
    p = build_parser()
    sub = next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction").choices
    helps = {a.dest: a.help for a in sub["degrade"]._actions}
    assert helps["level"].startswith("degradation level: 1 partial function")
    esc = {a.dest: a.help for a in sub["escalate"]._actions}
    assert esc["level"].startswith("HL down: the degradation level you choose")


def test_version():
    exe = Path(sys.executable).parent / "rollbackctl"
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == f"rollbackctl {version('rollbackctl')}"


ACTIONS = ["confirm", "proceed", "cancel", "escalate", "fix", "withdraw", "stay", "ack", "tick", "resolve",
           "canary pause", "canary resume", "canary promote", "canary abort", "canary extend", "switch set"]


def test_every_action_command_can_answer_in_json():
    """Scripts and the console read what a decision did without parsing prose."""
    p = build_parser()
    for cmd in ACTIONS:
        sp = p
        for word in cmd.split():
            sp = next(a for a in sp._actions if a.__class__.__name__ == "_SubParsersAction").choices[word]
        assert any("--json" in a.option_strings for a in sp._actions), f"`rollbackctl {cmd}` has no --json"
