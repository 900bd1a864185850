"""Paging: `paging test`, `paging status`, `paging serve`.

    rollbackctl paging test [--level N] [--json]   a test trigger + resolve to each level, on PagerDuty and Slack
    rollbackctl paging status [--json]             the pager: what waits for budget, storms, sent/failed counts
    rollbackctl paging serve [--listen HOST:PORT]  the PagerDuty v3 webhook receiver (`dev up` starts it)

`paging test` exits 0 when every level answered on both channels and resolved, 8 otherwise (each
failure is one line: level, channel, what the service answered, where it was rerouted).
"""

from __future__ import annotations

import argparse
import secrets as _secrets
from datetime import datetime, timezone

from rollbackctl.cli.common import CliError, print_json, table

PAGING_FAILED = 8


def register(sub: argparse._SubParsersAction) -> None:
    pg = sub.add_parser("paging", help="paging: test every level, the pager's queue, the PagerDuty webhook receiver")
    s = pg.add_subparsers(dest="paging_cmd", metavar="SUBCOMMAND", required=True)

    p = s.add_parser("test", help="send a test trigger and its resolve to each configured level and channel")
    p.add_argument("--level", type=int, choices=[1, 2, 3], help="only this escalation level (default: all)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON document")
    p.set_defaults(func=cmd_test)

    p = s.add_parser("status", help="the pager: sends waiting for budget, open storms, sent and failed counts")
    p.add_argument("--json", action="store_true", help="print the queue view as one JSON document")
    p.set_defaults(func=cmd_status)

    p = s.add_parser("serve", help="run the PagerDuty v3 webhook receiver in the foreground")
    p.add_argument("--listen", metavar="HOST:PORT", help="default ROLLBACKCTL_PAGING_LISTEN (127.0.0.1:8710)")
    p.set_defaults(func=cmd_serve)


def listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise CliError(f"ROLLBACKCTL_PAGING_LISTEN / --listen {text!r} is not HOST:PORT", 2)
    return host, int(port)


async def pager_queue(client, task_queue: str):
    """The pager's QueueView, or None when no pager runs on this task queue."""
    from temporalio.service import RPCError

    from contracts.paging import QueueView, pager_workflow_id

    try:
        return await client.get_workflow_handle(pager_workflow_id(task_queue)).query("queue", result_type=QueueView)
    except RPCError:
        return None


def queue_lines(q) -> list[str]:
    if q is None:
        return ["paging: no pager running (it starts with the first page)"]
    waiting = ", ".join(f"{k}: {v}" for k, v in sorted(q.waiting.items()))
    lines = [f"paging: {sum(q.waiting.values())} waiting for budget" + (f" ({waiting})" if waiting else "")
             + f", {q.in_flight} in flight" + (f", oldest {q.oldest_waiting_s:.0f}s" if q.waiting else "")]
    for g in q.groups:
        lines.append(f"  storm {g['group']} ({g['kind']}, L{g['level']}): {g['members']} incidents, "
                     f"{g['named']} named in a delivered page, alert {g['status']}")
    if q.failed:
        lines.append("  FAILED sends: " + ", ".join(f"{k}: {v}" for k, v in sorted(q.failed.items()))
                     + f" (rerouted {q.rerouted})")
    return lines


async def cmd_status(args) -> int:
    from core.settings import TemporalSettings
    from core.temporal_client import connect

    ts = TemporalSettings()
    q = await pager_queue(await connect(ts), ts.task_queue)
    if args.json:
        print_json(q.model_dump(mode="json") if q else None)
        return 0
    print("\n".join(queue_lines(q)))
    if q is not None:
        print("  sent: " + (", ".join(f"{k}: {v}" for k, v in sorted(q.sent.items())) or "nothing yet")
              + f"; held back for budget {q.throttled}x; PagerDuty events for unknown alerts: {q.unknown_events}")
    return 0


async def cmd_test(args) -> int:
    from temporalio.service import RPCError

    from core.settings import TemporalSettings
    from core.temporal_client import connect
    from workflows.paging_test import PagingTestInput, PagingTestResult

    ts = TemporalSettings()
    client = await connect(ts)
    wid = f"paging-test-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{_secrets.token_hex(3)}"
    inp = PagingTestInput(levels=[args.level]) if args.level else PagingTestInput()
    try:
        h = await client.start_workflow("PagingTestWorkflow", inp, id=wid, task_queue=ts.task_queue,
                                        result_type=PagingTestResult)
        if not args.json:
            print(f"{wid}: test pages sent to level(s) {', '.join(map(str, inp.levels))}; waiting for PagerDuty and "
                  f"Slack to answer ...", flush=True)
        res: PagingTestResult = await h.result()
    except RPCError as e:
        raise CliError(f"paging test: Temporal answered: {e.message}", 5) from None
    if args.json:
        print_json(res.model_dump(mode="json"))
    else:
        print(table([[f"L{x.level} {x.name}", x.pagerduty.detail, x.slack.detail, x.resolve.detail] for x in res.levels],
                    ["LEVEL", "PAGERDUTY TRIGGER", "SLACK", "PAGERDUTY RESOLVE"]))
        print(f"Web UI   {ts.workflow_url(wid)}")
    for x in res.levels:
        for name, r in (("PagerDuty trigger", x.pagerduty), ("Slack", x.slack), ("PagerDuty resolve", x.resolve)):
            if not r.ok:
                import sys

                print(f"rollbackctl: paging test: level {x.level} {name}: {r.detail}", file=sys.stderr)
    return 0 if res.ok else PAGING_FAILED


async def cmd_serve(args) -> int:
    from activities.paging import PagingNotConfigured
    from rollbackctl.pagerhook import serve
    from core.settings import PagingSettings

    ps = PagingSettings()
    host, port = listen_address(args.listen or ps.paging_listen)
    if ps.pagerduty_webhook_secret is None or not ps.pagerduty_webhook_secret.get_secret_value().strip():
        raise CliError(str(PagingNotConfigured(
            "ROLLBACKCTL_PAGERDUTY_WEBHOOK_SECRET is not set: the receiver verifies every webhook's signature with "
            "the PagerDuty subscription's secret")), 2)
    return await serve(host, port)
