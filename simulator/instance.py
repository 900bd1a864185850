"""Another trading-core instance of the simulator: it follows the matrix and keeps its receipt.

`python -m simulator.instance --id sim-2 [--apply-delay-ms N] [--prefix P]`

A real core runs several instances (one per order-gateway shard, say); each applies the switches on its
own and each must confirm it did. This one holds no market and serves no HTTP: it watches
`<prefix>switches/` with the library every consumer uses (core/watcher.py), applies each change after
`--apply-delay-ms` (0 by default; a value past the latency class makes it a straggler: the fault
tests and drills use), and writes `<prefix>consumers/<id>` under a lease. SIGTERM stops it cleanly
and revokes the lease; SIGKILL leaves the lease to expire (6 s): the instance drops out of the fleet.

Environment: ROLLBACKCTL_ETCD_* (the store), ROLLBACKCTL_SIM_PARENT_PID (stop when that process is gone).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from core.aio import wait_set
from core.etcd import Etcd
from core.settings import EtcdSettings
from core.watcher import SwitchUpdate, SwitchWatcher

log = logging.getLogger("simulator.instance")


async def run(consumer_id: str, prefix: str | None, apply_delay_s: float, stop: asyncio.Event) -> None:
    from core import procs

    es = EtcdSettings()
    async with Etcd.from_settings(es) as etcd:
        async def apply(upd: SwitchUpdate) -> None:
            if apply_delay_s:
                await asyncio.sleep(apply_delay_s)  # the fault: this instance is slow to apply
            log.info("%s applied %s=%r (revision %s)", consumer_id, upd.name, upd.value, upd.revision)

        w = SwitchWatcher(etcd, prefix or es.prefix, on_change=apply, consumer_id=consumer_id)
        await w.start()
        print(f"simulator instance {consumer_id}: following {prefix or es.prefix}switches/ from revision "
              f"{w.revision} (apply delay {apply_delay_s * 1000:g} ms)", file=sys.stderr, flush=True)
        parent = os.environ.get("ROLLBACKCTL_SIM_PARENT_PID", "")
        try:
            while not stop.is_set():
                if parent.isdigit() and not procs.alive(int(parent)):
                    log.warning("parent process %s is gone: stopping", parent)
                    break
                await wait_set(stop, 0.5)
        finally:
            await w.stop()


def main(argv: list[str] | None = None) -> None:
    from core import log as logsetup

    p = argparse.ArgumentParser(prog="python -m simulator.instance", description=__doc__.split("\n")[0])
    p.add_argument("--id", required=True, help="this instance's consumer id (1-128 characters, no '/')")
    p.add_argument("--prefix", help="etcd key prefix to follow (default ROLLBACKCTL_ETCD_PREFIX)")
    p.add_argument("--apply-delay-ms", type=float, default=0.0,
                   help="apply each change this long after it arrives (a slow instance; default 0)")
    args = p.parse_args(argv)
    if args.apply_delay_ms < 0 or args.apply_delay_ms > 600_000:
        p.error("--apply-delay-ms: between 0 and 600000")
    logsetup.configure(level=os.environ.get("ROLLBACKCTL_LOG_LEVEL", "INFO"))

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(args.id, args.prefix, args.apply_delay_ms / 1000, stop)

    try:
        asyncio.run(go())
    except ValueError as e:  # a bad consumer id
        print(f"python -m simulator.instance: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(0)


if __name__ == "__main__":
    main()
