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
    print("\nIn another shell, to use this stack (and act as the demo's operators, whose keys are kept here):")
    print("\n".join(export_lines(st)))
    print("\nstop it with: rollbackctl dev down")
    return 0


def export_lines(st) -> list[str]:
    """`export` lines for a shell to reach the stack `st` (no secrets: the paging test token and webhook
    secret stay in the stack's files; the trading-core token is the simulator's public dev token)."""
    import shlex

    from core.settings import TradingCoreSettings

    env = {**st.env(), "ROLLBACKCTL_KEY_DIR": str(st.dir / "keys"),
           "ROLLBACKCTL_TRADING_CORE_TOKEN": TradingCoreSettings().token.get_secret_value()}
    keep = ("ROLLBACKCTL_ETCD_ENDPOINTS", "ROLLBACKCTL_ETCD_PREFIX", "TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE",
            "ROLLBACKCTL_TASK_QUEUE", "ROLLBACKCTL_TRADING_CORE_URL", "ROLLBACKCTL_TRADING_CORE_TOKEN",
            "ROLLBACKCTL_TEMPORAL_UI_URL", "ROLLBACKCTL_KEY_DIR", "ROLLBACKCTL_EMERGENCY_URLS")
    return [f"export {k}={shlex.quote(str(env[k]))}" for k in keep if env.get(k)]


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
