"""On-call commands: `rollback start`, `degrade`, `confirm|proceed|cancel|escalate|fix`, `status`.

Each prints the workflow id and its Web UI link. ID arguments take a workflow id or an incident id.
With signing on (the default) starts and decisions are signed with the operator's private key
(rollbackctl/cli/signing.py): a decision is bound to the workflow, the step it waits at and its kind.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from core.aio import within
from rollbackctl.cli.common import CliError, print_json, switch_store

_DUR = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
WORKFLOW_PREFIXES = ("rollback-", "degrade-", "canary-", "incident-", "monitor", "change-", "emergency-")


def duration(text: str) -> timedelta:
    m = _DUR.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 500ms, 30s, 5m, 1h")
    td = timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    if td <= timedelta(0):
        raise argparse.ArgumentTypeError("a duration must be positive")
    return td


def _durations_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("timings (the manual's by default; shorter for drills and demos)")
    g.add_argument("--observe", type=duration, help="observation after the change (default 5m)")
    g.add_argument("--interval", type=duration, help="health-check interval (default 15s)")
    g.add_argument("--window", type=duration, help="data-inconsistency decision window (default 5m)")
    g.add_argument("--confirm-sla", type=duration, help="re-page when unconfirmed after (default 10m)")
    g.add_argument("--restore-observe", type=duration, help="observation of the 5%% restore (default 5m)")
    g.add_argument("--breaches", type=int, help="consecutive failed checks that count as a breach (default 3)")
    g.add_argument("--drill", action="store_true", help="practice run: marked [DRILL] in audit records and pages")


def _durations(args):
    from manual.rollback import Durations

    kw = {k: v for k, v in {
        "observe": args.observe, "check_interval": args.interval, "decision_window": args.window,
        "confirm_sla": args.confirm_sla, "restore_observe": args.restore_observe,
        "consecutive_breaches": args.breaches}.items() if v is not None}
    return Durations(**kw)


def register(sub: argparse._SubParsersAction) -> None:
    rb = sub.add_parser("rollback", help="the rollback decision tree as a durable workflow")
    r = rb.add_subparsers(dest="rollback_cmd", metavar="SUBCOMMAND", required=True)
    p = r.add_parser("start", help="start a rollback for an incident")
    p.add_argument("--severity", required=True, choices=["critical_path_failure", "data_inconsistency", "non_critical"])
    p.add_argument("--scope", required=True, choices=["single_module", "cross_module", "full_system"])
    p.add_argument("--switch", help="single module: the switch or module (internalization, routing, hedging, "
                                    "liquidation, withdrawals, auto_mode)")
    p.add_argument("--incident", required=True, help="incident id (the workflow id is rollback-<incident>)")
    p.add_argument("--as", dest="actor", required=True, metavar="OPERATOR")
    p.add_argument("--reason", required=True)
    p.add_argument("--summary", help="one line for pages (default: the reason)")
    p.add_argument("--break-glass", metavar="REASON",
                   help="super admin, full_system: apply Level 3 without a second approval (paged to everyone, audited)")
    p.add_argument("--wait", action="store_true", help="follow progress until the workflow ends")
    p.add_argument("--dry-run", action="store_true",
                   help="print the change set, checklist, approvals needed and escalation path; start nothing")
    _durations_args(p)
    p.set_defaults(func=cmd_rollback_start)

    p = sub.add_parser("degrade", help="apply degradation level 1, 2 or 3 as a durable workflow")
    p.add_argument("--dry-run", action="store_true",
                   help="print the level's switches and trading-core controls, checklist, approvals and what "
                        "follows; start nothing")
    p.add_argument("level", type=int, choices=[1, 2, 3])
    p.add_argument("--incident", required=True)
    p.add_argument("--as", dest="actor", required=True, metavar="OPERATOR")
    p.add_argument("--reason", required=True)
    p.add_argument("--break-glass", metavar="REASON",
                   help="super admin, level 3: apply it without a second approval (paged to everyone, audited)")
    p.add_argument("--wait", action="store_true")
    _durations_args(p)
    p.set_defaults(func=cmd_degrade)

    for name, help_ in [
        ("confirm", "confirm the step that waits for it (rollback holds, Level 3 approval, a canary start's "
                    "second approval)"),
        ("proceed", "data inconsistency: roll back now instead of at the end of the window"),
        ("cancel", "data inconsistency: do not roll back (needs --reason)"),
        ("escalate", "escalate: a monitored incident to a rollback, a breach to Level 3, or choose --level 2|3"),
        ("fix", "the fix is deployed: restore through the 5%% canary (or --no-restore)"),
        ("withdraw", "end a waiting rollback, degradation or change request here (its starter, a higher role, or "
                     "whoever could answer the step; needs --reason): what it changed stays, said and paged"),
        ("stay", "at a proposed Level 3: stay at the current level and go on to its confirmation (needs --reason)"),
    ]:
        p = sub.add_parser(name, help=help_)
        p.add_argument("id", help="workflow id or incident id")
        p.add_argument("--as", dest="actor", required=True, metavar="OPERATOR",
                       help="who decides: an operator whose key signs it (rollbackctl operator list)")
        p.add_argument("--reason", required=name in ("withdraw", "stay"), default="",
                       help="why (recorded with the decision and in the pages)" +
                            ("; required" if name in ("withdraw", "stay", "cancel") else ""))
        if name in ("confirm", "escalate", "fix"):
            p.add_argument("--break-glass", metavar="REASON",
                           help="super admin: force a two-person step alone (paged to everyone, audited)")
        if name == "escalate":
            p.add_argument("--level", type=int, choices=[2, 3])
        p.add_argument("--json", action="store_true")
        if name == "fix":
            p.add_argument("--reference", help="the deployed fix: commit, release or ticket")
            p.add_argument("--tests-passed", action="store_true", help="the fix's unit tests passed")
            p.add_argument("--no-restore", dest="restore", action="store_false",
                           help="close without restoring the switches")
        p.set_defaults(func=cmd_decision, decision=name)

    p = sub.add_parser("status", help="what runs, or one workflow's progress")
    p.add_argument("id", nargs="?", help="workflow id or incident id (none: list running workflows)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--follow", action="store_true", help="keep printing progress until it ends")
    p.set_defaults(func=cmd_status)


async def _operator_role(actor: str):
    from rollbackctl.cli.common import operator_of

    async with switch_store() as store:
        return (await operator_of(store, actor)).role


def _links(wid: str) -> str:
    from core.settings import TemporalSettings

    return f"workflow {wid}\nWeb UI   {TemporalSettings().workflow_url(wid)}"


def _summary(what: str, inp) -> str:
    """One line for the Web UI's workflow list: what, who, why (at most 200 bytes)."""
    who = getattr(inp, "requested_by", "") or ""
    why = getattr(inp, "reason", "") or ""
    from contracts.progress import ui_summary

    return ui_summary(f"{what} by {who}: {why}" if who else what)


async def _start(workflow_run, inp, wid: str, what: str, wait: bool, client=None, critical: bool = False) -> int:
    """`critical`: on the critical lane (manual/rollback.py CRITICAL_LANE): its own task queue, first priority."""
    from temporalio.common import Priority, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
    from temporalio.exceptions import WorkflowAlreadyStartedError

    from core.settings import TemporalSettings
    from core.temporal_client import connect

    s = TemporalSettings()
    client = client or await connect(s)
    queue, priority = s.task_queue, Priority.default
    if critical:
        from manual.rollback import CRITICAL_PRIORITY_KEY

        queue, priority = s.critical_task_queue, Priority(priority_key=CRITICAL_PRIORITY_KEY)
    try:
        await client.start_workflow(
            workflow_run, inp, id=wid, task_queue=queue, priority=priority,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            request_eager_start=True,
            # the Web UI's list shows it (docs.temporal.io/develop/python/enriching-ui: <= 200 bytes)
            static_summary=_summary(what, inp),
        )
    except WorkflowAlreadyStartedError:
        raise CliError(f"{what} for incident {inp.incident_id} already exists: {wid} "
                       f"(see `rollbackctl status {wid}`); use a new incident id for a new {what}", 4) from None
    print(f"started {what}\n{_links(wid)}")
    if wait:
        return await _follow(client, wid, as_json=False)
    print(f"follow it with: rollbackctl status {wid} --follow")
    return 0


async def cmd_rollback_start(args) -> int:
    # Only models here: importing the workflow module (and the activities behind it) costs ~0.2 s
    # on the critical path; the workflow is started by its type name.
    from manual import rollback
    from workflows.models import RollbackInput

    scope = rollback.Scope(args.scope)
    try:
        changes = rollback.target_changes(scope, args.switch)
    except (ValueError, KeyError) as e:
        raise CliError(str(e).strip('"'), 2) from None
    inp = RollbackInput(incident_id=args.incident, summary=args.summary or args.reason,
                        severity=rollback.Severity(args.severity), scope=scope, switch=args.switch,
                        requested_by=args.actor, reason=args.reason, durations=_durations(args), drill=args.drill,
                        break_glass=args.break_glass)
    if args.dry_run:  # no key needed: nothing is signed or started
        return rollback_dry_run(inp, await _operator_role(args.actor))
    from contracts.roles import Role
    from rollbackctl.cli import signing
    from core.temporal_client import connect

    inp.proof = signing.start_proof(inp, "rollback.start", f"rollback-{args.incident}")  # ~0.1 ms: not on the clock

    # The role check (etcd) and the Temporal connection go in parallel: both are on the critical path.
    from core.temporal_client import TemporalUnavailable

    try:
        role, client = await asyncio.gather(_operator_role(args.actor), connect())
    except TemporalUnavailable as e:
        raise TemporalUnavailable(f"{e}{_emergency_hint(changes, args.actor)}") from None
    if not role.at_least(Role.ON_CALL):
        raise CliError(f"{args.actor} is {role.value}; starting a rollback needs on_call or above", 3)
    # Not applied yet: the workflow applies it after its checklist (and not at all if HL is down or an
    # approval is missing); `status` says when it is (step `apply ok`, with the audit id and revision).
    print("change set to apply (after the checklist; `status` shows when it is applied): "
          + ", ".join(f"{k}={v}" for k, v in changes.items()))
    if not role.at_least(rollback.required_role(scope)):
        print(f"note: {scope.value} needs a super admin; the workflow will page and wait for one to confirm")
    return await _start("RollbackWorkflow", inp, f"rollback-{args.incident}", "rollback", args.wait, client,
                        critical=rollback.on_critical_lane(inp.severity))


def _emergency_hint(changes: dict, actor: str) -> str:
    """What the emergency lane can still apply of a rollback's change set while Temporal is down."""
    from manual import emergency, switches

    cmds = [f"rollbackctl switch set {k} {switches.get(k).render(v)} --as {actor} --reason ..."
            for k, v in changes.items() if emergency.is_emergency(k, v)]
    if not cmds:
        return ""
    return (". The emergency lane applies its change set without Temporal, one switch at a time: "
            + "; ".join(f"`{c}`" for c in cmds))


def rollback_dry_run(inp, role) -> int:
    """What `rollback start` would do, from the manual's tables: nothing is started or written."""
    from manual import approvals, rollback
    from manual.canary import human

    d, scope = inp.durations, inp.scope
    changes = rollback.target_changes(scope, inp.switch)
    need = rollback.required_role(scope)
    print(f"DRY RUN, nothing started: rollback-{inp.incident_id} ({inp.severity.value}, {scope.value}) by "
          f"{inp.requested_by} ({role.value})")
    if inp.severity is rollback.Severity.NON_CRITICAL:
        print(f"  no switch changes: notifies, observes {human(d.observe)}; `escalate` turns it into a rollback")
        return 0
    if inp.severity is rollback.Severity.DATA:
        print(f"  first a {human(d.decision_window)} decision window: `proceed` now or `cancel`; it rolls back "
              "when the window ends")
    print("  change set: " + ", ".join(f"{k}={v}" for k, v in changes.items()))
    step = rollback.checklist_step(changes, inp.severity is not rollback.Severity.DATA)
    print("  checklist: " + "; ".join(i.title for i in step.items))
    if not role.at_least(need):
        print(f"  approval: {scope.value} needs {need.value}; {inp.requested_by} is {role.value}: it waits for a "
              f"super admin's `confirm` (re-paged every {human(d.confirm_sla)}), nothing applied before")
    elif approvals.two_person_changes(changes):
        print(f"  approval: the two-person rule covers {', '.join(approvals.two_person_changes(changes))} (signing "
              "on): a second super admin confirms, or --break-glass")
    else:
        print(f"  approval: none needed ({inp.requested_by} is {role.value}, {scope.value} needs {need.value})")
    path, nxt = [], rollback.NEXT_SCOPE[scope]
    while nxt is not None:
        path.append(nxt.value + (" (a super admin's escalate, or stay)" if nxt is rollback.Scope.FULL else ""))
        nxt = rollback.NEXT_SCOPE[nxt]
    print(f"  then: observe {human(d.observe)}, a check every {human(d.check_interval)}; {d.consecutive_breaches} "
          "failed in a row escalate" + (f": {' -> '.join(path)}" if path else ": already at Level 3"))
    print(f"  then: `confirm` by {need.value}+ (re-paged every {human(d.confirm_sla)}), `fix` with a reference "
          f"and passing tests, restore through the 5% stage ({human(d.restore_observe)} observed) to full; "
          "`withdraw` ends it at any wait")
    return 0


async def cmd_degrade(args) -> int:
    from manual import degradation
    from workflows.degradation import DegradationWorkflow, degrade_workflow_id
    from workflows.models import DegradeInput

    lvl = degradation.get(args.level)
    role = await _operator_role(args.actor)
    if args.dry_run:
        return degrade_dry_run(lvl, args, role, _durations(args))
    if not role.at_least(lvl.permission):
        raise CliError(f"degradation level {lvl.level} needs {lvl.permission.value}; {args.actor} is {role.value}", 3)
    from rollbackctl.cli import signing

    inp = DegradeInput(level=args.level, incident_id=args.incident, requested_by=args.actor, reason=args.reason,
                       durations=_durations(args), drill=args.drill, break_glass=args.break_glass)
    inp.proof = signing.start_proof(inp, "degrade.start", degrade_workflow_id(args.level, args.incident))
    print(f"level {lvl.level}: {lvl.name}\nswitches to apply (after the checklist; `status` shows when they are): "
          + ", ".join(f"{k}={v}" for k, v in lvl.switch_set.items()))
    print("still available: " + "; ".join(lvl.available))
    from core.temporal_client import TemporalUnavailable

    try:
        return await _start(DegradationWorkflow.run, inp, degrade_workflow_id(args.level, args.incident), "degradation",
                            args.wait)
    except TemporalUnavailable as e:
        return await _degrade_emergency(args, lvl, e)


async def _degrade_emergency(args, lvl, down: Exception) -> int:
    """Temporal is down: Levels 1 and 2 go through the worker's emergency lane (activities/emergency.py),
    signed against the etcd revision read now; anything else waits for Temporal."""
    from manual import emergency
    from rollbackctl.cli import signing
    from rollbackctl.cli.common import switch_store

    if lvl.level not in emergency.LEVELS or args.drill or not signing.signing_on():
        why = ("a drill never uses it" if args.drill else "it needs signing on" if not signing.signing_on()
               else f"it takes levels {', '.join(map(str, emergency.LEVELS))} only")
        raise type(down)(f"{down}. The emergency lane does not apply here ({why})") from None
    async with switch_store() as store:
        snap = await store.snapshot()
    proof = signing.sign(args.actor, action=emergency.LEVEL_ACTION, target=f"level:{lvl.level}",
                         values={"reason": args.reason, "incident": args.incident}, revision=snap.revision)
    out = await signing.emergency_submit(proof)
    return signing.report_emergency(out, f"degradation level {lvl.level}", args.actor, proof.key_id,
                                    getattr(args, "json", False))


def degrade_dry_run(lvl, args, role, d) -> int:
    """What `degrade N` would do, from the manual's tables: nothing is started or written."""
    from manual import approvals, checklist
    from manual.canary import human

    print(f"DRY RUN, nothing started: degrade-{lvl.level}-{args.incident}: level {lvl.level} ({lvl.name}) by "
          f"{args.actor} ({role.value})")
    print("  switches: " + ", ".join(f"{k}={v}" for k, v in lvl.switch_set.items()))
    if lvl.core_actions:
        print("  trading core: " + ", ".join(a.action for a in lvl.core_actions))
    print("  still available: " + "; ".join(lvl.available))
    print("  checklist: " + "; ".join(i.title for i in checklist.BEFORE_DEGRADATION))
    if not role.at_least(lvl.permission):
        print(f"  REFUSED as asked: level {lvl.level} needs {lvl.permission.value}; {args.actor} is {role.value}")
    elif two := approvals.two_person_changes(dict(lvl.switch_set)):
        print(f"  approval: the two-person rule covers {', '.join(two)} (signing on): a second "
              f"{lvl.permission.value} confirms, or --break-glass")
    else:
        print("  approval: none needed")
    print(f"  then: observe {human(d.observe)}; `confirm` by {lvl.permission.value}+ (re-paged every "
          f"{human(d.confirm_sla)}); `fix` restores; `withdraw` ends it at any wait")
    return 0


async def resolve_id(client, ident: str) -> str:
    """A workflow id as given, or the workflow of an incident id."""
    from temporalio.service import RPCError

    if ident.startswith(WORKFLOW_PREFIXES):
        return ident
    for wid in (f"rollback-{ident}", *(f"degrade-{n}-{ident}" for n in (3, 2, 1)), f"incident-{ident}"):
        try:
            await client.get_workflow_handle(wid).describe()
            return wid
        except RPCError:
            continue
    raise CliError(f"no rollback, degradation or incident workflow for {ident!r}", 2)


async def _child_of(client, incident_wid: str, decision: str) -> str:
    """An incident named where its rollback or degradation is meant (`proceed`, `fix`, `withdraw`, or a
    `confirm` after the ack, on the id from the page): the one it started that still runs, said; none or
    several: say so. The incident's own decisions (its `confirm` = ack, its level choice) stay with it."""
    from temporalio.client import WorkflowExecutionStatus
    from temporalio.service import RPCError

    try:
        st = await client.get_workflow_handle(incident_wid).query("state", result_type=dict)
    except RPCError as e:
        raise CliError(f"{incident_wid}: {e.message}", 5) from None
    acked = bool((st.get("sla") or {}).get("acked_at"))
    if (decision == "confirm" and not acked) or (decision == "escalate" and st.get("level_choice") == "asked"):
        return incident_wid
    running = []
    for child in st.get("children") or []:
        try:
            desc = await client.get_workflow_handle(child).describe()
        except RPCError:
            continue
        if desc.status == WorkflowExecutionStatus.RUNNING:
            running.append(child)
    if len(running) == 1:
        print(f"{incident_wid} -> {running[0]} (the workflow this incident started; `{decision}` goes there)")
        return running[0]
    if not running:
        raise CliError(f"{incident_wid} is a P0 incident: `{decision}` is for the rollback or degradation it starts, "
                       "and none of its own runs now (the incident takes `ack`, `tick`, `resolve`, `escalate --level`)",
                       2)
    raise CliError(f"{incident_wid} started several workflows that still run ({', '.join(running)}): name one", 2)


async def cmd_decision(args) -> int:
    from temporalio.client import WorkflowUpdateFailedError
    from temporalio.service import RPCError

    from core.temporal_client import connect
    from contracts.progress import Decision

    from rollbackctl.cli.signing import signed_decision

    d = Decision(actor=args.actor, reason=args.reason, reference=getattr(args, "reference", None),
                 tests_passed=getattr(args, "tests_passed", False), restore=getattr(args, "restore", True),
                 level=getattr(args, "level", None), break_glass=getattr(args, "break_glass", None))
    client = await connect()
    wid = await resolve_id(client, args.id)
    if wid.startswith("incident-"):
        wid = await _child_of(client, wid, args.decision)
    try:
        d = await signed_decision(client, wid, args.decision, d)
        ack = await client.get_workflow_handle(wid).execute_update(args.decision, d, result_type=dict)
    except WorkflowUpdateFailedError as e:
        from rollbackctl.cli.common import refusal

        raise await refusal(client, e, args.decision, wid, args.actor) from None
    except RPCError as e:
        raise CliError(f"{wid}: {e.message}", 4 if "completed" in e.message.lower() else 5) from None
    from rollbackctl.cli.common import report_action

    report_action(args, wid, args.decision, ack.get("message", "accepted"))
    return 0


def _render(p) -> str:
    lines = [("[DRILL] " if p.drill else "") + f"{p.workflow_id}  [{p.kind}]  status: {p.status}"
             + (f"  level: {p.level}" if p.level else "")]
    for h in p.history:
        t = h.started_at.strftime("%H:%M:%S")
        lines.append(f"  {t}  {h.name:<22} {h.outcome or '...':<10} {h.detail}")
    if p.checklist:
        lines.append("  checklist:")
        lines += [f"    [{c.status}] {c.title}: {c.detail}" for c in p.checklist]
    if p.checks:
        c = p.checks[-1]
        lines.append(f"  last health check {c.at.strftime('%H:%M:%S')}: {'ok' if c.ok else '; '.join(c.breaches)}")
    if p.escalations:
        lines += [f"  escalation: {e}" for e in p.escalations]
    refused = [d for d in p.decisions if not d.accepted]
    lines += [f"  refused {d.kind} from {d.actor}: {d.detail}" for d in refused]
    if p.awaiting:
        a = p.awaiting
        lines.append(f"  WAITING for {a.expects} ({a.min_role}+) at step {a.step}: {a.prompt}"
                     + (f"  [re-paged {a.repages}x]" if a.repages else ""))
        for e in a.exits:
            who = f"{e.min_role}+" if e.min_role else f"its starter, a higher role, or {a.min_role}"
            lines.append(f"    or {e.kind} ({who}): {e.means}")
        if a.seen_by:
            lines.append(f"    seen in PagerDuty by {a.seen_by} at {a.seen_at:%H:%M:%S} (not a decision): re-paging "
                         f"stopped, reminders in chat; still awaited: a signed {a.expects}")
    if p.result is None and (clocks := countdowns(p, datetime.now(timezone.utc))):
        lines.append("  clocks: " + "; ".join(clocks))
    lines += paging_lines(p.alerts, p.paging_failures)
    if p.detail:
        lines.append(f"  {p.detail}")
    return "\n".join(lines)


def paging_lines(alerts, failures) -> list[str]:
    """The alerts a workflow opened and what became of them, and the pages that failed (one line each)."""
    out = []
    if alerts:
        out.append("  pages:")
    for a in alerts:
        extra = []
        if a.seen_by:
            extra.append(f"acknowledged in PagerDuty by {a.seen_by} at {a.seen_at:%H:%M:%S}")
        if a.handed_to:
            extra.append(f"handed on to {a.handed_to}")
        if a.why and not a.handed_to:
            extra.append(a.why)
        out.append(f"    {a.opened_at:%H:%M:%S}  L{a.level} {a.kind:<16} {a.status.value:<12} {a.dedup_key}"
                   + (f"  ({'; '.join(extra)})" if extra else ""))
    for f in failures:
        out.append(f"  PAGING FAILED {f.at:%H:%M:%S}: level {f.level} {f.channel.value}: {f.why}"
                   + (f"; sent instead to {', '.join(f.rerouted)}" if f.rerouted else ""))
    return out


async def _progress(client, wid: str):
    from contracts.progress import Progress

    return await client.get_workflow_handle(wid).query("progress", result_type=Progress)


QUERY_TIMEOUT_S = 3.0  # a worker that does not answer a progress query within this is reported as such


async def truthful_progress(client, wid: str):
    """(progress, temporal_status, note): the workflow's own progress, corrected by what Temporal says.

    A workflow cancelled, terminated or timed out in Temporal never ran the code that sets its status, so
    its progress still says "running"; and a running workflow whose worker is down answers no query. The
    view says both: the status is Temporal's when the workflow closed without finishing, and a progress
    that cannot be read is replaced by what Temporal knows (start, status), with the reason."""
    from temporalio.client import WorkflowExecutionStatus, WorkflowQueryFailedError
    from temporalio.service import RPCError

    from contracts.progress import Progress

    desc = await client.get_workflow_handle(wid).describe()
    st = desc.status or WorkflowExecutionStatus.RUNNING
    temporal = st.name.lower()
    note = None
    try:
        p = await within(QUERY_TIMEOUT_S, _progress(client, wid))
    except (asyncio.TimeoutError, RPCError, WorkflowQueryFailedError) as e:
        why = "no answer within %gs" % QUERY_TIMEOUT_S if isinstance(e, asyncio.TimeoutError) else str(e)[:160]
        note = f"its progress could not be read ({why}): is a worker running on its task queue?"
        p = Progress(workflow_id=wid, kind=desc.workflow_type, status=temporal if st != WorkflowExecutionStatus.RUNNING
                     else "running", detail=note)
        if st == WorkflowExecutionStatus.COMPLETED:  # its result is in the history: no worker needed
            try:
                res = await client.get_workflow_handle(wid).result()
                if isinstance(res, dict) and res.get("status"):
                    p = p.model_copy(update={"status": res["status"], "result": res["status"],
                                             "detail": str(res.get("detail") or "")})
                    note = None
            except Exception:  # keep what Temporal said
                pass
        return p, temporal, note
    if st not in (WorkflowExecutionStatus.RUNNING, WorkflowExecutionStatus.COMPLETED,
                  WorkflowExecutionStatus.CONTINUED_AS_NEW):
        when = f" at {desc.close_time:%Y-%m-%d %H:%M:%S} UTC" if desc.close_time else ""
        note = (f"{temporal} in Temporal{when} while at step {p.current_step or '-'}: the workflow did not finish; "
                "switches are as it left them (see `rollbackctl switch list` and `audit`)")
        p = p.model_copy(update={"status": temporal, "awaiting": None, "current_step": None,
                                 "detail": (p.detail + "; " if p.detail else "") + note})
    return p, temporal, note


@dataclass
class FollowState:
    """What `status --follow` has printed so far (so each poll prints only what is new)."""

    steps_seen: int = 0
    last_check_at: datetime | None = None
    waiting: str | None = None
    last_clocks: datetime | None = None


CLOCK_EVERY = timedelta(seconds=30)  # a countdown line at most this often (and whenever a wait begins)


def countdowns(p, now: datetime) -> list[str]:
    """Every running clock of `p` at `now`, as an on-call reads them (pure)."""
    from manual.canary import human

    out = []
    if p.observing_until is not None:
        nxt = f", next check in {human(max(p.next_check_at - now, timedelta(0)))}" if p.next_check_at else ""
        out.append(f"{p.current_step or 'observation'}: {human(max(p.observing_until - now, timedelta(0)))} left{nxt}")
    aw = p.awaiting
    if aw is not None and aw.deadline is not None:
        left = human(max(aw.deadline - now, timedelta(0)))
        if aw.on_timeout == "proceed":
            out.append(f"{aw.step}: proceeds on its own in {left} unless someone decides")
        elif aw.on_timeout == "fail":
            out.append(f"{aw.step}: expires in {left}, nothing applied")
        elif aw.seen_by:
            out.append(f"{aw.step}: seen by {aw.seen_by}; next reminder in {left}")
        else:
            out.append(f"{aw.step}: re-page at escalation level {p.page_level + 1} in {left}")
    return out


def follow_lines(st: FollowState, p, now: datetime) -> list[str]:
    """The lines `status --follow` prints for this poll of `p` (pure): finished steps, each new health check
    (each value against its limit), a new wait (what, from whom, its exits) and the clocks."""
    news: list[tuple[datetime, str]] = []  # finished steps and new checks, in time order
    done = [h for h in p.history if h.outcome is not None]
    for h in done[st.steps_seen:]:
        news.append((h.ended_at, f"  {h.ended_at:%H:%M:%S}  {h.name:<22} {h.outcome:<10} {h.detail}"))
    st.steps_seen = len(done)
    for c in p.checks:
        if st.last_check_at is None or c.at > st.last_check_at:
            what = ", ".join(c.readings) if c.readings else "; ".join(c.breaches) or "ok"
            news.append((c.at, f"  {c.at:%H:%M:%S}  check {'ok' if c.ok else 'FAILED'}: {what}"))
            st.last_check_at = c.at
    out = [line for _, line in sorted(news, key=lambda x: x[0])]
    aw = p.awaiting
    began = aw is not None and aw.step != st.waiting
    if began:
        out.append(f"  WAITING for {aw.expects} from {aw.min_role} or above at step {aw.step}: {aw.prompt}")
        for e in aw.exits:
            who = f"{e.min_role}+" if e.min_role else f"its starter, a higher role, or {aw.min_role}"
            out.append(f"    or {e.kind} ({who}): {e.means}")
    st.waiting = aw.step if aw is not None else None
    if began or st.last_clocks is None or now - st.last_clocks >= CLOCK_EVERY:
        clocks = countdowns(p, now)
        if clocks:
            out.append(f"  {now:%H:%M:%S}  " + "; ".join(clocks))
            st.last_clocks = now
    return out


async def _follow(client, wid: str, as_json: bool) -> int:
    from temporalio.client import WorkflowExecutionStatus

    st = FollowState()
    while True:
        p, temporal, _ = await truthful_progress(client, wid)  # one describe and one query per poll
        if as_json:
            print_json(p.model_dump(mode="json"))
        else:
            for line in follow_lines(st, p, datetime.now(timezone.utc)):
                print(line)
        if temporal != WorkflowExecutionStatus.RUNNING.name.lower():
            print(f"{wid}: {temporal}" + (f", {p.result}" if p.result else "")
                  + (f" ({p.detail})" if p.detail else ""))
            return 0 if temporal == WorkflowExecutionStatus.COMPLETED.name.lower() else 1
        sys.stdout.flush()
        await asyncio.sleep(1.0)


async def _fleet_view() -> dict:
    """The consumers' receipts against the last switch change: who lags (a straggler acts on old values)."""
    import time

    from contracts.fleet import receipt_rows
    from core.etcd import EtcdError

    try:
        async with switch_store() as store:
            rows, matrix = await store.consumers()
    except (EtcdError, OSError) as e:
        return {"error": f"etcd unreadable ({type(e).__name__}: {str(e)[:120]})"}
    behind = [r for r in receipt_rows(rows, matrix, time.time()) if r["behind"]]
    return {"matrix_revision": matrix, "live": len(rows), "stragglers": behind}


def _fleet_line(f: dict) -> str:
    if "error" in f:
        return f"consumers: {f['error']}"
    if not f["live"]:
        return f"consumers: none registered (matrix revision {f['matrix_revision']}): nothing confirms a change applied"
    if not f["stragglers"]:
        return f"consumers: {f['live']} live, all at the last switch change (revision {f['matrix_revision']})"
    return (f"STRAGGLERS: {len(f['stragglers'])} of {f['live']} consumers behind the last switch change (revision "
            f"{f['matrix_revision']}): " + ", ".join(f"{r['id']} at {r['applied_revision']}" for r in f["stragglers"])
            + " (`rollbackctl consumers`)")


async def cmd_status(args) -> int:
    from temporalio.service import RPCError

    from core.temporal_client import connect

    client = await connect()
    if not args.id:
        rows = []
        async for wf in client.list_workflows("ExecutionStatus = 'Running'"):
            rows.append({"id": wf.id, "type": wf.workflow_type, "started": str(wf.start_time)})
        if args.json:  # the list scripts read since the first release; the fleet: `consumers --json`
            print_json(rows)
            return 0
        print("\n".join(f"  {r['id']:<40} {r['type']:<22} since {r['started']}" for r in rows) or "nothing running")
        print(_fleet_line(await _fleet_view()))
        return 0
    wid = await resolve_id(client, args.id)
    if args.follow:
        print(_links(wid))
        return await _follow(client, wid, args.json)
    try:
        p, temporal, _ = await truthful_progress(client, wid)
    except RPCError as e:
        raise CliError(f"{wid}: {e.message}", 5) from None
    if args.json:
        print_json({**p.model_dump(mode="json"), "temporal_status": temporal})
    else:
        print(_render(p))
        print(_links(wid))
    return 0
