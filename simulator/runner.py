"""Running the simulator: settings from the environment, uvicorn on loopback.

Environment (the same names the rest of the tool uses, so `rollbackctl dev up` needs nothing more):
- ROLLBACKCTL_TRADING_CORE_URL: where to listen (its host and port; default http://127.0.0.1:8700);
  `--port` / `--host` override.
- ROLLBACKCTL_TRADING_CORE_TOKEN: the bearer token /v1/ routes require (default dev-token).
- ROLLBACKCTL_ETCD_*: the switch store to follow (endpoints, prefix, TLS, auth).
- ROLLBACKCTL_SIM_SEED (default 7), ROLLBACKCTL_SIM_TICK_S (default 0.25): the random walk.
- ROLLBACKCTL_SIM_EXTRA_SYMBOLS (default 0): that many more listed symbols, S001, S002, ...: per-symbol
  actions (pause/resume_symbol_hl_routing) and per-symbol faults take them; the synthetic order flow
  and the market trade BTC, ETH and SOL only (bench/incidents.py: one P0 incident per symbol for 200).
- ROLLBACKCTL_SIM_PAGERDUTY_EVENTS_PER_MIN (120), ROLLBACKCTL_SIM_SLACK_PER_S (1): the sinks' rate limits
  (PagerDuty's and Slack's documented ones); ROLLBACKCTL_SIM_PAGERDUTY_KEYS: the integration keys the
  sink knows (others get 400, as PagerDuty answers an unknown key); ROLLBACKCTL_SIM_PAGERDUTY_WEBHOOK_URL
  and _SECRET: where "a person acting in the PagerDuty app" (POST /sim/pagerduty/app/...) sends the
  signed v3 webhook (rollbackctl's receiver). `/sim/paging/config` changes them at run time.
- ROLLBACKCTL_SIM_PARENT_PID: stop when that process is gone (set by test fixtures and benchmarks,
  so a killed test run leaves no simulator behind).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from urllib.parse import urlparse

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.settings import EtcdSettings, TradingCoreSettings
from simulator.args import add_arguments

log = logging.getLogger("simulator")


class SimSettings(BaseSettings):
    """ROLLBACKCTL_SIM_*: the simulator's own knobs."""

    model_config = SettingsConfigDict(env_prefix="ROLLBACKCTL_SIM_", extra="ignore")

    seed: int = 7
    tick_s: float = Field(default=0.25, gt=0, le=10)
    extra_symbols: int = Field(default=0, ge=0, le=999)
    # The PagerDuty and Slack sinks (simulator/sinks.py): the real services' limits by default.
    pagerduty_events_per_min: int = Field(default=120, ge=1)
    slack_per_s: float = Field(default=1.0, gt=0)
    pagerduty_keys: str = ""  # comma list: the account's integration keys (empty: any well-formed key)
    pagerduty_webhook_url: str = ""  # where the sink posts v3 webhooks when a person acts in the "app"
    pagerduty_webhook_secret: str = ""  # the webhook subscription's secret (signs them)

    def paging_config(self) -> "PagingConfig":
        from simulator.core import PagingConfig

        return PagingConfig(
            pagerduty_events_per_min=self.pagerduty_events_per_min, slack_per_s=self.slack_per_s,
            pagerduty_known_keys=[k.strip() for k in self.pagerduty_keys.split(",") if k.strip()] or None,
            webhook_url=self.pagerduty_webhook_url or None,
            webhook_secrets=[self.pagerduty_webhook_secret] if self.pagerduty_webhook_secret else [])


def listen_address(core: TradingCoreSettings, host: str | None = None, port: int | None = None) -> tuple[str, int]:
    u = urlparse(core.url)
    return host or u.hostname or "127.0.0.1", port if port is not None else (u.port or 80)


def build_app(*, prefix: str | None = None, seed: int | None = None, with_etcd: bool = True):
    """The ASGI app from the environment (also usable with any ASGI server)."""
    from core.etcd import Etcd
    from simulator.app import create_app
    from simulator.core import Simulator

    es, core, ss = EtcdSettings(), TradingCoreSettings(), SimSettings()
    etcd = Etcd.from_settings(es) if with_etcd else None
    sim = Simulator(etcd, prefix or es.prefix, seed=ss.seed if seed is None else seed, tick_s=ss.tick_s,
                    extra_symbols=ss.extra_symbols, paging=ss.paging_config())
    return create_app(sim, core.token.get_secret_value()), sim


async def serve(host: str, port: int, *, prefix: str | None = None, seed: int | None = None) -> int:
    import uvicorn

    from core import procs

    if procs.port_in_use(host, port):
        print(f"rollbackctl sim: {host}:{port} is already taken (set ROLLBACKCTL_TRADING_CORE_URL or --port)",
              file=sys.stderr)
        return 5
    app, sim = build_app(prefix=prefix, seed=seed)
    from core import metrics

    metrics_server = metrics.serve_configured(metrics.CONSUMER)  # the watcher's propagation (audited -> applied here)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=2, log_config=None)
    server = uvicorn.Server(config)

    async def announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.02)
        print(f"rollbackctl sim: trading-core simulator on http://{host}:{port} (OpenAPI /openapi.json), "
              f"following switches under {sim.prefix} (seed {sim.seed})", file=sys.stderr, flush=True)

    async def watch_parent(pid: int) -> None:
        while procs.alive(pid):
            await asyncio.sleep(0.5)
        log.warning("parent process %s is gone: stopping", pid)
        server.should_exit = True

    tasks = [asyncio.create_task(announce())]
    parent = os.environ.get("ROLLBACKCTL_SIM_PARENT_PID", "")
    if parent.isdigit():  # test fixtures and benchmarks: never outlive the process that started us
        tasks.append(asyncio.create_task(watch_parent(int(parent))))
    await server.serve()
    for t in tasks:
        t.cancel()
    if metrics_server is not None:
        metrics_server.shutdown()
    return 0 if server.started else 5




def run_from_args(args: argparse.Namespace) -> int:
    host, port = listen_address(TradingCoreSettings(), args.host, args.port)
    return asyncio.run(serve(host, port, prefix=args.prefix, seed=args.seed))


def main(argv: list[str] | None = None) -> None:
    from core import log as logsetup

    p = argparse.ArgumentParser(prog="python -m simulator", description="trading-core simulator")
    add_arguments(p)
    args = p.parse_args(argv)
    logsetup.configure(level=os.environ.get("ROLLBACKCTL_LOG_LEVEL", "INFO"))
    try:
        code = run_from_args(args)
    except KeyboardInterrupt:
        code = 130
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)
