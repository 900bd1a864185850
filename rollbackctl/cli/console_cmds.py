"""`rollbackctl console`: the operator console in a browser (rollbackctl/console/; `dev up` starts it)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("console", help="serve the operator console (matrix, audit, incidents, workflows, canaries)",
                       description="Serves ROLLBACKCTL_CONSOLE_LISTEN (default 127.0.0.1:8780) for browsers at "
                                   "ROLLBACKCTL_CONSOLE_ORIGIN (default http://localhost:PORT). Sign-in is by passkey: "
                                   "register at /register, then a super admin runs `rollbackctl passkey approve`.")
    p.add_argument("--listen", metavar="HOST:PORT", help="instead of ROLLBACKCTL_CONSOLE_LISTEN")
    p.set_defaults(func=cmd_console)


async def cmd_console(args) -> int:
    from core.settings import ConsoleSettings
    from rollbackctl.console.app import serve

    s = ConsoleSettings(**({"listen": args.listen} if args.listen else {}))
    await serve(s, ready=lambda origin: print(f"console {origin}  (sign in with a passkey; register at {origin}/register)",
                                              flush=True))
    return 0
