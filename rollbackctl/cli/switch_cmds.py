"""`init`, `switch list|get|set`, `audit [verify]`, `operator add|list|rotate-key`, `keygen`.

With signing on (the default), `switch set` and `operator add|rotate-key` are signed with the
operator's private key and carried out by the worker (ChangeRequestWorkflow), which alone holds
etcd's write credentials; with ROLLBACKCTL_SIGNING=off (local drills) they write etcd directly.
"""

from __future__ import annotations

import argparse
import sys
import uuid

from rollbackctl.cli.common import CliError, print_json, switch_store, table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="write every missing switch default (never overwrites); bootstrap the first super admin",
                       description="Run once per prefix with etcd write credentials (an administrator's).")
    p.add_argument("--super-admin", metavar="NAME", help="create this super admin if no operator exists yet")
    p.add_argument("--environment", choices=("dev", "staging", "production"),
                   help="mark the prefix once (drills refuse a production one); an existing mark is never changed")
    _key_args(p, "the super admin's")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("keygen", help="create an Ed25519 key pair; the private key stays in a 0600 file here",
                       description="Writes the private key (PKCS#8 PEM, mode 0600) to ROLLBACKCTL_KEY_FILE, or "
                                   "ROLLBACKCTL_KEY_DIR/NAME.key, or ~/.config/rollbackctl/keys/NAME.key, and prints "
                                   "the public key for `operator add --public-key`.")
    p.add_argument("--operator", metavar="NAME", help="whose key (names the file)")
    p.add_argument("--out", metavar="PATH", help="write the private key here instead")
    p.add_argument("--force", action="store_true", help="replace an existing key file")
    p.set_defaults(func=cmd_keygen)

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
    p.add_argument("--break-glass", metavar="REASON",
                   help="super admin: apply a two-person change alone (paged to everyone, marked in the audit)")
    p.add_argument("--wait", action="store_true", help="a two-person change: wait for the second approval")
    p.add_argument("--yes", action="store_true",
                   help="apply a change that is asked again: a large factor (a misplaced decimal point?) or a "
                        "switch a running rollback, degradation or canary holds")
    p.add_argument("--dry-run", action="store_true",
                   help="print old -> new, who may approve it, the two-person rule and any warning; write nothing")
    p.add_argument("--wait-applied", action="store_true",
                   help="then wait until every live consumer (`rollbackctl consumers`) applied it: within the "
                        "switch's latency class, or it names the stragglers (exit 10 if one has not applied it "
                        "after 10 s)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_set)

    p = sub.add_parser("audit", help="the audit trail, newest last; `audit verify` checks its hash chain and signatures")
    p.add_argument("verify", nargs="?", choices=["verify"],
                   help="walk the chain and the signatures; report the first broken link (exit 7)")
    p.add_argument("--limit", type=int, default=20, help="how many records (default 20; 0 = all)")
    p.add_argument("--expect-head", metavar="SEQ:HASH",
                   help="verify: the record SEQ must still have this hash (a head noted earlier, kept outside etcd)")
    p.add_argument("--wide", action="store_true",
                   help="every column in full (default: cut to the terminal's width, COLUMNS or 120)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit)

    op = sub.add_parser("operator", help="manage operators and their roles").add_subparsers(
        dest="operator_cmd", metavar="SUBCOMMAND", required=True
    )
    p = op.add_parser("add", help="add an operator (super admin only)")
    p.add_argument("name")
    p.add_argument("role", choices=["super_admin", "risk_manager", "on_call", "viewer"])
    p.add_argument("--as", dest="actor", required=True, metavar="OPERATOR")
    _key_args(p, "the new operator's")
    p.set_defaults(func=cmd_operator_add)
    p = op.add_parser("rotate-key", help="replace an operator's public key (super admin; audited): the old key stops working")
    p.add_argument("name")
    p.add_argument("--as", dest="actor", required=True, metavar="SUPERADMIN")
    _key_args(p, "the new")
    p.add_argument("--reason", default="")
    p.set_defaults(func=cmd_operator_rotate_key)
    p = op.add_parser("list", help="operators and roles")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_operator_list)


def _key_args(p: argparse.ArgumentParser, whose: str) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--public-key", metavar="B64", help=f"{whose} public key (printed by `rollbackctl keygen`)")
    g.add_argument("--generate-key", action="store_true",
                   help=f"generate {whose} key pair here (the private key goes to that operator's key file)")


def _public_key(args, name: str, temp: bool = False) -> tuple[str | None, object]:
    """The public key the arguments give (generating one if asked) and the key file written (or None)."""
    from core import keys

    if args.public_key:
        return args.public_key.strip(), None
    if not args.generate_key:
        return None, None
    path = keys.key_path(name)
    if temp:  # a rotation: the new key replaces the old file only once the rotation is applied
        path = path.with_name(path.name + ".new")
    pub = keys.generate(path, force=temp)
    print(f"private key for {name} written to {path} (mode 0600)")
    return pub, path


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
    pub = None
    if args.super_admin and (args.public_key or args.generate_key):
        from core import identity, keys

        if args.generate_key and keys.key_path(args.super_admin).exists():  # a re-run: keep the key
            pub = identity.public_key_text(keys.load(args.super_admin))
            print(f"using the existing key of {args.super_admin} at {keys.key_path(args.super_admin)}")
        else:
            pub, _ = _public_key(args, args.super_admin)
    async with switch_store() as store:
        r = await store.init(super_admin=args.super_admin, actor=args.super_admin or "system", public_key=pub)
    if r["initialised"]:
        print(f"initialised {len(r['initialised'])} switches to their defaults: {', '.join(r['initialised'])}")
    else:
        print(f"all {r['existing']} switches already present; nothing overwritten")
    if args.environment:
        async with switch_store() as store:
            written = await store.mark_environment(args.environment)
        print(f"{store.prefix} marked {args.environment}" if written else f"{store.prefix} is marked {args.environment}")
    if args.super_admin:
        async with switch_store() as store:
            op = await store.operator(args.super_admin)
        print(f"super admin: {args.super_admin}" + (f" (key {op.key_id})" if op and op.key_id else " (no key yet)"))
    return 0


async def cmd_keygen(args) -> int:
    from pathlib import Path

    from core import identity, keys

    path = Path(args.out).expanduser() if args.out else keys.key_path(args.operator)
    pub = keys.generate(path, force=args.force)
    print(f"private key: {path} (mode 0600; it never leaves this machine)")
    print(f"public key:  {pub}")
    print(f"key id:      {identity.key_id(pub)}")
    print(f"register it: rollbackctl operator add {args.operator or 'NAME'} ROLE --as SUPERADMIN --public-key {pub}")
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
    from contracts.changes import ChangeSetRequest, SwitchChange

    sw = _switch(args.name)
    try:
        value = sw.parse(args.value)
        expected = {sw.name: sw.parse(args.expect)} if args.expect is not None else None
    except ValueError as e:
        raise CliError(str(e), 2) from None
    if not args.reason.strip():
        raise CliError("--reason must not be empty", 2)
    from manual import switches
    from rollbackctl.cli import signing

    async with switch_store() as store:
        st = await store.get(sw.name)
        op = await store.operator(args.actor) if args.dry_run else None
    if st.revision == 0:
        raise CliError(f"switch store not initialised ({sw.name} missing): run `rollbackctl init`", 2)
    warnings = [w for w in (switches.large_change(sw, st.value, value), await _held_by(sw, st)) if w]
    if args.dry_run:
        return _dry_run(args, sw, st, value, op, warnings, signing.signing_on())
    if warnings and not args.yes:
        raise CliError(f"{sw.name}: {sw.render(st.value)} -> {sw.render(value)} not applied: "
                       + "; ".join(warnings) + ". Re-run with --yes to apply it", 2)
    if signing.signing_on():
        return await _set_signed(args, sw, value, expected, st)
    if args.break_glass:
        raise CliError("--break-glass needs signing on (the two-person rule is off with ROLLBACKCTL_SIGNING=off)", 2)
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
    fleet = await _wait_fleet(sw, res.revision) if args.wait_applied else None
    if args.json:
        print_json({**res.model_dump(), **({"fleet": fleet.model_dump()} if fleet else {})})
        return _fleet_code(fleet)
    for c in res.changes:
        print(f"{c.switch}: {sw.render(c.old)} -> {sw.render(c.new)}  (audit {res.audit_id}, etcd revision {res.revision})")
    return _report_fleet(fleet)


FLEET_TIMEOUT_S = 10.0  # the manual: effective everywhere within 10 s; a straggler is still waited for until then


async def _wait_fleet(sw, revision: int):
    from activities.fleet import wait_fleet
    from contracts.fleet import FleetWaitInput

    async with switch_store() as store:
        return await wait_fleet(store.etcd, store.prefix, FleetWaitInput(
            revision=revision, class_s=sw.latency.seconds, timeout_s=max(FLEET_TIMEOUT_S, sw.latency.seconds)))


def _fleet_code(fleet) -> int:
    """Exit 10 when a live consumer had not applied the change when the wait ended, or when no consumer
    is registered (nothing can confirm it: asked to wait for it, the CLI does not claim it)."""
    return 10 if fleet is not None and (not fleet.complete or not fleet.consumers) else 0


def _report_fleet(fleet) -> int:
    if fleet is None:
        return 0
    head = "UNCONFIRMED: " if not fleet.consumers else "STRAGGLERS: " if fleet.stragglers else "applied everywhere: "
    print(head + fleet.summary())
    if fleet.stragglers:
        print("  see `rollbackctl consumers`; a consumer not at the revision still acts on the old value")
    return _fleet_code(fleet)


HOLDERS = ("rollback-", "degrade-", "canary-")  # workflow ids whose change sets hold switches until they end


async def _held_by(sw, st) -> str | None:
    """If the switch's last change came from a rollback, degradation or canary that still runs: who, and
    what that means (its restore or rollback compares before it writes, so it would stop, not overwrite)."""
    wid = (st.change_id or "").split(":", 1)[0]
    if not wid.startswith(HOLDERS) or ":" not in (st.change_id or ""):
        return None
    from core.temporal_client import TemporalUnavailable, connect

    try:
        client = await connect()
        desc = await client.get_workflow_handle(wid).describe()
        if desc.status is not None and desc.status.name != "RUNNING":
            return None
        state = "still runs"
    except TemporalUnavailable:
        state = "may still run (Temporal unreachable: not checked)"
    except Exception:  # not found (e.g. another namespace): not a known holder
        return None
    return (f"{sw.name} is held by {wid}, which {state}: it set {sw.render(st.value)}"
            + (f" at {st.updated_at}" if st.updated_at else "") + "; its restore or rollback will stop at your "
            f"change rather than overwrite it (`rollbackctl status {wid}`; `withdraw` it if it is done)")


def _dry_run(args, sw, st, value, op, warnings: list[str], signing_on: bool) -> int:
    from manual import approvals

    role = op.role if op is not None else None
    need = approvals.required_role(sw.name)
    may = role is not None and role.at_least(need)
    two = signing_on and approvals.needs_two_people(sw.name, value)
    out = {
        "dry_run": True, "switch": sw.name, "old": st.value, "new": value, "revision": st.revision,
        "owner_role": need.value, "actor": args.actor, "actor_role": role.value if role else None, "allowed": may,
        "two_person": two, "latency": sw.latency.value, "warnings": warnings, "needs_yes": bool(warnings),
    }
    if args.json:
        print_json(out)
        return 0
    print(f"DRY RUN, nothing written: {sw.name} {sw.render(st.value)} -> {sw.render(value)} "
          f"(etcd revision {st.revision}; effective everywhere within {sw.latency.value})")
    who = (f"{args.actor} is {role.value}: " + ("allowed" if may else "REFUSED") if role is not None
           else f"{args.actor} is not an operator: REFUSED")
    print(f"  owner role {need.value}; {who}")
    print("  two-person rule: " + ("a second super_admin must confirm (`rollbackctl confirm change-... --as OTHER`),"
                                   " or --break-glass" if two else "no"))
    for w in warnings:
        print(f"  needs --yes: {w}")
    return 0


async def _set_signed(args, sw, value, expected, st) -> int:
    """Sign the change against the revision read now; the worker verifies and applies it."""
    from rollbackctl.cli import signing

    values = {"value": value, "reason": args.reason.strip()}
    if expected is not None:
        values["expected"] = expected[sw.name]
    if args.break_glass:
        values["break_glass"] = args.break_glass
    proof = signing.sign(args.actor, action="switch.set", target=f"switch:{sw.name}", values=values,
                         revision=st.revision)
    from core.temporal_client import TemporalUnavailable
    from manual import emergency

    try:
        res, pending = await signing.submit(proof, wait=args.wait)
    except TemporalUnavailable as e:
        if not emergency.is_emergency(sw.name, value) or args.break_glass:
            raise TemporalUnavailable(f"{e}. Without Temporal only the emergency lane works: a switch to its rollback "
                                      f"value ({sw.name}={sw.render(sw.rollback_value)}) or `degrade 1|2`") from None
        out = await signing.emergency_submit(proof)  # the same signed request: its nonce lands in one lane only
        return signing.report_emergency(out, f"{sw.name}={sw.render(value)}", args.actor, proof.key_id, args.json)
    applied = pending is None and res.status == "applied" and res.outcome is not None and res.outcome.result
    fleet = await _wait_fleet(sw, res.outcome.result.revision) if args.wait_applied and applied else None
    code = signing.report(res, pending, f"{sw.name}={sw.render(value)}", args.json,
                          extra={"fleet": fleet.model_dump()} if fleet else None)
    if code == 0 and not args.json:
        r = res.outcome.result
        for c in r.changes:
            print(f"{c.switch}: {sw.render(c.old)} -> {sw.render(c.new)}  (audit {r.audit_id}, etcd revision "
                  f"{r.revision}; signed by {args.actor}, key {proof.key_id}"
                  + (f"; approved by {', '.join(res.approved_by[1:])}" if len(res.approved_by) > 1 else "")
                  + (f"; BREAK-GLASS: {args.break_glass}" if args.break_glass else "") + ")")
    if code == 0 and fleet is not None:
        return _fleet_code(fleet) if args.json else _report_fleet(fleet)
    return code


async def cmd_audit(args) -> int:
    from manual import switches

    if args.verify:
        return await cmd_audit_verify(args)
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
        extra = r.model_extra or {}
        if extra.get("signatures"):
            actor += " [signed]"
        if extra.get("break_glass"):
            actor += f" [BREAK-GLASS: {extra['break_glass'].get('reason')}]"
        rows.append([r.id, r.at, actor, r.source + (" [DRILL]" if r.drill else ""), what, r.reason])
    headers = ["ID", "AT", "ACTOR", "SOURCE", "CHANGES", "REASON"]
    if rows and not args.wide:
        from rollbackctl.cli.common import fit, terminal_width

        rows = fit(rows, headers, terminal_width(), flexible=[2, 3, 4, 5])
    print(table(rows, headers) if rows else "(no audit records)")
    return 0


async def cmd_audit_verify(args) -> int:
    from activities import audit_verify

    async with switch_store() as store:
        rep = await audit_verify.verify_store(store, expect_head=args.expect_head)
    if args.json:
        print_json(rep.model_dump(mode="json"))
    else:
        print(rep.text())
    return 0 if rep.ok else audit_verify.BROKEN_EXIT


async def cmd_operator_add(args) -> int:
    from contracts.roles import Role
    from rollbackctl.cli import signing

    if signing.signing_on():
        if args.actor == args.name:
            raise CliError("an operator is added by another, existing super admin", 3)
        pub, path = _public_key(args, args.name)
        if pub is None:
            print(f"note: {args.name} has no key yet: they cannot sign until a super admin runs "
                  f"`rollbackctl operator rotate-key {args.name} --public-key ...`", file=sys.stderr)
        try:
            proof = signing.sign(args.actor, action="operator.add", target=f"operator:{args.name}",
                                 values={"role": args.role, **({"public_key": pub} if pub else {})}, revision=0)
            res, _ = await signing.submit(proof)
            code = signing.report(res, None, f"operator add {args.name}", False)
        except BaseException:
            if path is not None:  # not registered: do not leave a key nobody knows
                path.unlink(missing_ok=True)
            raise
        op = res.outcome.operator
        print(f"operator {args.name} added as {args.role} by {args.actor} (key {op.get('key_id') or 'none'}; "
              f"signed, key {proof.key_id})")
        return code
    pub, _ = _public_key(args, args.name)
    async with switch_store() as store:
        op = await store.add_operator(args.name, Role(args.role), actor=args.actor, public_key=pub)
    print(f"operator {op.name} added as {op.role.value} by {args.actor}" + (f" (key {op.key_id})" if op.key_id else ""))
    return 0


async def cmd_operator_rotate_key(args) -> int:
    import os

    from rollbackctl.cli import signing

    if not (args.public_key or args.generate_key):
        raise CliError("give the new key: --public-key B64 (from `rollbackctl keygen`) or --generate-key", 2)
    async with switch_store() as store:
        kv = await store.etcd.get(store.operator_key(args.name))
        if kv is None:
            raise CliError(f"unknown operator {args.name!r} (see `rollbackctl operator list`)", 2)
        before = await store.operator(args.name)
    pub, path = _public_key(args, args.name, temp=True)
    try:
        if signing.signing_on():
            proof = signing.sign(args.actor, action="operator.rotate_key", target=f"operator:{args.name}",
                                 values={"public_key": pub, **({"reason": args.reason} if args.reason else {})},
                                 revision=kv.mod_revision)
            res, _ = await signing.submit(proof)
            signing.report(res, None, f"rotate-key {args.name}", False)
            new_id = res.outcome.operator.get("key_id")
        else:
            async with switch_store() as store:
                new_id = (await store.rotate_key(args.name, pub, actor=args.actor, reason=args.reason or None)).key_id
    except BaseException:
        if path is not None:
            path.unlink(missing_ok=True)
        raise
    if path is not None:  # applied: the new private key takes the old one's place
        from core import keys

        os.replace(path, keys.key_path(args.name))
        print(f"{keys.key_path(args.name)} now holds the new private key")
    print(f"key of {args.name} rotated by {args.actor}: {before.key_id or 'none'} -> {new_id} "
          "(the old key stops working for changes now, for workflow approvals within 30 s)")
    return 0


async def cmd_operator_list(args) -> int:
    async with switch_store() as store:
        ops = await store.operators()
    if args.json:
        print_json([o.model_dump() for o in ops])
    else:
        print(table([[o.name, o.role.value, o.key_id or "(no key)", o.added_by, o.added_at] for o in ops],
                    ["NAME", "ROLE", "KEY", "ADDED BY", "ADDED AT"]))
    return 0
