"""`rollbackctl ofrep serve`: the control matrix for OpenFeature clients in any language (rollbackctl/ofrep.py)."""

from __future__ import annotations

import argparse

from rollbackctl.cli.common import CliError


def register(sub: argparse._SubParsersAction) -> None:
    o = sub.add_parser("ofrep", help="the matrix over OpenFeature's remote evaluation protocol").add_subparsers(
        dest="ofrep_cmd", metavar="SUBCOMMAND", required=True)
    p = o.add_parser("serve", help="serve /ofrep/v1/ (read-only, from one etcd watch)",
                     description="Listens on ROLLBACKCTL_OFREP_LISTEN (127.0.0.1:8790); consumers send "
                                 "ROLLBACKCTL_OFREP_TOKEN as a bearer token.")
    p.add_argument("--listen", metavar="HOST:PORT", help="instead of ROLLBACKCTL_OFREP_LISTEN")
    p.set_defaults(func=cmd_serve)


async def cmd_serve(args) -> int:
    from core.settings import OfrepSettings
    from rollbackctl.ofrep import serve

    s = OfrepSettings()
    if s.token is None or not s.token.get_secret_value():
        raise CliError("ROLLBACKCTL_OFREP_TOKEN is not set: consumers must present a bearer token", 2)
    listen = args.listen or s.listen
    await serve(listen, s.token.get_secret_value(),
                ready=lambda: print(f"ofrep http://{listen}/ofrep/v1/  (bearer token: ROLLBACKCTL_OFREP_TOKEN)",
                                    flush=True))
    return 0
