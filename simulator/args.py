"""The simulator's command-line arguments (argparse only: the CLI builds its parser without importing
the simulator)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, help="port to listen on (default: from ROLLBACKCTL_TRADING_CORE_URL)")
    p.add_argument("--host", help="address to listen on (default: from ROLLBACKCTL_TRADING_CORE_URL; keep it loopback)")
    p.add_argument("--seed", type=int, help="random-walk seed (default ROLLBACKCTL_SIM_SEED or 7)")
    p.add_argument("--prefix", help="etcd key prefix to follow (default ROLLBACKCTL_ETCD_PREFIX)")
