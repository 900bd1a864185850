"""`rollbackctl canary start|status|pause|resume|promote|abort|extend|plan`: Phase 2 / Phase 3 canaries.

A canary's workflow id is `canary-<phase>-<n>`. ID arguments take that id or a phase name (the
phase's latest canary; for decisions it must be running).

One canary per phase at a time, without a race between two starters:
- `<prefix>canary/<phase>/seq` in etcd holds the highest n started (bookkeeping, not a switch);
- a start reads n; if `canary-<phase>-<n>` is running (DescribeWorkflowExecution, strongly
  consistent; not the eventually consistent visibility list) it is refused;
- otherwise it starts `canary-<phase>-<n+1>` with id_conflict_policy FAIL and id_reuse_policy
  REJECT_DUPLICATE: of two starters racing for the same n+1, Temporal lets exactly one create it;
  the other gets WorkflowAlreadyStarted, looks again and finds it running (refused) or finished
  (takes n+2);
- the canary's workflow then moves the counter forward (its worker holds etcd's write credentials;
  compare-and-swap, only ever up). A counter left behind (the workflow not yet at that step) costs the
  next starter one more look: it finds n+1 taken and tries n+2.
Ids are started in order, so the newest id is the only one that can be running.

With signing on, the start is signed ("canary.start") for the exact id tried, signed again for each
attempt. A plan under the two-person rule (Phase 3 turns `global_betting_enabled` on) then waits for
a second owner's signed approval, `rollbackctl confirm <id> --as OTHER`, or starts alone with
`--break-glass REASON` (a super admin; paged to everyone, marked in the audit).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from pathlib import Path

from rollbackctl.cli.common import CliError, print_json

PHASES = ("phase2", "phase3")
DECISIONS = {
    "pause": "hold the current stage (its time stops; checks go on); on_call or above",
    "resume": "resume a paused canary; risk_manager or above",
    "promote": "end the current stage's wait now (and pass its gate); risk_manager or above",
    "abort": "roll back to the Phase 1 snapshot now (needs --reason); risk_manager or above",
    "extend": "lengthen the current stage (--by 12h); on_call or above",
}


def seq_key(prefix: str, phase: str) -> str:
    return f"{prefix}canary/{phase}/seq"


def _time_scale(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 1 <= v <= 10_000_000:
        raise argparse.ArgumentTypeError("--time-scale is between 1 and 10000000 (14400: 10 days in 1 minute)")
    return v


def register(sub: argparse._SubParsersAction) -> None:
    from rollbackctl.cli.workflow_cmds import duration

    c = sub.add_parser("canary", help="Phase 2 / Phase 3 canaries: staged promotion with automatic rollback")
    cs = c.add_subparsers(dest="canary_cmd", metavar="SUBCOMMAND", required=True)

    p = cs.add_parser("start", help="start a canary (starting it approves its plan: you need the owner role of "
                                    "every switch it touches)")
    p.add_argument("phase", choices=PHASES)
    p.add_argument("--as", dest="actor", required=True, metavar="OPERATOR")
    p.add_argument("--plan", type=Path, metavar="FILE", help="a plan as JSON (see `canary plan PHASE --json`)")
    p.add_argument("--time-scale", type=_time_scale, default=1.0, metavar="N",
                   help="run N times faster (every duration divided by N; recorded in the audit). 14400: 10 days "
                        "in a minute")
    p.add_argument("--reason", default="", help="why now (in the start notification)")
    p.add_argument("--drill", action="store_true", help="practice run: [DRILL] in audit records and pages")
    p.add_argument("--break-glass", metavar="REASON",
                   help="super admin: start a plan under the two-person rule without a second approval (paged to "
                        "everyone, audited)")
    p.add_argument("--follow", action="store_true", help="print progress until the canary ends")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan, who may start it and the approvals it needs; start nothing")
    p.set_defaults(func=cmd_start)

    p = cs.add_parser("plan", help="show a phase's plan: stages, profiles, pass criteria, gates and their reasons")
    p.add_argument("phase", choices=PHASES)
    p.add_argument("--plan", type=Path, metavar="FILE", help="validate and show this plan file instead")
    p.add_argument("--time-scale", type=_time_scale, default=1.0, metavar="N")
    p.add_argument("--json", action="store_true", help="the plan as JSON (edit it, start it with --plan)")
    p.set_defaults(func=cmd_plan)

    p = cs.add_parser("status", help="where a canary is, what it waits for, its recent checks")
    p.add_argument("target", metavar="ID|PHASE")
    p.add_argument("--json", action="store_true")
    p.add_argument("--follow", action="store_true", help="keep printing changes until the canary ends")
    p.set_defaults(func=cmd_status)

    for kind, help_ in DECISIONS.items():
        p = cs.add_parser(kind, help=help_)
        p.add_argument("target", metavar="ID|PHASE")
        p.add_argument("--as", dest="actor", required=True, metavar="OPERATOR")
        p.add_argument("--reason", default="")
        if kind == "extend":
            p.add_argument("--by", type=duration, required=True, help="how much longer, e.g. 12h, 1d")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=cmd_decision, kind=kind)


# -- plans ------------------------------------------------------------------------------------------
def resolve_plan(phase: str, plan_file: Path | None, time_scale: float):
    """(the plan given to the workflow or None for the manual's, the plan as it will run)."""
    from pydantic import ValidationError

    from manual import canary

    if plan_file is None:
        return None, canary.plan_for(phase, time_scale)
    try:
        text = plan_file.read_text()
    except OSError as e:
        raise CliError(f"cannot read --plan {plan_file}: {e.strerror}", 2) from None
    try:
        plan = canary.load_plan(text, phase)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        raise CliError(f"--plan {plan_file}: {len(e.errors())} error(s); first at {where or '(plan)'}: "
                       f"{first.get('msg')}", 2) from None
    except ValueError as e:
        raise CliError(f"--plan {plan_file}: {e}", 2) from None
    return plan, plan.scaled(time_scale)


async def cmd_plan(args) -> int:
    from manual import canary

    _, plan = resolve_plan(args.phase, args.plan, args.time_scale)
    if args.json:
        print(plan.model_dump_json(indent=2))
    else:
        print(canary.describe(plan))
    return 0


# -- starting: one canary per phase ------------------------------------------------------------------
async def _describe_status(client, wid: str):
    """The workflow's status name ('RUNNING', 'COMPLETED', ...) or None when there is no such workflow."""
    from temporalio.service import RPCError, RPCStatusCode

    try:
        desc = await client.get_workflow_handle(wid).describe()
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return desc.status.name if desc.status else None


async def _read_seq(etcd, key: str):
    kv = await etcd.get(key)
    return kv, (int(kv.value) if kv else 0)


async def start_canary(client, store, inp, task_queue: str) -> str:
    """Start the next canary of `inp.phase`; refuses (exit 4) while one of that phase runs. With signing on
    the start is signed for the id tried (a new signature, and nonce, per attempt). The CLI only reads etcd:
    the canary's workflow moves the phase's counter (operators' etcd users are read-only)."""
    from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
    from temporalio.exceptions import WorkflowAlreadyStartedError

    from rollbackctl.cli.signing import start_proof
    from workflows.canary import CanaryWorkflow
    from workflows.canary_models import canary_workflow_id

    _, n = await _read_seq(store.etcd, seq_key(store.prefix, inp.phase))
    for _ in range(50):
        if n:
            latest = canary_workflow_id(inp.phase, n)
            if await _describe_status(client, latest) == "RUNNING":
                raise CliError(f"a {inp.phase} canary is already running: {latest} (one per phase; see "
                               f"`rollbackctl canary status {inp.phase}`, or abort it first)", 4)
        wid = canary_workflow_id(inp.phase, n + 1)
        this = inp.model_copy(update={"seq": n + 1})  # the worker moves the counter to it
        signed = this.model_copy(update={"proof": start_proof(this, "canary.start", wid)})
        try:
            await client.start_workflow(
                CanaryWorkflow.run, signed, id=wid, task_queue=task_queue,
                static_summary=f"{inp.phase} canary by {inp.requested_by}"[:200],  # the Web UI's list
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            )
            return wid
        except WorkflowAlreadyStartedError:
            # another starter took n+1 (running: refused on the next look), or it exists and finished while
            # the counter lags behind it (its workflow had not moved it yet): look at the next id
            n += 1
    raise CliError(f"could not start a {inp.phase} canary: ids contended; try again", 4)


def links(wid: str) -> str:
    from core.settings import TemporalSettings

    return f"workflow {wid}\nWeb UI   {TemporalSettings().workflow_url(wid)}"


def two_person_note(plan, break_glass: str | None) -> str | None:
    """What the start of `plan` waits for under the two-person rule (signing on), from its stage profiles.
    (The workflow also counts the rollback to its Phase 1 snapshot, known only when it starts.)"""
    from manual import approvals

    names = sorted({n for st in plan.stages for n in approvals.two_person_changes(st.profile)})
    if not names:
        return None
    if break_glass:
        return (f"BREAK-GLASS: {', '.join(names)} fall(s) under the two-person rule; started without a second "
                "approval: paged to every escalation level and marked in the audit")
    return (f"two-person rule: the plan sets {', '.join(names)}: it applies nothing until a second "
            f"{plan.owner_role().value} approves the start: rollbackctl confirm ID --as OTHER")


async def cmd_start(args) -> int:
    from datetime import timedelta

    from manual import switches
    from manual.canary import human
    from contracts.roles import Role
    from rollbackctl.cli.common import operator_of, switch_store
    from rollbackctl.cli.signing import approval_timeout, signing_on
    from core.settings import TemporalSettings
    from core.temporal_client import connect
    from workflows.canary_models import CanaryInput

    plan_in, plan = resolve_plan(args.phase, args.plan, args.time_scale)
    need = plan.owner_role()
    if args.break_glass is not None and not args.break_glass.strip():
        raise CliError("--break-glass needs a reason", 2)
    s = TemporalSettings()
    async with switch_store() as store:
        op = await operator_of(store, args.actor)
        if not op.role.at_least(need):
            owned = [k for k in plan.touched() if switches.get(k).permission is need]
            raise CliError(f"{args.actor} is {op.role.value}; starting {args.phase} approves its plan, which changes "
                           f"{', '.join(owned)} (owned by {need.value}): it needs a {need.value}", 3)
        if args.break_glass is not None and op.role is not Role.SUPER_ADMIN:
            raise CliError(f"{args.actor} is {op.role.value}; --break-glass needs a super_admin", 3)
        if args.dry_run:
            from manual import canary

            print(f"DRY RUN, nothing started: {plan.title}{plan.scale_note()}, approved by {args.actor} "
                  f"({op.role.value}; starting it needs {need.value})")
            note = two_person_note(plan, args.break_glass) if signing_on() else None
            print(f"  approval: {note}" if note else "  approval: none beyond yours")
            print(canary.describe(plan))
            return 0
        inp = CanaryInput(phase=args.phase, requested_by=args.actor, reason=args.reason, plan=plan_in,
                          time_scale=args.time_scale, drill=args.drill, break_glass=args.break_glass,
                          approval_timeout=approval_timeout(at_most=timedelta(days=7)))
        signing = signing_on()
        client = await connect(s)
        wid = await start_canary(client, store, inp, s.task_queue)
    print(f"started {plan.title}{plan.scale_note()}, approved by {args.actor} ({op.role.value})")
    note = two_person_note(plan, args.break_glass) if signing else None
    if note:
        print(note.replace("confirm ID", f"confirm {wid}")
              + ("" if args.break_glass else f" (within {human(inp.approval_timeout)})"))
    for st in plan.stages:
        gate = f"; then {st.gate.min_role.value} promotes" if st.gate else ""
        print(f"  stage {st.number} {st.name:<20} {human(st.duration):>6}  "
              + (", ".join(f"{k}={switches.get(k).render(v)}" for k, v in st.profile.items()) or "(no switch change)")
              + gate)
    print(links(wid))
    if args.follow:
        return await follow(client, wid)
    print(f"follow it with: rollbackctl canary status {wid} --follow")
    return 0


# -- the others ------------------------------------------------------------------------------------------
async def resolve_target(client, store, target: str, running: bool) -> str:
    from workflows.canary_models import canary_workflow_id

    if target in PHASES:
        _, n = await _read_seq(store.etcd, seq_key(store.prefix, target))
        if n == 0:
            raise CliError(f"no {target} canary has been started", 2)
        wid = canary_workflow_id(target, n)
        if running:
            st = await _describe_status(client, wid)
            if st != "RUNNING":
                raise CliError(f"no {target} canary is running (the latest, {wid}, is {(st or 'gone').lower()})", 4)
        return wid
    if re.fullmatch(r"canary-phase[23]-\d+", target):
        return target
    raise CliError(f"{target!r}: give a canary id (canary-phase3-2) or a phase ({', '.join(PHASES)})", 2)


async def cmd_decision(args) -> int:
    from temporalio.client import WorkflowUpdateFailedError
    from temporalio.service import RPCError

    from rollbackctl.cli.common import switch_store
    from core.temporal_client import connect
    from workflows.canary_models import CanaryDecision

    client = await connect()
    async with switch_store() as store:
        wid = await resolve_target(client, store, args.target, running=True)
    d = CanaryDecision(actor=args.actor, reason=args.reason, extend_by=getattr(args, "by", None))
    try:
        from rollbackctl.cli.signing import signed_decision

        d = await signed_decision(client, wid, args.kind, d)  # signing on: bound to the canary, its step and kind
        ack = await client.get_workflow_handle(wid).execute_update(args.kind, d, result_type=dict)
    except WorkflowUpdateFailedError as e:
        from rollbackctl.cli.common import refusal

        raise await refusal(client, e, args.kind, wid, args.actor) from None
    except RPCError as e:
        raise CliError(f"{wid}: {e.message}", 4 if "complete" in e.message.lower() else 5) from None
    from rollbackctl.cli.common import report_action

    report_action(args, wid, args.kind, ack.get("message", "accepted"))
    return 0


def render(s) -> str:
    from manual.canary import human

    lines = [("[DRILL] " if s.drill else "") + f"{s.workflow_id}  {s.title}  [run {s.run}]"
             + (f"  time-scale {s.time_scale:g}" if s.time_scale != 1 else "")]
    if s.stage is not None:
        lines.append(f"status: {s.status}   stage {s.stage}/{s.stages} {s.stage_name} (days {s.stage_days})"
                     + (f"   {human(s.time_left)} left of {human(s.stage_duration)}" if s.time_left is not None else ""))
    else:
        lines.append(f"status: {s.status}")
    lines.append(f"why waiting: {s.waiting_for}")
    for r in s.stage_log:
        span = f"{r.started_at:%m-%d %H:%M}" + (f" -> {r.ended_at:%m-%d %H:%M}" if r.ended_at else " -> ...")
        audit = f"  audit {r.applied.audit_id}" if r.applied else ""
        lines.append(f"  stage {r.stage} {r.name:<20} {r.outcome or 'running':<11} {span}{audit}"
                     + (f"  {r.detail}" if r.detail and r.outcome not in ("passed",) else ""))
    for e in s.extensions:
        lines.append(f"  extended: {e}")
    if s.recent_checks:
        lines.append(f"recent checks ({s.failed_in_a_row} failed in a row):")
        for c in s.recent_checks[-5:]:
            lines.append(f"  {c.at:%m-%d %H:%M:%S}  " + ("ok" if c.ok else "FAILED " + "; ".join(c.breaches)))
    if s.detail and s.result:
        lines.append(f"detail: {s.detail}")
    return "\n".join(lines)


async def _status(client, wid: str):
    from workflows.canary_models import CanaryStatus

    return await client.get_workflow_handle(wid).query("status", result_type=CanaryStatus)


async def follow(client, wid: str) -> int:
    """Print each change of stage, part or status until the canary ends (exit 0 only if it passed)."""
    last = None
    while True:
        s = await _status(client, wid)
        key = (s.stage, s.part, s.status, len(s.stage_log))
        if key != last:
            last = key
            where = f"stage {s.stage}/{s.stages} {s.stage_name}" if s.stage else ""
            print(f"  {s.status:<13} {where:<32} {s.waiting_for}")
            sys.stdout.flush()
        if s.result is not None:
            print(render(s))
            return 0 if s.result == "passed" else 1
        await asyncio.sleep(0.5)


async def cmd_status(args) -> int:
    from temporalio.service import RPCError

    from rollbackctl.cli.common import switch_store
    from core.temporal_client import connect

    client = await connect()
    async with switch_store() as store:
        wid = await resolve_target(client, store, args.target, running=False)
    if args.follow:
        print(links(wid))
        return await follow(client, wid)
    try:
        s = await _status(client, wid)
    except RPCError as e:
        raise CliError(f"{wid}: {e.message}", 5 if "not found" not in e.message.lower() else 2) from None
    if args.json:
        print_json(s.model_dump(mode="json"))
    else:
        print(render(s))
        print(links(wid))
    return 0

