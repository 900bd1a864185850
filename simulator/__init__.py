"""A simulator of the exchange's trading core (the HTTP contract in docs/trading-core-api.md).

    python -m simulator [--port N]      or      rollbackctl sim [--port N]

Started by `rollbackctl dev up` too. It serves the contract on loopback with metrics that move as
seeded random walks around healthy values, follows the switches in etcd (core.watcher) and
behaves accordingly, and offers test controls under /sim/: fault injection, the actions it
performed, the switches it applied and when, and local PagerDuty / Slack sinks.

Importing this package is cheap (the devstack imports it); the server parts load on use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from simulator.app import create_app
    from simulator.client import SimClient
    from simulator.core import Simulator
    from simulator.runner import SimSettings, build_app, serve

__all__ = ["SimClient", "SimSettings", "Simulator", "build_app", "create_app", "serve"]

_WHERE = {
    "create_app": "simulator.app",
    "Simulator": "simulator.core",
    "SimClient": "simulator.client",
    "SimSettings": "simulator.runner",
    "build_app": "simulator.runner",
    "serve": "simulator.runner",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(name)
