"""`rollbackctl consumers`: every live consumer instance of the matrix and the revision it applied."""

from __future__ import annotations

import argparse
import time

from rollbackctl.cli.common import print_json, switch_store, table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("consumers", help="live consumers of the matrix and the revision each has applied",
                       description="Each consumer instance that follows the matrix with a consumer id "
                                   "(ROLLBACKCTL_CONSUMER_ID) keeps a leased receipt; an instance that stops "
                                   "refreshing it drops out. A straggler has applied less than the last change.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_consumers)


async def cmd_consumers(args) -> int:
    from contracts.fleet import receipt_rows

    async with switch_store() as store:
        rows, matrix = await store.consumers()
    out = receipt_rows(rows, matrix, time.time())
    if args.json:
        print_json({"matrix_revision": matrix, "consumers": out})
        return 0
    if not out:
        print(f"no live consumer has a receipt (matrix revision {matrix})")
        return 0
    print(table([[r.get("id"), r.get("applied_revision"), "BEHIND" if r["behind"] else "ok", f"{r['seen_s_ago']}s",
                  f"{r.get('host')}:{r.get('pid')}"] for r in out],
                ["CONSUMER", "APPLIED", f"VS {matrix}", "SEEN", "WHERE"]))
    behind = [r["id"] for r in out if r["behind"]]
    print(f"{len(out)} live; " + (f"behind the last change ({matrix}): {', '.join(map(str, behind))}" if behind
                                   else f"all at the last change ({matrix})"))
    return 0
