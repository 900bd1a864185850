"""`rollbackctl`: the on-call engineer's command line.

Each command group lives in its own module with a `register(subparsers)` function; COMMAND_MODULES
lists them. Errors: one clear line on stderr and an exit code: 2 bad input, 3 permission denied,
4 conflict, 5 store/service unavailable.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys

from rollbackctl.cli.common import CliError, exit_code_for

COMMAND_MODULES = [
    "rollbackctl.cli.switch_cmds",
    "rollbackctl.cli.dev_cmds",
    "rollbackctl.cli.sim_cmds",
    "rollbackctl.cli.workflow_cmds",
    "rollbackctl.cli.incident_cmds",
    "rollbackctl.cli.canary_cmds",
    "rollbackctl.cli.paging_cmds",
    "rollbackctl.cli.passkey_cmds",
    "rollbackctl.cli.console_cmds",
    "rollbackctl.cli.ofrep_cmds",
    "rollbackctl.cli.consumers_cmds",
    "rollbackctl.cli.drill_cmds",
    "rollbackctl.cli.helper_cmds",
]


def _translate_once() -> None:
    """argparse translates each of its ~190 messages through `gettext.gettext`, which searches the locale
    directories for a catalog on every call and caches only what it finds: 189 searches, ~10-30 ms of
    every command, finding nothing. Look it up once per parser: the same catalog (or none) gettext would
    find for the same environment."""
    import gettext

    domain = gettext.textdomain()
    t = gettext.translation(domain, gettext.bindtextdomain(domain), fallback=True)
    argparse._ = t.gettext
    argparse.ngettext = t.ngettext


def build_parser() -> argparse.ArgumentParser:
    _translate_once()
    p = argparse.ArgumentParser(
        prog="rollbackctl",
        description="Durable launch-and-rollback automation: switches, rollbacks, degradation, canaries, P0 alerts.",
    )
    p.add_argument("--version", action=_Version, help="print rollbackctl's version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    from rollbackctl.cli import help_text

    help_text.fill(p)
    return p


class _Version(argparse.Action):
    """`--version`, read from the installed package only when asked (no import cost on every command)."""

    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import version

        print(f"rollbackctl {version('rollbackctl')}")
        parser.exit()


_PARSER: argparse.ArgumentParser | None = None


def parser() -> argparse.ArgumentParser:
    """The parser, built once per process: the helper (rollbackctl/helper.py) builds it before it forks, so
    a command forked from it does not rebuild it (~70 ms). Parsing does not change it."""
    global _PARSER
    if _PARSER is None:
        _PARSER = build_parser()
    return _PARSER


def run(argv: list[str] | None = None) -> int:
    """One command: its exit code, with any error said in one line on stderr."""
    from core import log

    log.configure(level=os.environ.get("ROLLBACKCTL_LOG_LEVEL", "WARNING"))
    code = 0
    try:
        args = parser().parse_args(argv)
        result = args.func(args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        code = int(result or 0)
    except SystemExit as e:  # --help, --version, a usage error (argparse has said it), or a command's exit
        code = _exit_status(e)
    except KeyboardInterrupt:
        code = 130
    except Exception as e:  # one line, the right exit code
        code = exit_code_for(e)
        if code == 1 and not isinstance(e, CliError):
            import traceback

            traceback.print_exc()
        from temporalio.service import RPCError

        if isinstance(e, RPCError):
            print(f"rollbackctl: error: Temporal did not answer ({e}); what the command asked may or may not have "
                  "reached it: check with `rollbackctl status`", file=sys.stderr)
        else:
            print(f"rollbackctl: error: {e}", file=sys.stderr)
    return code


def _exit_status(e: SystemExit) -> int:
    """What the interpreter would have exited with for this SystemExit."""
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    print(e.code, file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> None:
    code = run(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    # The Temporal SDK's Rust core can abort at interpreter exit (sdk-python #300): leave directly.
    os._exit(code)
