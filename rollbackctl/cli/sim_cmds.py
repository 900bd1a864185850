"""`rollbackctl sim [--port N]`: run the trading-core simulator in the foreground."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from simulator.runner import add_arguments

    p = sub.add_parser(
        "sim",
        help="run the trading-core simulator (contract under /v1/, test controls under /sim/) on loopback",
        description="Serve the trading-core contract with simulated metrics, following the switches in etcd. "
                    "Listens where ROLLBACKCTL_TRADING_CORE_URL points unless --port/--host say otherwise.",
    )
    add_arguments(p)
    p.set_defaults(func=cmd_sim)


def cmd_sim(args) -> int:
    from core import log
    from simulator.runner import run_from_args

    log.configure(level="INFO")
    return run_from_args(args)
