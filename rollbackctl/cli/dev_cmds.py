"""`rollbackctl dev up | down | status`: the embedded stack on loopback."""

from __future__ import annotations

import argparse

from rollbackctl.cli.common import CliError, print_json


def register(sub: argparse._SubParsersAction) -> None:
    dev = sub.add_parser("dev", help="the embedded stack (etcd, Temporal dev server with Web UI, ...) on loopback")
    d = dev.add_subparsers(dest="dev_cmd", metavar="SUBCOMMAND", required=True)
    p = d.add_parser("up", help="start what is not running; data under .dev/")
    p.add_argument("--only", nargs="*", metavar="COMPONENT", help="start only these components")
    p.set_defaults(func=cmd_up)
    p = d.add_parser("down", help="stop exactly the processes `dev up` started")
    p.set_defaults(func=cmd_down)
    p = d.add_parser("status", help="what runs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)


def cmd_up(args) -> int:
    from core import procs
    from rollbackctl import devstack

    from activities.paging import PagingNotConfigured

    print("starting the embedded stack:")
    try:
        st = devstack.up(only=args.only)
    except procs.StackError as e:
        raise CliError(str(e), 5) from None
    except PagingNotConfigured as e:
        raise CliError(str(e), 2) from None
    print(f"\nWeb UI: {st.ui_url}    data and logs: {st.dir}")
    print("stop it with: rollbackctl dev down")
    return 0


def cmd_down(args) -> int:
    from rollbackctl import devstack

    print("stopping the embedded stack:")
    devstack.down()
    return 0


def cmd_status(args) -> int:
    from rollbackctl import devstack

    rows = devstack.status()
    if args.json:
        print_json(rows)
    else:
        for r in rows:
            state = f"running (pid {r['pid']})" if r["running"] else "stopped"
            print(f"  {r['where']:<60} {state}")
    return 0
