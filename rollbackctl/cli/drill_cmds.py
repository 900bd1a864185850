"""`rollbackctl drill list` / `drill show NAME [--speed N]`: the game-day scenarios, generated from the
manual's tables (manual/drills.py): each P0 rule, each rollback severity and scope, each degradation
level, a canary failing its pass criteria, HL down during a rollback. `show` prints the fault that
rehearses it (ready for `rollbackctl sim fault`), what it teaches and the SLAs it is scored against at
the given speed. No etcd, no Temporal: reading them changes nothing.

`drill start p0-RULE --speed N --as OP` runs a P0 scenario for real: the incident workflow is opened first,
marked a drill (audit records, pages and chat say [DRILL]) with its acknowledge and action SLAs, its
escalation and its recovery clocks divided by N, then the fault is injected at the trading core's fault
API; the P0 monitor's own detection reaches that open incident (it opens by signal-with-start under the
same id). `drill start` of a rollback, degradation, HL-down or canary scenario puts the fault in, starts the
real workflow marked a drill with every clock divided by N, follows it to its end (taking the fault out once
the rollback's change set is applied, or putting HL down only then) and restores the simulator. `drill end
ID` clears the fault; `drill report ID` scores a drill from its workflow. Refused, with nothing started: a
prefix marked production (`init --environment production`), a core without the fault API (production has
none), an incident of that rule already open, a start its operator may not make."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

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
    st = s.add_parser("start", help="run a scenario: its fault at the core, the real workflow with scaled clocks")
    st.add_argument("name", metavar="NAME", help="a scenario (`drill list`): P0, rollback, degradation, HL down, canary")
    st.add_argument("--speed", type=_speed, default=1.0, metavar="N",
                    help="divide every clock by N (1 = the manual's; re-pages stay >= 10 s)")
    st.add_argument("--as", dest="actor", required=True, metavar="OPERATOR", help="who runs the drill (recorded)")
    st.add_argument("--switch", metavar="MODULE",
                    help="a single-module rollback scenario: the module or switch rolled back (default: internalization)")
    st.set_defaults(func=cmd_start)
    en = s.add_parser("end", help="end a drill: clear the fault at the trading core (the run or incident goes on)")
    en.add_argument("id", metavar="ID", help="the drill's workflow id (its incident, rollback or degradation)")
    en.set_defaults(func=cmd_end)
    rp = s.add_parser("report", help="how a drill went: each human step against its scaled SLA, escalations, refusals")
    rp.add_argument("id", metavar="ID", help="the drill's workflow id (open or ended)")
    rp.add_argument("--json", action="store_true", help="the scores as JSON")
    rp.set_defaults(func=cmd_report)
    hi = s.add_parser("history", help="the drills run lately: scenario, who ran it, how it ended, each person's scores")
    hi.add_argument("--operator", metavar="OP", help="only drills OP ran or answered, with OP's own scores")
    hi.add_argument("--limit", type=int, default=20, metavar="N", help="look at the N newest workflows (default 20)")
    hi.add_argument("--json", action="store_true", help="the history as JSON")
    hi.set_defaults(func=cmd_history)


def _kinds() -> tuple[str, ...]:
    from manual.drill_kinds import KINDS

    return KINDS


def _speed(raw: str) -> float:
    from manual.drill_kinds import MAX_SPEED

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


# What a drill's workflow carries as its reason (its incident's detail): written by _drill_reason, read back by
# `drill history` (_DRILL_REASON).
_DRILL_REASON = r"^\[DRILL\] (\S+) at speed ([0-9.]+), run by (\S+)"


def _drill_reason(sc, speed: float, actor: str) -> str:
    return f"[DRILL] {sc.name} at speed {speed:g}, run by {actor}"


def _faults_text(faults: dict) -> str:
    """The faults in force, as `drill start` reports them."""
    return ", ".join(f"{k}={v}" for k, v in sorted(faults.items()))


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
    """P0 scenarios open a drill incident and return; rollback, degradation, HL-down and canary scenarios run
    their workflow and follow it to its end (_start_run, _start_canary)."""
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
    async with switch_store() as store:
        env = await store.environment()
    if env == "production":
        raise CliError(f"{store.prefix} is marked production: drills never run there (use a staging or dev stack)", 3)
    await faults_call("GET")  # a core without the fault API (production) is refused here, before anything starts
    if sc.kind == "canary":
        return await _start_canary(args, sc)
    if sc.kind != "p0":
        return await _start_run(args, sc)
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
    detail = _drill_reason(sc, args.speed, args.actor)
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
          f"({_faults_text(faults)}).")
    for sla in drills.scaled(sc.slas, args.speed):
        print(f"  {sla.name:<13} due {(now + sla.within).strftime('%H:%M:%S')} UTC (within {_secs(sla.within)})")
    print(f"Answer it as at 3 a.m.: `rollbackctl incidents`, `rollbackctl ack {wid} --as YOU`, the checklist with "
          f"`rollbackctl tick`. End it: `rollbackctl drill end {wid}`, then `rollbackctl resolve {wid} --as YOU`.")
    print(links(wid))
    return 0


async def _start_run(args, sc) -> int:
    """A rollback or degradation scenario: the fault goes in (the incident's symptom), the real workflow starts
    marked a drill with every clock divided by the speed, signed like `rollback start` / `degrade`; then this
    command follows it to its end (_follow_run). HL down during a rollback: the fault goes in only once the
    rollback has moved orders to HL."""
    from datetime import datetime, timezone

    from contracts.roles import Role
    from manual import drills, rollback
    from rollbackctl.cli import signing
    from rollbackctl.cli.sim_cmds import faults_call
    from rollbackctl.cli.workflow_cmds import _operator_role, _start

    single = sc.scope is rollback.Scope.SINGLE
    if args.switch and not single:
        raise CliError(f"--switch is for single-module scenarios; {sc.name} has no module to choose", 2)
    incident = f"drill-{sc.name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    reason = _drill_reason(sc, args.speed, args.actor)
    d = drills.scaled_durations(args.speed)
    role = await _operator_role(args.actor)
    if sc.kind == "degradation":
        from manual import degradation
        from workflows.degradation import DegradationWorkflow, degrade_workflow_id
        from workflows.models import DegradeInput

        lvl = degradation.get(sc.level)
        if not role.at_least(lvl.permission):
            raise CliError(f"degradation level {lvl.level} needs {lvl.permission.value}; {args.actor} is {role.value}",
                           3)
        inp = DegradeInput(level=sc.level, incident_id=incident, requested_by=args.actor, reason=reason, durations=d,
                           drill=True)
        wid, run, what, action, critical = (degrade_workflow_id(sc.level, incident), DegradationWorkflow.run,
                                            "degradation", "degrade.start", False)
    else:
        from workflows.models import RollbackInput

        switch = (args.switch or drills.DRILL_MODULE) if single else None
        try:
            rollback.target_changes(sc.scope, switch)
        except (ValueError, KeyError) as e:
            raise CliError(str(e).strip('"'), 2) from None
        if not role.at_least(Role.ON_CALL):
            raise CliError(f"{args.actor} is {role.value}; starting a rollback needs on_call or above", 3)
        inp = RollbackInput(incident_id=incident, summary=reason, severity=sc.severity, scope=sc.scope, switch=switch,
                            requested_by=args.actor, reason=reason, durations=d, drill=True)
        wid, run, what, action = f"rollback-{incident}", "RollbackWorkflow", "rollback", "rollback.start"
        critical = rollback.on_critical_lane(inp.severity)
    inp.proof = signing.start_proof(inp, action, wid)
    later = sc.kind == "hl_down_rollback"
    if not later:
        faults = await faults_call("POST", sc.fault)
        print(f"[DRILL] {sc.title} at speed {args.speed:g}: the fault is in at the trading core "
              f"({_faults_text(faults)}).")
    try:
        await _start(run, inp, wid, what, False, critical=critical)
    except BaseException:
        if not later:
            await faults_call("DELETE")
            print("[DRILL] not started: the fault was taken out again", flush=True)
        raise
    for sla in drills.scaled(sc.slas, args.speed):
        print(f"  {sla.name:<16} within {_secs(sla.within)} of its step ({sla.what})")
    print(f"Answer it as at 3 a.m., from another terminal: `rollbackctl status {wid}`, then what it waits for "
          f"(`rollbackctl confirm|fix|proceed|escalate|withdraw {wid} --as YOU`). This command follows it to its end "
          "and then restores the simulator; Ctrl-C stops following (the run and the fault stay: "
          f"`rollbackctl drill end {wid}`).", flush=True)
    return await _follow_run(wid, sc, later)


async def _start_canary(args, sc) -> int:
    """A canary failing its pass criteria: the fault goes in (a stage's health check fails), the phase's canary
    starts marked a drill at time-scale = speed, signed like `canary start`; this command follows it until it
    ends (it should roll itself back and page: no human clock), restores the simulator and prints the report."""
    from datetime import timedelta

    from core.settings import TemporalSettings
    from core.temporal_client import connect
    from rollbackctl.cli.canary_cmds import follow, resolve_plan, start_canary
    from rollbackctl.cli.common import links, operator_of, switch_store
    from rollbackctl.cli.signing import approval_timeout
    from rollbackctl.cli.sim_cmds import faults_call
    from workflows.canary_models import CanaryInput

    if args.switch:
        raise CliError(f"--switch is for single-module scenarios; {sc.name} runs the manual's {sc.phase} plan", 2)
    plan_in, plan = resolve_plan(sc.phase, None, args.speed)
    need = plan.owner_role()
    reason = _drill_reason(sc, args.speed, args.actor)
    s = TemporalSettings()
    async with switch_store() as store:
        op = await operator_of(store, args.actor)
        if not op.role.at_least(need):
            raise CliError(f"{args.actor} is {op.role.value}; starting {sc.phase} needs a {need.value}", 3)
        inp = CanaryInput(phase=sc.phase, requested_by=args.actor, reason=reason, plan=plan_in, time_scale=args.speed,
                          drill=True, approval_timeout=approval_timeout(at_most=timedelta(days=7)))
        client = await connect(s)
        faults = await faults_call("POST", sc.fault)
        try:
            wid = await start_canary(client, store, inp, s.task_queue)
        except BaseException:
            await faults_call("DELETE")
            print("[DRILL] not started: the fault was taken out again", flush=True)
            raise
    print(f"[DRILL] {sc.title} at speed {args.speed:g}: the fault is in at the trading core "
          f"({_faults_text(faults)}); {plan.title}{plan.scale_note()} started.\n"
          f"{links(wid)}\nIt should roll itself back and page: watch the page arrive, check the rollback landed "
          f"(`rollbackctl switch list`). This command follows it to its end, then restores the simulator; "
          f"Ctrl-C stops following (`rollbackctl drill end {wid}`).", flush=True)
    try:
        await follow(client, wid)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"\n[DRILL] stopped following {wid}: the canary goes on, and so does the fault "
              f"(`rollbackctl drill end {wid}`)", flush=True)
        raise
    await faults_call("DELETE")
    print(f"[DRILL] {wid} ended; the simulator is restored (no fault in force)\n")
    _print_canary_report(score_canary(await _canary_status(client, wid)))
    return 0


async def _canary_status(client, wid: str):
    from temporalio.service import RPCError

    from workflows.canary_models import CanaryStatus

    try:
        return await client.get_workflow_handle(wid).query("status", result_type=CanaryStatus)
    except RPCError as e:
        raise CliError(f"{wid}: its status cannot be read ({e.message}): is a worker running on its task queue?",
                       5) from None


def score_canary(st) -> dict:
    """A canary drill's score: no human clock (the manual: automatic rollback on a failed pass criterion); did it
    roll itself back, at which stage, how long after it started, on which failed checks."""
    first = st.stage_log[0].started_at if st.stage_log else None
    rb = next((r for r in st.stage_log if r.outcome == "rolled_back"), None)
    return {"workflow_id": st.workflow_id, "title": st.title, "status": st.status, "result": st.result,
            "rolled_back_on_its_own": st.result == "rolled_back",
            "stage": rb.stage if rb else None, "why": rb.detail if rb else st.detail,
            "rolled_back_after_s": (rb.ended_at - first).total_seconds() if rb and rb.ended_at and first else None,
            "failed_checks": [", ".join(c.breaches) for c in st.recent_checks if not c.ok]}


def _print_canary_report(sc: dict) -> None:
    print(f"# Drill report: {sc['title']} ({sc['workflow_id']})\n\nStatus: {sc['status']}"
          + (f", {sc['result']}" if sc["result"] not in (None, sc["status"]) else "") + ".\n")
    if sc["rolled_back_on_its_own"]:
        print(f"- rolled itself back at stage {sc['stage']}, {sc['rolled_back_after_s']:.1f} s after it started: "
              f"{sc['why']}")
    else:
        print(f"- did NOT roll itself back ({sc['result'] or sc['status']}): the pass criteria did not catch the fault")
    print(f"- failed checks seen: {len(sc['failed_checks'])}" + (f" (last: {sc['failed_checks'][-1]})"
                                                                  if sc["failed_checks"] else ""))


async def _follow_run(wid: str, sc, later: bool) -> int:
    """Follow a drill run to its end, printing what `status --follow` prints. The fault's life: once the run's
    first change set is applied the fault is taken out (the rollback fixed it), or, HL down during a rollback,
    put in then; a run that changes nothing (non-critical) keeps it to its end. At the end every fault is
    cleared (the simulator restored) and the drill's report printed."""
    from datetime import datetime, timezone

    from temporalio.client import WorkflowExecutionStatus

    from core.temporal_client import connect
    from rollbackctl.cli.sim_cmds import faults_call
    from rollbackctl.cli.workflow_cmds import FollowState, follow_lines, truthful_progress

    client = await connect()
    st, acted = FollowState(), False
    try:
        while True:
            p, temporal, _ = await truthful_progress(client, wid)
            for line in follow_lines(st, p, datetime.now(timezone.utc)):
                print(line)
            if p.applied and not acted:
                acted = True
                if later:
                    faults = await faults_call("POST", sc.fault)
                    print(f"[DRILL] the rollback moved orders to HL; now HL goes down at the trading core "
                          f"({_faults_text(faults)})")
                else:
                    await faults_call("DELETE")
                    print("[DRILL] the change set is applied: the fault is taken out (the rollback fixed it)")
            if temporal != WorkflowExecutionStatus.RUNNING.name.lower():
                break
            sys.stdout.flush()
            # quick until the fault's moment has come (HL must go down during the observation, which lasts
            # 5 min / speed), then at the pace of `status --follow`
            await asyncio.sleep(0.5 if acted else 0.1)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"\n[DRILL] stopped following {wid}: the run goes on, and so does any fault in force "
              f"(`rollbackctl drill end {wid}`, then `rollbackctl withdraw {wid} --as YOU`)", flush=True)
        raise
    await faults_call("DELETE")
    print(f"[DRILL] {wid}: {temporal}" + (f", {p.result}" if p.result else "") + "; the simulator is restored "
          "(no fault in force)\n")
    _print_run_report(score_run(p, await _start_input(client, wid), temporal))
    return 0


# The workflows a drill runs, and the input each starts with (module, class): what it ran with.
_INPUTS = {"IncidentWorkflow": ("contracts.incidents", "IncidentInput"),
           "CanaryWorkflow": ("workflows.canary_models", "CanaryInput"),
           "RollbackWorkflow": ("workflows.models", "RollbackInput"),
           "DegradationWorkflow": ("workflows.models", "DegradeInput")}


async def _start_input(client, wid: str):
    """(workflow type, its start input) from the first event of its history; CliError when there is none or it is
    not a workflow a drill runs."""
    import importlib

    from temporalio.service import RPCError

    try:
        async for ev in client.get_workflow_handle(wid).fetch_history_events():
            a = ev.workflow_execution_started_event_attributes
            break
    except RPCError as e:
        raise CliError(f"{wid}: no such workflow ({e.message})", 4) from None
    wtype = a.workflow_type.name
    if wtype not in _INPUTS:
        raise CliError(f"{wid} is a {wtype}: drills run incidents, rollbacks, degradations and canaries", 4)
    mod, cls = _INPUTS[wtype]
    (inp,) = await client.data_converter.decode(a.input.payloads, [getattr(importlib.import_module(mod), cls)])
    return wtype, inp


async def cmd_end(args) -> int:
    from core.temporal_client import connect
    from rollbackctl.cli.common import links
    from rollbackctl.cli.sim_cmds import faults_call

    client = await connect()
    wtype, inp = await _start_input(client, args.id)
    if not inp.drill:
        what = "incident" if wtype == "IncidentWorkflow" else "run"
        raise CliError(f"{args.id} is a real {what}, not a drill: `drill end` leaves it and the core alone", 4)
    await faults_call("DELETE")
    if wtype == "CanaryWorkflow":
        print(f"[DRILL] fault cleared at the trading core; the canary goes on (`rollbackctl canary abort {args.id} "
              f"--as YOU --reason ...` ends it).\n{links(args.id)}")
    elif wtype == "IncidentWorkflow":
        seen = await _report_clear(client, args.id, inp)
        said = (f"the core reads {seen}: the incident is told so" if seen else
                "the core does not read clear yet: the monitor reports the clear when it does")
        print(f"[DRILL] fault cleared at the trading core; {said}. Resolve it: "
              f"`rollbackctl resolve {args.id} --as YOU`.\n{links(args.id)}")
    else:
        print(f"[DRILL] fault cleared at the trading core; the run goes on: answer it, or end it with "
              f"`rollbackctl withdraw {args.id} --as YOU --reason ...`.\n{links(args.id)}")
    return 0


async def _report_clear(client, wid: str, inp) -> str | None:
    """The monitor reports a clear only for a condition it saw fire (it signals on changes). A facilitator who
    takes the fault out within the rule's reads of hold leaves a drill incident the monitor never saw: nothing
    would ever tell it the clear, and it could never be resolved. So, the fault out, `drill end` reads the core
    once and judges the rule the monitor's own way (its Detector, from the firing state): when the clear
    conditions hold, it sends the incident the report the monitor sends (the monitor's own later one changes
    nothing). The clear it saw (its detail), or None when the core does not read clear yet."""
    from datetime import datetime, timezone

    import httpx

    from activities.monitor import Detector, rule_key
    from activities.trading_core import TradingCoreActivities
    from contracts.incidents import ConditionReport, KeyState, MonitorState
    from contracts.trading_core import ReadHealthInput
    from core.settings import TradingCoreSettings
    from manual import alerts

    rule = alerts.get(inp.rule)
    firing = KeyState(rule=rule.id, symbol=inp.symbol, firing=True)
    try:
        async with httpx.AsyncClient() as http:
            snap = await TradingCoreActivities.from_settings(TradingCoreSettings(), http).read_health(ReadHealthInput())
    except Exception as e:  # the core away: the monitor reports the clear once it reads one
        print(f"(could not read the core's health: {e})", file=sys.stderr)
        return None
    now = datetime.now(timezone.utc)
    changed = Detector(MonitorState(keys={rule_key(rule, inp.symbol): firing}), rules=(rule,)).observe(snap.model_dump(mode="json"), now)
    ks = next((k for k in changed if not k.firing and k.symbol == inp.symbol), None)
    if ks is None:
        return None
    detail = Detector.describe(ks)
    await client.get_workflow_handle(wid).signal(
        "condition", ConditionReport(firing=False, at=now, values=dict(ks.values), detail=detail))
    return detail


def score_run(p, started, temporal: str) -> dict:
    """A rollback or degradation drill's scores from its progress and start input: each human step it waited
    at, how long it waited and who answered, against the time the manual gives that step at the drill's
    speed (manual.drills.await_slas); when the change set was applied and when the run ended, from its start;
    the escalations; the decisions it refused."""
    from manual import drills

    _, inp = started
    slas = drills.await_slas(inp.durations)
    base = p.history[0].started_at if p.history else None

    def after(at) -> float | None:
        return (at - base).total_seconds() if at and base else None

    waits = []
    for h in p.history:
        if h.kind != "await":
            continue
        # who answered: the decisions accepted while it waited (a decision ends a wait in a later workflow
        # task than the one that began it, so strictly after its start); two of them at a two-person step
        who = [d.actor for d in p.decisions if d.accepted and h.started_at < d.at
               and (h.ended_at is None or d.at <= h.ended_at)]
        by = ", ".join(dict.fromkeys(who)) or None
        took = (h.ended_at - h.started_at).total_seconds() if h.ended_at else None
        sla = slas.get(h.name)
        result = ("not yet" if took is None else "no answer" if by is None else "-" if sla is None
                  else "met" if took <= sla.total_seconds() else "missed")
        waits.append({"measure": h.name, "by": by, "outcome": h.outcome, "waited_s": took,
                      "sla_s": sla.total_seconds() if sla is not None else None, "result": result})
    applied = next((h.ended_at for h in p.history if h.kind == "apply_switches" and h.ended_at), None)
    ended = p.history[-1].ended_at if p.history and temporal != "running" else None
    return {
        "workflow_id": p.workflow_id, "kind": p.kind, "detail": inp.reason, "status": temporal, "result": p.result,
        "started_at": base.isoformat() if base else None,
        "applied_after_s": after(applied) if p.applied else None, "ended_after_s": after(ended),
        "waits": waits, "escalations": list(p.escalations),
        "refused": [{"at": d.at.isoformat(), "kind": d.kind, "actor": d.actor, "why": d.detail}
                    for d in p.decisions if _refusal(d)],
    }


def _print_run_report(sc: dict) -> None:
    def secs(v) -> str:
        return f"{v:.1f} s" if v is not None else ""

    print(f"# Drill report: {sc['kind']} ({sc['workflow_id']})\n\n{sc['detail']}. Status: {sc['status']}"
          + (f", {sc['result']}" if sc["result"] else "") + f". Started {sc['started_at']}.\n")
    print(f"- change set applied after {secs(sc['applied_after_s']) or 'nothing applied'}")
    print(f"- ended after {secs(sc['ended_after_s']) or 'not yet'}\n")
    print("| waited at | answered by | waited | SLA (scaled) | result |\n|---|---|---:|---:|---|")
    for w in sc["waits"]:
        print(f"| {w['measure']} | {w['by'] or ''} | {secs(w['waited_s'])} | "
              f"{'' if w['sla_s'] is None else format(w['sla_s'], 'g') + ' s'} | {w['result']} |")
    print("\n## Escalations\n" + ("\n".join(f"- {e}" for e in sc["escalations"]) or "- none"))
    print("\n## Refused\n" + ("\n".join(f"- {r['kind']} by {r['actor']}: {r['why']}" for r in sc["refused"])
                               or "- none"))


def _refusal(d) -> bool:
    """A decision record that is a refused command: not accepted, and not PagerDuty's own acknowledgement seen
    (recorded as a non-decision, kind `pagerduty.*`)."""
    return not d.accepted and not d.kind.startswith("pagerduty.")


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
                    for d in decisions if _refusal(d)] + [{"why": r} for r in st.refused],
    }


async def _scored(client, wid: str, started) -> tuple[str | None, dict]:
    """(how it ended or stands, its scores) for a drill of any kind, read from its workflow (a query: a worker
    must be running on its task queue); CliError (exit 5) when its state cannot be read."""
    from temporalio.service import RPCError

    from contracts.incidents import IncidentState
    from contracts.progress import Progress
    from rollbackctl.cli.workflow_cmds import truthful_progress

    wtype, inp = started
    if wtype == "IncidentWorkflow":
        h = client.get_workflow_handle(wid)
        try:
            st = await h.query("state", result_type=IncidentState)
            prog = await h.query("progress", result_type=Progress)
        except RPCError as e:
            raise CliError(f"{wid}: its state cannot be read ({e.message})", 5) from None
        return st.status, score(st, inp, prog.decisions)
    if wtype == "CanaryWorkflow":
        sc = score_canary(await _canary_status(client, wid))
        return sc["result"] or sc["status"], sc
    p, temporal, note = await truthful_progress(client, wid)
    if not p.history and note:  # no steps to score: say why rather than score nothing
        raise CliError(f"{wid}: {note}", 5)
    sc = score_run(p, started, temporal)
    return sc["result"] or temporal, sc


def _print_incident_report(sc: dict) -> None:
    print(f"# Drill report: {sc['rule']} ({sc['workflow_id']})\n\n{sc['detail']}. Status: {sc['status']}. "
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


async def cmd_report(args) -> int:
    from core.temporal_client import connect
    from rollbackctl.cli.common import links

    client = await connect()
    started = await _start_input(client, args.id)
    wtype, inp = started
    if not inp.drill:
        raise CliError(f"{args.id} is real, not a drill: nothing to score", 4)
    _, sc = await _scored(client, args.id, started)
    if args.json:
        print_json(sc)
        return 0
    {"IncidentWorkflow": _print_incident_report, "CanaryWorkflow": _print_canary_report}.get(
        wtype, _print_run_report)(sc)
    print(f"\n{links(args.id)}")
    return 0


def _scores(wtype: str, st) -> list[dict]:
    """One row per scored step of a drill: (measure, by, seconds, SLA seconds, result), whatever its kind."""
    if wtype == "IncidentWorkflow":
        return [{"measure": m["measure"], "by": m["by"], "took_s": m["after_page_s"], "sla_s": m["sla_s"],
                 "result": m["result"]} for m in st["measures"]]
    if wtype == "CanaryWorkflow":
        return [{"measure": "rolled itself back", "by": None, "took_s": st["rolled_back_after_s"], "sla_s": None,
                 "result": "yes" if st["rolled_back_on_its_own"] else "NO"}]
    return [{"measure": w["measure"], "by": w["by"], "took_s": w["waited_s"], "sla_s": w["sla_s"],
             "result": w["result"]} for w in st["waits"]]


async def _drill_entry(client, wid: str) -> dict | None:
    """A drill's history row (None: not a drill): its scenario, speed, who ran it, its end and its scores."""
    import re

    from core.aio import within
    from rollbackctl.cli.workflow_cmds import QUERY_TIMEOUT_S

    wtype, inp = await _start_input(client, wid)
    if not inp.drill:
        return None
    reason = getattr(inp, "detail", None) or getattr(inp, "reason", "") or ""
    m = re.match(_DRILL_REASON, reason)
    entry = {"workflow_id": wid, "kind": wtype, "scenario": m.group(1) if m else "-",
             "speed": float(m.group(2)) if m else None,
             "run_by": m.group(3) if m else getattr(inp, "requested_by", None), "status": None, "scores": [],
             "note": None}

    try:  # a query needs a worker on the drill's task queue; one that answers nothing must not stall the list
        entry["status"], sc = await within(2 * QUERY_TIMEOUT_S, _scored(client, wid, (wtype, inp)))
        entry["scores"] = _scores(wtype, sc)
    except asyncio.TimeoutError:
        entry["note"] = f"no answer within {2 * QUERY_TIMEOUT_S:g} s: is a worker running on its task queue?"
    except CliError as e:  # listed, with why it is not scored
        entry["note"] = str(e)
    except Exception as e:  # noqa: BLE001 - one unreadable drill must not hide the others
        entry["note"] = f"its state cannot be read ({type(e).__name__}: {str(e)[:120]})"
    return entry


async def cmd_history(args) -> int:
    """The drills among the newest --limit workflows (Temporal's visibility, newest first); with --operator,
    those OP ran or answered, and only OP's scores."""
    from temporalio.service import RPCError

    from core.temporal_client import connect

    if not 1 <= args.limit <= 500:
        raise CliError("--limit: between 1 and 500", 2)
    client = await connect()
    types = ", ".join(f"'{t}'" for t in _INPUTS)
    try:
        found = [wf async for wf in client.list_workflows(f"WorkflowType IN ({types})", limit=args.limit)]
    except RPCError as e:
        raise CliError(f"cannot list workflows: {e.message}", 5) from None
    gate = asyncio.Semaphore(16)  # read at most 16 at once: a drill whose worker is gone waits out its timeout

    async def entry(wf):
        async with gate:
            try:
                e = await _drill_entry(client, wf.id)
            except CliError:  # gone since it was listed, or not a workflow a drill runs
                return None
        if e is not None:
            e["started"] = wf.start_time.isoformat() if wf.start_time else None
        return e

    entries = []
    for e in await asyncio.gather(*(entry(wf) for wf in found)):
        if e is None:
            continue
        if args.operator:
            mine = [s for s in e["scores"] if s["by"] and args.operator in s["by"].split(", ")]
            if e["run_by"] != args.operator and not mine:
                continue
            e["scores"] = mine
        entries.append(e)
    if args.json:
        print_json(entries)
        return 0
    who = f" by or answered by {args.operator}" if args.operator else ""
    if not entries:
        print(f"no drills{who} among the newest {args.limit} workflows")
        return 0
    print(f"# Drills{who} (newest first, among the newest {args.limit} workflows)\n")
    for e in entries:
        speed = f" at speed {e['speed']:g}" if e["speed"] else ""
        print(f"- {e['started'] or '?'}  {e['scenario']}{speed}, run by {e['run_by']}: {e['status'] or '?'}  "
              f"({e['workflow_id']})")
        for s in e["scores"]:
            took = f"{s['took_s']:.1f} s" if s["took_s"] is not None else "-"
            sla = f" (SLA {s['sla_s']:g} s)" if s["sla_s"] is not None else ""
            print(f"    {s['measure']:<18} {s['by'] or '':<14} {took}{sla}  {s['result']}")
        if e["note"]:
            print(f"    not scored: {e['note']}")
    return 0
