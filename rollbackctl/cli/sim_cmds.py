"""`rollbackctl sim [--port N]`: run the trading-core simulator in the foreground; `rollbackctl sim fault
KEY=VALUE ...` / `sim fault --clear` / `sim faults`: inject, clear and list faults at a running one (drills
and practice without curl)."""

from __future__ import annotations

import argparse
import asyncio
import json

from rollbackctl.cli.common import CliError, print_json


def register(sub: argparse._SubParsersAction) -> None:
    from simulator.args import add_arguments

    p = sub.add_parser(
        "sim",
        help="run the trading-core simulator (contract under /v1/, test controls under /sim/) on loopback; "
             "`sim fault` injects faults into a running one",
        description="Serve the trading-core contract with simulated metrics, following the switches in etcd. "
                    "Listens where ROLLBACKCTL_TRADING_CORE_URL points unless --port/--host say otherwise. "
                    "`sim fault KEY=VALUE ...` and `sim faults` talk to the simulator at that URL.",
    )
    add_arguments(p)
    p.set_defaults(func=cmd_sim)
    s = p.add_subparsers(dest="sim_cmd", metavar="ACTION")
    f = s.add_parser("fault", help="inject faults at the running simulator: metric overrides (error_rate=0.03, "
                                   "hl_connected=false) or API faults (api_latency_ms=800); KEY=null removes one",
                     description="Each KEY=VALUE is merged into the faults in force; VALUE is JSON (0.03, false, "
                                 "null, {\"BTC\": 0.07}) or else a string. The keys are the health snapshot's fields "
                                 "and the api_* faults (simulator/faults.py).")
    f.add_argument("assignments", nargs="*", metavar="KEY=VALUE", help="a fault to set (VALUE null removes it)")
    f.add_argument("--clear", action="store_true", help="remove every fault: the simulation runs on its own again")
    f.add_argument("--json", action="store_true", help="print the faults in force as JSON")
    f.set_defaults(func=cmd_fault)
    g = s.add_parser("faults", help="list the faults in force at the running simulator")
    g.add_argument("--json", action="store_true", help="print them as JSON")
    g.set_defaults(func=cmd_faults)


def cmd_sim(args) -> int:
    from core import log
    from simulator.runner import run_from_args

    log.configure(level="INFO")
    return run_from_args(args)


def _assignments(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise CliError(f"{item!r}: expected KEY=VALUE (e.g. error_rate=0.03)", 2)
        try:
            out[key.strip()] = json.loads(raw)
        except ValueError:
            out[key.strip()] = raw
    return out


async def faults_call(method: str, body=None):
    """The trading core's fault API (/sim/faults): GET, POST (merge) or DELETE; one clear CliError otherwise."""
    import httpx

    from core.settings import TradingCoreSettings

    s = TradingCoreSettings()
    url = s.url.rstrip("/") + "/sim/faults"
    try:
        async with httpx.AsyncClient(timeout=s.timeout_s) as http:
            r = await http.request(method, url, json=body)
    except httpx.HTTPError as e:
        raise CliError(f"the simulator at {s.url} is unreachable ({type(e).__name__}): is it running? "
                       "(`rollbackctl dev status`)", 5) from None
    if r.status_code == 404:
        raise CliError(f"{s.url} has no /sim/faults: it is not the simulator (faults are injected into a simulator "
                       "or a staging core that offers the same controls, never into production)", 2)
    if r.status_code >= 400:
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        detail = body.get("detail") or body.get("error") or r.text
        raise CliError(f"the simulator refused it ({r.status_code}): {detail}", 2)
    return r.json()


def _show(faults: dict, as_json: bool) -> None:
    if as_json:
        print_json(faults)
    elif not faults:
        print("no faults in force: the simulation runs on its own")
    else:
        print("faults in force: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(faults.items())))


def cmd_fault(args) -> int:
    if args.clear and args.assignments:
        raise CliError("--clear removes every fault; give either --clear or KEY=VALUE, not both", 2)
    if not args.clear and not args.assignments:
        raise CliError("nothing to inject: give KEY=VALUE (e.g. error_rate=0.03), or --clear", 2)
    faults = asyncio.run(faults_call("DELETE") if args.clear else faults_call("POST", _assignments(args.assignments)))
    _show(faults, args.json)
    return 0


def cmd_faults(args) -> int:
    _show(asyncio.run(faults_call("GET")), args.json)
    return 0
