"""P0 alerts: `incidents`, `ack`, `resolve`, `tick`, `monitor`.

    rollbackctl incidents [--json] [--all]        open P0 incidents (SLA clocks, actions, checklist)
    rollbackctl ack ID --as OP                    acknowledge (the manual's 5-min "confirm")
    rollbackctl tick ID ITEM --as OP [--note N]   tick a further step of the checklist (the action SLA)
    rollbackctl resolve ID --as OP [--undo]       resolve once the condition has cleared
    rollbackctl monitor                           run the P0 monitor (foreground; `dev up` starts one)
    rollbackctl monitor --status | --stop

ID: the workflow id (`incident-hot_wallet`), the rule and symbol (`hot_wallet`, `order_deviation-BTC`)
or the incident id (`hot_wallet-20260101T101500Z`). HL still down after 5 minutes asks for a
degradation level: `rollbackctl escalate ID --level 2|3 --as OP`.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
from datetime import datetime, timezone

from rollbackctl.cli.common import CliError, print_json, report_action, table

_STAMP = re.compile(r"-\d{8}T\d{6}Z$")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("incidents", help="open P0 incidents: alert, state, SLA clocks, actions, checklist")
    p.add_argument("--json", action="store_true")
    p.add_argument("--all", action="store_true", help="closed ones too (the last 50)")
    p.set_defaults(func=cmd_incidents)

    p = sub.add_parser("ack", help="acknowledge a P0 incident (stops its escalation)")
    p.add_argument("id")
    p.add_argument("--as", dest="actor", required=True, metavar="OPERATOR")
    p.add_argument("--reason", default="")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ack)

    p = sub.add_parser("tick", help="tick a further step of a P0 incident's checklist")
    p.add_argument("id")
    p.add_argument("item", help="the checklist item id (see `rollbackctl incidents`)")
    p.add_argument("--as", dest="actor", required=True, metavar="OPERATOR")
    p.add_argument("--note", default="")
    p.add_argument("--reopen", action="store_true", help="mark it not done")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tick)

    p = sub.add_parser("resolve", help="resolve a P0 incident whose condition has cleared")
    p.add_argument("id")
    p.add_argument("--as", dest="actor", required=True, metavar="OPERATOR")
    p.add_argument("--reason", default="")
    p.add_argument("--undo", action="store_true",
                   help="also undo the immediate action (rules recovered by a human; switches by compare-and-swap)")
    p.add_argument("--force", action="store_true", help="super admin: although the monitor still reports it firing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_resolve)

    p = sub.add_parser("monitor", help="run the P0 monitor in the foreground (or --status / --stop)")
    p.add_argument("--interval", type=float, metavar="SECONDS", help="health poll interval (default 1, "
                   "ROLLBACKCTL_MONITOR_INTERVAL_S)")
    p.add_argument("--status", action="store_true", help="is a monitor running, and what does it see")
    p.add_argument("--stop", action="store_true", help="stop the monitor (cancels its workflow)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_monitor)


# -- helpers -----------------------------------------------------------------------------------------------
def workflow_id(ident: str) -> str:
    from contracts.incidents import INCIDENT_PREFIX

    ident = _STAMP.sub("", ident.strip())
    return ident if ident.startswith(INCIDENT_PREFIX) else INCIDENT_PREFIX + ident


def _ago(t: datetime | None, now: datetime) -> str:
    if t is None:
        return "-"
    s = int((now - t).total_seconds())
    sign = "" if s >= 0 else "in "
    s = abs(s)
    txt = f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
    return f"{sign}{txt}" + (" ago" if not sign else "")


def _sla_text(st, now: datetime) -> tuple[str, str]:
    sla = st.sla
    if sla.acked_at:
        ack = f"by {sla.acked_by}" + (" (late)" if sla.ack_breached else "")
    elif sla.ack_due:
        ack = ("ESCALATED L%d, next " % sla.level if sla.ack_breached else "due ") + _ago(sla.ack_due, now)
    else:
        ack = "-"
    if sla.action_at:
        act = f"by {sla.action_by}" + (" (late)" if sla.action_breached_at else "")
    elif sla.action_breached_at:
        act = "BREACHED"
    else:
        act = "due " + _ago(sla.action_due, now) if sla.action_due else "-"
    return ack, act


async def _update(name: str, ident: str, arg, sign_as: str | None = None) -> tuple[str, str]:
    """Send Update `name`; a Decision is signed for decision kind `sign_as` when signing is on."""
    from temporalio.client import WorkflowUpdateFailedError
    from temporalio.service import RPCError

    from core.temporal_client import connect

    client = await connect()
    wid = workflow_id(ident)
    try:
        if sign_as is not None:
            try:
                from rollbackctl.cli.signing import signed_decision
            except ImportError:  # a build without signed requests
                signed_decision = None
            if signed_decision is not None:
                arg = await signed_decision(client, wid, sign_as, arg)
        res = await client.get_workflow_handle(wid).execute_update(name, arg)
    except WorkflowUpdateFailedError as e:
        from rollbackctl.cli.common import refusal

        raise await refusal(client, e, name, wid, getattr(arg, "actor", "?")) from None
    except RPCError as e:
        if "not found" in e.message.lower() or "completed" in e.message.lower():
            raise CliError(f"{wid}: no open incident ({e.message})", 4) from None
        raise CliError(f"{wid}: {e.message}", 5) from None
    return wid, (res.get("message") if isinstance(res, dict) else res)


def _link(wid: str) -> str:
    from core.settings import TemporalSettings

    return f"Web UI   {TemporalSettings().workflow_url(wid)}"


# -- commands ------------------------------------------------------------------------------------------------
async def cmd_incidents(args) -> int:
    from temporalio.service import RPCError

    from core.temporal_client import connect
    from contracts.incidents import IncidentState

    client = await connect()
    q = "WorkflowType = 'IncidentWorkflow'" + ("" if args.all else " AND ExecutionStatus = 'Running'")
    rows: list[IncidentState] = []
    closed: list[dict] = []
    try:
        async for wf in client.list_workflows(q, limit=50):
            h = client.get_workflow_handle(wf.id, run_id=wf.run_id)
            try:
                rows.append(await h.query("state", result_type=IncidentState))
            except RPCError:
                closed.append({"workflow_id": wf.id, "status": wf.status.name.lower() if wf.status else "?",
                               "started": str(wf.start_time), "closed": str(wf.close_time)})
    except RPCError as e:
        raise CliError(f"cannot list incidents: {e.message}", 5) from None
    from rollbackctl.cli.paging_cmds import pager_queue, queue_lines
    from rollbackctl.cli.workflow_cmds import paging_lines
    from core.settings import TemporalSettings

    q = await pager_queue(client, TemporalSettings().task_queue)
    if args.json:
        print_json([r.model_dump(mode="json") for r in rows] + closed)
        return 0
    if not rows and not closed:
        print("no open P0 incidents")
        print("\n".join(queue_lines(q)))
        return 0
    now = datetime.now(timezone.utc)
    out = []
    for st in rows:
        ack, act = _sla_text(st, now)
        paged = (_ago(st.sla.paged_at, now) if st.sla.paged_at else
                 "FAILED" if st.paging_failures else "queued" if st.sla.page_submitted_at else "-")
        out.append([st.workflow_id, ("[DRILL] " if st.drill else "") + st.alert + (f" [{st.symbol}]" if st.symbol else ""),
                    st.status, st.condition,
                    f"L{st.sla.level}", ack, act, paged])
    print(table(out, ["ID", "ALERT", "STATUS", "CONDITION", "LEVEL", "ACK (5 MIN)", "ACTION (10 MIN)", "PAGED"]))
    print("\n".join(queue_lines(q)))
    for st in rows:
        print(f"\n{st.workflow_id}  ({st.incident_id})  {st.detail}")
        for a in st.actions:
            print(f"  {a.at:%H:%M:%S}  {a.phase:<13} {a.what:<34} {a.status:<8} {a.detail}")
        for i in st.checklist:
            mark = "x" if i.done else " "
            who = f"  ({i.by}{': ' + i.note if i.note else ''})" if i.done else ""
            print(f"  [{mark}] {i.id:<18} {i.title}{who}")
        print(f"  recovery: {st.recovery}" + (f"; degradation level: {st.level_choice}" if st.level_choice else ""))
        if st.sla.seen_by and not st.sla.acked_at:
            print(f"  seen in PagerDuty by {st.sla.seen_by} at {st.sla.seen_at:%H:%M:%S}: re-paging stopped; still "
                  f"awaited: a signed `rollbackctl ack {st.workflow_id} --as OP`")
        for line in paging_lines(st.alerts, st.paging_failures):
            print(line)
        for c in st.children:
            print(f"  started: {c}")
    for c in closed:
        print(f"{c['workflow_id']}: {c['status']} (closed {c['closed']})")
    return 0


async def cmd_ack(args) -> int:
    from contracts.progress import Decision

    # signed (signing on) like `rollbackctl confirm`: the manual's "5-min confirm" is this acknowledgement
    wid, msg = await _update("acknowledge", args.id, Decision(actor=args.actor, reason=args.reason), sign_as="confirm")
    report_action(args, wid, "acknowledge", msg)
    return 0


async def cmd_tick(args) -> int:
    from contracts.incidents import TickRequest

    wid, msg = await _update("tick", args.id, TickRequest(actor=args.actor, item=args.item, note=args.note,
                                                           done=not args.reopen), sign_as="tick")
    report_action(args, wid, "tick", msg)
    return 0


async def cmd_resolve(args) -> int:
    from contracts.incidents import ResolveRequest

    wid, msg = await _update("resolve", args.id, ResolveRequest(actor=args.actor, reason=args.reason, undo=args.undo,
                                                                 force=args.force), sign_as="resolve")
    report_action(args, wid, "resolve", msg)
    return 0


# -- the monitor ------------------------------------------------------------------------------------------------
async def monitor_status(client, wid: str) -> dict:
    from temporalio.client import WorkflowExecutionStatus
    from temporalio.service import RPCError

    from contracts.incidents import MonitorState
    from manual import alerts

    try:
        desc = await client.get_workflow_handle(wid).describe()
    except RPCError as e:
        return {"workflow_id": wid, "running": False, "detail": e.message}
    out: dict = {"workflow_id": wid, "running": desc.status == WorkflowExecutionStatus.RUNNING,
                 "status": desc.status.name.lower() if desc.status else "?"}
    for pa in desc.raw_description.pending_activities:
        out["activity_attempt"] = pa.attempt
        out["activity_state"] = {1: "scheduled", 2: "started", 3: "cancel_requested"}.get(pa.state, str(pa.state))
        if pa.HasField("last_heartbeat_time"):
            out["last_heartbeat"] = pa.last_heartbeat_time.ToDatetime(tzinfo=timezone.utc).isoformat()
        if pa.last_failure.message:
            out["last_failure"] = pa.last_failure.message
        if pa.heartbeat_details.payloads:
            (st,) = await client.data_converter.decode(pa.heartbeat_details.payloads, [MonitorState])
            out["polls"], out["failed_polls"] = st.polls, st.failed_polls
            out["last_error"] = st.last_error
            out["core_last_ok"] = st.last_ok_at.isoformat() if st.last_ok_at else None
            out["firing"] = sorted(k for k, ks in st.keys.items() if ks.firing)
            out[alerts.AUTO_MODE.switch] = st.auto.last  # what the auto mode switch did last
    return out


async def cmd_monitor(args) -> int:
    from activities.monitor import MonitorSettings
    from core.settings import TemporalSettings
    from core.temporal_client import connect
    from workflows.monitor import monitor_workflow_id

    ms, ts = MonitorSettings(), TemporalSettings()
    wid = monitor_workflow_id(ms.namespace)
    if args.status or args.stop:
        client = await connect(ts)
        if args.stop:
            from temporalio.service import RPCError

            try:
                await client.get_workflow_handle(wid).cancel()
            except RPCError as e:
                raise CliError(f"{wid}: {e.message}", 4) from None
            print(f"{wid}: stop requested (its activity ends at the next heartbeat)")
            return 0
        st = await monitor_status(client, wid)
        if args.json:
            print_json(st)
        else:
            for k, v in st.items():
                print(f"  {k:<18} {v}")
        return 0 if st.get("running") else 1
    return await run_monitor(ms, ts, interval=args.interval)


async def run_monitor(ms, ts, interval: float | None = None, stop: asyncio.Event | None = None) -> int:
    """Host the monitor: a worker on `<task queue>-monitor` with MonitorWorkflow and `monitor.run`, and the
    workflow itself (started with USE_EXISTING: a second process becomes a standby, not a second monitor)."""
    import httpx
    from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
    from temporalio.worker import Worker

    from activities.monitor import MonitorActivities
    from activities.switch_store import SwitchStore
    from activities.trading_core import TradingCoreActivities
    from core.etcd import Etcd
    from core.settings import EtcdSettings, TradingCoreSettings
    from core.temporal_client import connect
    from contracts.incidents import MonitorInput
    from workflows.monitor import MonitorWorkflow, monitor_workflow_id

    from activities.metrics import TaskQueueMetrics
    from core import metrics
    from core.settings import MetricsSettings
    from core.temporal_client import runtime

    es, mset = EtcdSettings(), MetricsSettings()
    runtime(mset.sdk_metrics_listen)  # the SDK's exporter (set before the first connection makes the runtime)
    client = await connect(ts)
    mq = ms.task_queue(ts.task_queue)
    server = metrics.serve(mset.metrics_listen, metrics.MONITOR) if mset.metrics_listen else None
    wid = monitor_workflow_id(ms.namespace)
    inp = MonitorInput(namespace=ms.namespace, interval_s=interval or ms.interval_s,
                       health_timeout_s=ms.health_timeout_s, incident_task_queue=ts.task_queue,
                       activity_task_queue=mq, heartbeat_timeout_s=ms.heartbeat_timeout_s)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Etcd.from_settings(es) as etcd, httpx.AsyncClient() as http:
        acts = MonitorActivities(client, SwitchStore(etcd, es.prefix), TradingCoreActivities.from_settings(
            TradingCoreSettings(), http))
        async with Worker(client, task_queue=mq, workflows=[MonitorWorkflow], activities=[acts.run],
                          max_concurrent_activities=4):
            h = await client.start_workflow(
                MonitorWorkflow.run, inp, id=wid, task_queue=mq,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE)
            print(f"P0 monitor {wid} (run {h.result_run_id}) polling {TradingCoreSettings().url} every "
                  f"{inp.interval_s:g}s; incidents on task queue {ts.task_queue}; this process serves {mq}",
                  flush=True)
            print(_link(wid), flush=True)
            side = []
            if server is not None:
                print(f"metrics http://{mset.metrics_listen}/metrics", flush=True)
                # Pollers of the workers' queue and of this one, seen by Temporal: "no worker" shows here.
                side.append(asyncio.create_task(TaskQueueMetrics(
                    client, ts.temporal_namespace, [ts.task_queue, ts.critical_task_queue, mq],
                    every_s=mset.metrics_collect_s or 10.0).run(stop)))
            try:
                await stop.wait()
            finally:
                await asyncio.gather(*side, return_exceptions=True)
                if server is not None:
                    server.shutdown()
    print("monitor process stopping; the monitor workflow stays (another `rollbackctl monitor` takes over; "
          "`rollbackctl monitor --stop` ends it)", flush=True)
    return 0
