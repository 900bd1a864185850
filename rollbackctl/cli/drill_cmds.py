"""`rollbackctl drill list` / `drill show NAME [--speed N]`: the game-day scenarios, generated from the
manual's tables (manual/drills.py): each P0 rule, each rollback severity and scope, each degradation
level, a canary failing its pass criteria, HL down during a rollback. `show` prints the fault that
rehearses it (ready for `rollbackctl sim fault`), what it teaches and the SLAs it is scored against at
the given speed. No etcd, no Temporal: reading them changes nothing.

`drill start p0-RULE --speed N --as OP` runs a P0 scenario for real: the incident workflow is opened first,
marked a drill (audit records, pages and chat say [DRILL]) with its acknowledge and action SLAs, its
escalation and its recovery clocks divided by N, then the fault is injected at the trading core's fault
API; the P0 monitor's own detection reaches that open incident (it opens by signal-with-start under the
same id). `drill end ID` clears the fault. Refused, with nothing started: a prefix marked production
(`init --environment production`), a core without the fault API (production has none), an incident of
that rule already open."""

from __future__ import annotations

import argparse
import json

from rollbackctl.cli.common import CliError, print_json, table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("drill", help="game-day scenarios generated from the manual: list them, show one",
                       description="Drill scenarios generated from the manual's tables (manual/drills.py).")
    s = p.add_subparsers(dest="drill_cmd", metavar="ACTION", required=True)
    ls = s.add_parser("list", help="every scenario: name, kind, what it rehearses")
    ls.add_argument("--kind", choices=_kinds(), help="only scenarios of this kind")
    ls.add_argument("--json", action="store_true", help="the scenarios as JSON (faults and SLAs included)")
    ls.set_defaults(func=cmd_list)
    sh = s.add_parser("show", help="one scenario: its fault, what it teaches, its SLAs at --speed")
    sh.add_argument("name", metavar="NAME", help="a scenario's name (`drill list`)")
    sh.add_argument("--speed", type=_speed, default=1.0, metavar="N",
                    help="divide every clock by N (1 = the manual's; at most 600)")
    sh.add_argument("--json", action="store_true", help="the scenario as JSON, SLAs at --speed")
    sh.set_defaults(func=cmd_show)
    st = s.add_parser("start", help="run a P0 scenario: a drill incident with scaled SLAs, then its fault at the core")
    st.add_argument("name", metavar="NAME", help="a P0 scenario (`drill list --kind p0`)")
    st.add_argument("--speed", type=_speed, default=1.0, metavar="N",
                    help="divide every clock by N (1 = the manual's; re-pages stay >= 10 s)")
    st.add_argument("--as", dest="actor", required=True, metavar="OPERATOR", help="who runs the drill (recorded)")
    st.set_defaults(func=cmd_start)
    en = s.add_parser("end", help="end a drill: clear the fault at the trading core (then resolve the incident)")
    en.add_argument("id", metavar="ID", help="the drill incident's workflow id")
    en.set_defaults(func=cmd_end)
    rp = s.add_parser("report", help="how a P0 drill went: acknowledge, first action, resolve against its scaled SLAs")
    rp.add_argument("id", metavar="ID", help="the drill incident's workflow id (open or ended)")
    rp.add_argument("--json", action="store_true", help="the scores as JSON")
    rp.set_defaults(func=cmd_report)


def _kinds() -> tuple[str, ...]:
    from manual.drills import KINDS

    return KINDS


def _speed(raw: str) -> float:
    from manual.drills import MAX_SPEED

    try:
        v = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number") from None
    if not 1 <= v <= MAX_SPEED:
        raise argparse.ArgumentTypeError(f"{raw}: between 1 (the manual's clocks) and {MAX_SPEED}")
    return v


def _scenario(name: str):
    from manual import drills

    try:
        return drills.get(name)
    except drills.UnknownScenario as e:
        raise CliError(str(e), 2) from None


def _secs(td) -> str:
    s = td.total_seconds()
    return f"{s / 60:g} min" if s >= 60 and s % 60 == 0 else f"{s:g} s"


def cmd_list(args) -> int:
    from manual import drills

    found = [s for s in drills.scenarios() if args.kind in (None, s.kind)]
    if args.json:
        print_json([s.model_dump(mode="json") for s in found])
        return 0
    print(table([[s.name, s.kind, s.title] for s in found], ["NAME", "KIND", "REHEARSES"]))
    print(f"\n{len(found)} scenarios. `rollbackctl drill show NAME --speed N` for one: its fault, what it teaches, "
          "its SLAs.")
    return 0


def cmd_show(args) -> int:
    from manual import drills

    sc = _scenario(args.name)
    slas = drills.scaled(sc.slas, args.speed)
    if args.json:
        print_json({**sc.model_dump(mode="json"), "speed": args.speed,
                    "slas": [s.model_dump(mode="json") for s in slas]})
        return 0
    print(f"{sc.name}: {sc.title}\n\n{sc.teaches}\n")
    assignments = " ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in sc.fault.items())
    print(f"Fault (the trading core's fault API): rollbackctl sim fault {assignments}")
    if slas:
        speed = "" if args.speed == 1 else f" at speed {args.speed:g} (the manual's / {args.speed:g})"
        print(f"\nScored against{speed}:")
        for s in slas:
            print(f"  {s.name:<16} within {_secs(s.within):<10} {s.what}")
    else:
        print("\nNo human clock: it is scored on whether it rolled back on its own and paged.")
    return 0


async def cmd_start(args) -> int:
    from datetime import datetime, timezone

    from temporalio.client import WorkflowExecutionStatus
    from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
    from temporalio.exceptions import WorkflowAlreadyStartedError
    from temporalio.service import RPCError

    from activities.monitor import MonitorSettings
    from contracts.incidents import ConditionReport, IncidentInput, incident_workflow_id
    from core.settings import TemporalSettings
    from core.temporal_client import connect
    from manual import alerts, drills
    from rollbackctl.cli.common import links, switch_store
    from rollbackctl.cli.sim_cmds import faults_call

    sc = _scenario(args.name)
    if sc.kind != "p0":
        raise CliError(f"{sc.name}: `drill start` runs P0 scenarios so far; run this one by hand: `rollbackctl drill "
                       f"show {sc.name} --speed N` gives its fault and SLAs (docs/runbook.md, \"Drills\")", 2)
    async with switch_store() as store:
        env = await store.environment()
    if env == "production":
        raise CliError(f"{store.prefix} is marked production: drills never run there (use a staging or dev stack)", 3)
    await faults_call("GET")  # a core without the fault API (production) is refused here, before anything starts
    rule = alerts.get(sc.rule)
    symbol = drills.DRILL_SYMBOL if rule.per_symbol else None
    wid = incident_workflow_id(rule.id, symbol, MonitorSettings().namespace)
    client = await connect()
    try:
        desc = await client.get_workflow_handle(wid).describe()
        if desc.status == WorkflowExecutionStatus.RUNNING:
            raise CliError(f"{wid} is open (a real incident or another drill): no drill on top of it", 4)
    except RPCError:
        pass  # none yet
    values = {m: (v.get(symbol) if isinstance(v, dict) else v) for m, v in sc.fault.items()}
    now = datetime.now(timezone.utc)
    detail = f"[DRILL] {sc.name} at speed {args.speed:g}, run by {args.actor}"
    inp = IncidentInput(rule=rule.id, symbol=symbol, detected_at=now, started_at=now, values=values, detail=detail,
                        timings=drills.incident_timings(rule, args.speed), drill=True)
    try:  # FAIL, not the monitor's USE_EXISTING: a drill never merges into an incident opened meanwhile
        h = await client.start_workflow(
            "IncidentWorkflow", inp, id=wid, task_queue=TemporalSettings().task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL, id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE)
    except WorkflowAlreadyStartedError:
        raise CliError(f"{wid} was opened meanwhile (a real incident or another drill): no drill on top of it", 4) from None
    await h.signal("condition", ConditionReport(firing=True, at=now, values=values, detail=detail))
    try:
        faults = await faults_call("POST", sc.fault)
    except CliError as e:
        await client.get_workflow_handle(wid).terminate(f"drill abandoned: its fault was not injected ({e})")
        raise CliError(f"{e} (the drill incident {wid} was ended; nothing else changed)", e.exit_code) from None
    print(f"[DRILL] {sc.title} at speed {args.speed:g}: the incident is open and the fault is in at the trading core "
          f"({', '.join(f'{k}={v}' for k, v in sorted(faults.items()))}).")
    for sla in drills.scaled(sc.slas, args.speed):
        print(f"  {sla.name:<13} due {(now + sla.within).strftime('%H:%M:%S')} UTC (within {_secs(sla.within)})")
    print(f"Answer it as at 3 a.m.: `rollbackctl incidents`, `rollbackctl ack {wid} --as YOU`, the checklist with "
          f"`rollbackctl tick`. End it: `rollbackctl drill end {wid}`, then `rollbackctl resolve {wid} --as YOU`.")
    print(links(wid))
    return 0


async def cmd_end(args) -> int:
    from temporalio.service import RPCError

    from contracts.incidents import IncidentState
    from core.temporal_client import connect
    from rollbackctl.cli.common import links
    from rollbackctl.cli.sim_cmds import faults_call

    client = await connect()
    try:
        st = await client.get_workflow_handle(args.id).query("state", result_type=IncidentState)
    except RPCError as e:
        raise CliError(f"{args.id}: not an open incident ({e.message})", 4) from None
    if not st.drill:
        raise CliError(f"{args.id} is a real incident, not a drill: `drill end` leaves it and the core alone", 4)
    await faults_call("DELETE")
    print(f"[DRILL] fault cleared at the trading core; the monitor sees the clear. Resolve it: "
          f"`rollbackctl resolve {args.id} --as YOU`.\n{links(args.id)}")
    return 0


def score(st, inp, decisions) -> dict:
    """A P0 drill's scores from its incident's state, its start input (the scaled SLAs it ran with) and its
    decision records: each measured from the first page, against the SLA the drill ran with."""
    base = st.sla.page_submitted_at or st.detected_at

    def measure(name: str, at, by, sla) -> dict:
        took = (at - base).total_seconds() if at else None
        ok = None if sla is None else (took is not None and took <= sla.total_seconds())
        return {"measure": name, "at": at.isoformat() if at else None, "by": by, "after_page_s": took,
                "sla_s": sla.total_seconds() if sla is not None else None,
                "result": "-" if ok is None and took is not None else ("met" if ok else
                                                                       ("not yet" if took is None else "missed"))}

    return {
        "workflow_id": st.workflow_id, "rule": st.rule, "detail": st.detail, "status": st.status,
        "paged_at": base.isoformat(),
        "measures": [measure("acknowledged", st.sla.acked_at, st.sla.acked_by, inp.timings.ack),
                     measure("first action", st.sla.action_at, st.sla.action_by, inp.timings.action),
                     measure("resolved", st.resolved_at, st.resolved_by, None)],
        "escalations": [{"at": e.at.isoformat(), "level": e.level, "why": e.why} for e in st.sla.escalations],
        "refused": [{"at": d.at.isoformat(), "kind": d.kind, "actor": d.actor, "why": d.detail}
                    for d in decisions if not d.accepted] + [{"why": r} for r in st.refused],
    }


async def cmd_report(args) -> int:
    from temporalio.service import RPCError

    from contracts.incidents import IncidentInput, IncidentState
    from contracts.progress import Progress
    from core.temporal_client import connect
    from rollbackctl.cli.common import links

    client = await connect()
    h = client.get_workflow_handle(args.id)
    try:
        st = await h.query("state", result_type=IncidentState)
        prog = await h.query("progress", result_type=Progress)
        async for ev in h.fetch_history_events():  # the first event: the input, with the SLAs it ran with
            (inp,) = await client.data_converter.decode(
                ev.workflow_execution_started_event_attributes.input.payloads, [IncidentInput])
            break
    except RPCError as e:
        raise CliError(f"{args.id}: no incident to report on ({e.message})", 4) from None
    if not st.drill:
        raise CliError(f"{args.id} is a real incident, not a drill: nothing to score", 4)
    sc = score(st, inp, prog.decisions)
    if args.json:
        print_json(sc)
        return 0
    print(f"# Drill report: {st.rule} ({st.workflow_id})\n\n{st.detail}. Status: {st.status}. "
          f"First page {sc['paged_at']}.\n")
    rows = [[m["measure"], m["by"] or "", f"{m['after_page_s']:.1f} s" if m["after_page_s"] is not None else "",
             f"{m['sla_s']:g} s" if m["sla_s"] is not None else "", m["result"]] for m in sc["measures"]]
    print("| measure | by | after the page | SLA (scaled) | result |\n|---|---|---:|---:|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print("\n## Escalations\n" + ("\n".join(f"- level {e['level']} at {e['at']}: {e['why']}" for e in sc["escalations"])
                                  or "- none"))
    print("\n## Refused\n" + ("\n".join(f"- {r.get('kind', 'signal')} by {r.get('actor', '?')}: {r['why']}"
                                          for r in sc["refused"]) or "- none"))
    print(f"\n{links(st.workflow_id)}")
    return 0
