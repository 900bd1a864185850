"""`init`, `switch list|get|set`, `audit`, `operator add|list`: the control matrix in etcd."""

from __future__ import annotations

import argparse
import uuid

from rollbackctl.cli.common import CliError, print_json, switch_store, table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="write every missing switch default (never overwrites); bootstrap the first super admin")
    p.add_argument("--super-admin", metavar="NAME", help="create this super admin if no operator exists yet")
    p.set_defaults(func=cmd_init)

    sw = sub.add_parser("switch", help="read and change the control matrix").add_subparsers(
        dest="switch_cmd", metavar="SUBCOMMAND", required=True
    )
    p = sw.add_parser("list", help="every switch with its value, default, owner and rollback value")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)
    p = sw.add_parser("get", help="one switch")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_get)
    p = sw.add_parser(
        "set", help="change one switch (audited; needs the switch's owner role)",
        description="Values are typed as the switch's type: true/false, 2.5, 10000, BTC,ETH ('' for none).",
    )
    p.add_argument("name")
    p.add_argument("value")
    p.add_argument("--as", dest="actor", required=True, metavar="OPERATOR")
    p.add_argument("--reason", required=True)
    p.add_argument("--expect", metavar="VALUE", help="only if the switch still holds this value (compare-and-swap)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_set)

    p = sub.add_parser("audit", help="the audit trail, newest last")
    p.add_argument("--limit", type=int, default=20, help="how many records (default 20; 0 = all)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit)

    op = sub.add_parser("operator", help="manage operators and their roles").add_subparsers(
        dest="operator_cmd", metavar="SUBCOMMAND", required=True
    )
    p = op.add_parser("add", help="add an operator (super admin only)")
    p.add_argument("name")
    p.add_argument("role", choices=["super_admin", "risk_manager", "on_call", "viewer"])
    p.add_argument("--as", dest="actor", required=True, metavar="OPERATOR")
    p.set_defaults(func=cmd_operator_add)
    p = op.add_parser("list", help="operators and roles")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_operator_list)


def _row(sw, st) -> dict:
    return {
        "name": sw.name,
        "type": sw.type.value,
        "value": st.value,
        "default": sw.default,
        "permission": sw.permission.value,
        "rollback_value": sw.rollback_value,
        "rollback": sw.rollback_text,
        "latency": sw.latency.value,
        "scope": sw.scope,
        "updated_at": st.updated_at,
        "updated_by": st.updated_by,
        "revision": st.revision,
    }


async def cmd_init(args) -> int:
    async with switch_store() as store:
        r = await store.init(super_admin=args.super_admin, actor=args.super_admin or "system")
    if r["initialised"]:
        print(f"initialised {len(r['initialised'])} switches to their defaults: {', '.join(r['initialised'])}")
    else:
        print(f"all {r['existing']} switches already present; nothing overwritten")
    if args.super_admin:
        print(f"super admin: {args.super_admin}")
    return 0


async def cmd_list(args) -> int:
    from manual import switches

    async with switch_store() as store:
        snap = await store.snapshot()
    rows = [_row(sw, snap.switches[sw.name]) for sw in switches.SWITCHES]
    if args.json:
        print_json(rows)
        return 0
    out = []
    for sw in switches.SWITCHES:
        st = snap.switches[sw.name]
        mark = "" if st.value == sw.default or st.revision == 0 else " *"
        shown = lambda v: sw.render(v) or "(none)"  # noqa: E731  an empty symbol list
        val = "(not initialised)" if st.revision == 0 else shown(st.value)
        out.append([sw.name, sw.type.value, val + mark, shown(sw.default), sw.permission.value,
                    shown(sw.rollback_value), sw.latency.value])
    print(table(out, ["SWITCH", "TYPE", "VALUE", "DEFAULT", "OWNER", "ROLLBACK", "LATENCY"]))
    print(f"\n* differs from default   etcd revision {snap.revision}")
    return 0


async def cmd_get(args) -> int:
    from manual import switches

    sw = _switch(args.name)
    async with switch_store() as store:
        st = await store.get(sw.name)
    row = _row(sw, st)
    if args.json:
        print_json(row)
    else:
        for k, v in row.items():
            shown = sw.render(v) if k in ("value", "default", "rollback_value") and v is not None else v
            print(f"{k:<15} {shown}")
    del switches
    return 0


def _switch(name: str):
    from manual import switches

    try:
        return switches.get(name)
    except switches.UnknownSwitch as e:
        raise CliError(str(e), 2) from None


async def cmd_set(args) -> int:
    from activities.changes import ChangeSetRequest, SwitchChange

    sw = _switch(args.name)
    try:
        value = sw.parse(args.value)
        expected = {sw.name: sw.parse(args.expect)} if args.expect is not None else None
    except ValueError as e:
        raise CliError(str(e), 2) from None
    if not args.reason.strip():
        raise CliError("--reason must not be empty", 2)
    req = ChangeSetRequest(
        change_id=f"cli-{uuid.uuid4()}",
        actor=args.actor,
        changes=[SwitchChange(switch=sw.name, value=value)],
        reason=args.reason,
        source="cli",
        expected=expected,
    )
    async with switch_store() as store:
        res = await store.apply(req)
    if args.json:
        print_json(res.model_dump())
        return 0
    for c in res.changes:
        print(f"{c.switch}: {sw.render(c.old)} -> {sw.render(c.new)}  (audit {res.audit_id}, etcd revision {res.revision})")
    return 0


async def cmd_audit(args) -> int:
    from manual import switches

    async with switch_store() as store:
        recs = await store.audit(limit=args.limit or None)
    if args.json:
        print_json([r.model_dump() for r in recs])
        return 0
    rows = []
    for r in recs:
        what = "; ".join(
            f"{c.switch} {switches.get(c.switch).render(c.old) if c.old is not None else '-'} -> "
            f"{switches.get(c.switch).render(c.new)}"
            for c in r.changes
        ) if r.action != "init" else f"{len(r.changes)} switches initialised"
        if r.action.startswith("operator."):
            what = r.reason
        actor = f"{r.actor} ({r.role})" + (f" approved by {r.approved_by}" if r.approved_by else "")
        rows.append([r.id, r.at, actor, r.source + (" [DRILL]" if r.drill else ""), what, r.reason])
    print(table(rows, ["ID", "AT", "ACTOR", "SOURCE", "CHANGES", "REASON"]) if rows else "(no audit records)")
    return 0


async def cmd_operator_add(args) -> int:
    from manual.roles import Role

    async with switch_store() as store:
        op = await store.add_operator(args.name, Role(args.role), actor=args.actor)
    print(f"operator {op.name} added as {op.role.value} by {args.actor}")
    return 0


async def cmd_operator_list(args) -> int:
    async with switch_store() as store:
        ops = await store.operators()
    if args.json:
        print_json([o.model_dump() for o in ops])
    else:
        print(table([[o.name, o.role.value, o.added_by, o.added_at] for o in ops], ["NAME", "ROLE", "ADDED BY", "ADDED AT"]))
    return 0
