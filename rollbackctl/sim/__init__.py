"""A simulator of the exchange's trading core (the HTTP contract in docs/trading-core-api.md).

    python -m rollbackctl.sim [--port N]      or      rollbackctl sim [--port N]

Started by `rollbackctl dev up` too. It serves the contract on loopback with metrics that move as
seeded random walks around healthy values, follows the switches in etcd (rollbackctl.watcher) and
behaves accordingly, and offers test controls under /sim/: fault injection, the actions it
performed, the switches it applied and when, and local PagerDuty / Slack sinks.

Importing this package is cheap (the devstack imports it); the server parts load on use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from rollbackctl.sim.app import create_app
    from rollbackctl.sim.client import SimClient
    from rollbackctl.sim.core import Simulator
    from rollbackctl.sim.runner import SimSettings, build_app, serve

__all__ = ["SimClient", "SimSettings", "Simulator", "build_app", "create_app", "serve"]

_WHERE = {
    "create_app": "rollbackctl.sim.app",
    "Simulator": "rollbackctl.sim.core",
    "SimClient": "rollbackctl.sim.client",
    "SimSettings": "rollbackctl.sim.runner",
    "build_app": "rollbackctl.sim.runner",
    "serve": "rollbackctl.sim.runner",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(name)
