"""`passkey list|approve|remove`: the console's sign-in passkeys (a super admin's acts; audited).

An operator registers a passkey in the console (`/register`); it is only *pending* there until a super
admin approves it here, naming the code the operator was shown (read out over a channel the super admin
trusts: that is what binds the passkey to the person). With signing on, the approval is a signed request
carried out by the worker, like `operator rotate-key`; with ROLLBACKCTL_SIGNING=off it writes etcd directly.
"""

from __future__ import annotations

import argparse

from rollbackctl.cli.common import CliError, print_json, switch_store, table


def register(sub: argparse._SubParsersAction) -> None:
    pk = sub.add_parser("passkey", help="console sign-in passkeys: list, approve, remove (super admin)").add_subparsers(
        dest="passkey_cmd", metavar="SUBCOMMAND", required=True)
    p = pk.add_parser("list", help="approved passkeys and registrations awaiting approval")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)
    p = pk.add_parser("approve", help="approve a passkey registered in the console (super admin; signed, audited)",
                      description="CODE is what the console showed the operator when they registered; ask them "
                                  "for it over a channel you trust.")
    p.add_argument("operator", help="whose passkey (see `rollbackctl passkey list`)")
    p.add_argument("code", help="the code the operator was shown, e.g. K7QF-2MXA")
    p.add_argument("--as", dest="actor", required=True, metavar="SUPERADMIN")
    p.set_defaults(func=cmd_approve)
    p = pk.add_parser("remove", help="remove an approved passkey (super admin; signed, audited): its sessions end")
    p.add_argument("operator", help="whose passkey (see `rollbackctl passkey list`)")
    p.add_argument("code", help="the passkey's code (see `passkey list`)")
    p.add_argument("--as", dest="actor", required=True, metavar="SUPERADMIN")
    p.add_argument("--reason", default="")
    p.set_defaults(func=cmd_remove)


async def cmd_list(args) -> int:
    async with switch_store() as store:
        ops = await store.operators()
        pending = await store.pending_passkeys()
    rows = [{"operator": o.name, "role": o.role.value, "code": pk.code, "status": "approved",
             "registered_at": pk.registered_at, "approved": f"{pk.approved_by} at {pk.approved_at}",
             "credential_id": pk.credential_id} for o in ops for pk in o.passkeys]
    rows += [{"operator": p.get("operator"), "role": "", "code": p.get("code"), "status": "PENDING",
              "registered_at": p.get("registered_at"), "approved": "", "credential_id": p.get("credential_id")}
             for p in pending]
    if args.json:
        print_json(rows)
        return 0
    print(table([[r["operator"], r["code"], r["status"], r["registered_at"], r["approved"]] for r in rows],
                ["OPERATOR", "CODE", "STATUS", "REGISTERED", "APPROVED"]) if rows else "no passkeys")
    if pending:
        print("\napprove one: rollbackctl passkey approve OPERATOR CODE --as SUPERADMIN")
    return 0


def _norm(code: str) -> str:
    return code.strip().upper().replace(" ", "")


async def cmd_approve(args) -> int:
    from rollbackctl.cli import signing

    code = _norm(args.code)
    async with switch_store() as store:
        pending = [p for p in await store.pending_passkeys() if p.get("operator") == args.operator]
        match = [p for p in pending if p.get("code") == code]
        if not match:
            have = ", ".join(p.get("code") for p in pending) or "none"
            raise CliError(f"no passkey of {args.operator} awaits approval with code {code} (pending for "
                           f"{args.operator}: {have}); `rollbackctl passkey list` shows them all", 2)
        p = match[0]
        kv = await store.etcd.get(store.operator_key(args.operator))
        if kv is None:
            raise CliError(f"unknown operator {args.operator!r} (see `rollbackctl operator list`)", 2)
        if not signing.signing_on():
            op = await store.approve_passkey(args.operator, p["credential_id"], p["public_key"], code,
                                             actor=args.actor, revision=kv.mod_revision)
            print(f"passkey {code} of {op.name} approved by {args.actor}: {op.name} can sign in to the console")
            return 0
    proof = signing.sign(args.actor, action="operator.approve_passkey", target=f"operator:{args.operator}",
                         values={"credential_id": p["credential_id"], "public_key": p["public_key"], "code": code},
                         revision=kv.mod_revision)
    res, _ = await signing.submit(proof)
    rc = signing.report(res, None, f"passkey approve {args.operator} {code}", False)
    print(f"passkey {code} of {args.operator} approved by {args.actor} (signed, key {proof.key_id}): "
          f"{args.operator} can sign in to the console")
    return rc


async def cmd_remove(args) -> int:
    from rollbackctl.cli import signing

    code = _norm(args.code)
    async with switch_store() as store:
        op = await store.operator(args.operator)
        if op is None:
            raise CliError(f"unknown operator {args.operator!r} (see `rollbackctl operator list`)", 2)
        match = [pk for pk in op.passkeys if pk.code == code]
        if not match:
            raise CliError(f"{args.operator} has no approved passkey with code {code} (theirs: "
                           f"{', '.join(pk.code for pk in op.passkeys) or 'none'})", 2)
        kv = await store.etcd.get(store.operator_key(args.operator))
        if not signing.signing_on():
            await store.remove_passkey(args.operator, match[0].credential_id, actor=args.actor,
                                       reason=args.reason or None, revision=kv.mod_revision)
            print(f"passkey {code} of {args.operator} removed by {args.actor}; its console sessions end now")
            return 0
    proof = signing.sign(args.actor, action="operator.remove_passkey", target=f"operator:{args.operator}",
                         values={"credential_id": match[0].credential_id,
                                 **({"reason": args.reason} if args.reason else {})},
                         revision=kv.mod_revision)
    res, _ = await signing.submit(proof)
    rc = signing.report(res, None, f"passkey remove {args.operator} {code}", False)
    print(f"passkey {code} of {args.operator} removed by {args.actor} (signed, key {proof.key_id}); "
          "its console sessions end now")
    return rc
