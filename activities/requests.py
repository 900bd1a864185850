"""Signed requests, verified where the etcd write credentials are: the worker.

Two entry points:

- `RequestActivities.apply` (`request.apply`): a direct change an operator signed with the CLI
  (`switch set`, `operator add`, `operator rotate-key`), carried by ChangeRequestWorkflow. Checked
  against etcd as it is now: the operator's current key (a rotated or removed key stops working at
  once), the signature, a nonce never used by another request, the revision the operator read
  (nothing changed since), the permission rule and the two-person rule. Then applied in one
  transaction with the nonce and the signature in the audit record, or refused saying why.
- `verify_workflow_change`: a workflow's change set carries the signed requests behind it (its
  start and the decisions its validators accepted). Re-checked here before the write: each is
  genuine (signed by a key its operator holds or held: a decision accepted before a rotation stays
  valid), for this workflow, and together they satisfy the two-person rule.
"""

from __future__ import annotations

from typing import Any

from temporalio import activity

from activities.switch_store import (
    InvalidChange,
    PermissionDenied,
    SwitchStore,
    application_error,
)
from contracts.changes import BreakGlass, ChangeSetRequest, Operator, SwitchChange
from contracts.requests import SECOND_APPROVAL_STEP, RequestApply, RequestOutcome
from contracts.roles import Role
from core import identity
from manual import approvals, switches


def _refused(kind: identity.Refusal, detail: str) -> identity.Refused:
    return identity.Refused(kind, detail)


def genuine(proof: identity.Proof, op: Operator | None) -> None:
    """Signed by a key `op` holds or held (decisions accepted before a rotation stay valid)."""
    who = proof.request.actor
    if op is None:
        raise _refused(identity.Refusal.UNKNOWN_KEY, f"{who} is not an operator")
    for k in (op.public_key, *(pk.key for pk in op.passkeys), *op.retired_keys):
        if k and identity.key_id(k) == proof.key_id:
            if identity.signature_valid(proof, k):
                return
            raise _refused(identity.Refusal.BAD_SIGNATURE, f"{who}'s signature does not match the request")
    raise _refused(identity.Refusal.UNKNOWN_KEY, f"key {proof.key_id} was never {who}'s")


def current(proof: identity.Proof, op: Operator | None) -> None:
    """Signed now-validly: with `op`'s current key (rotated or removed keys refused)."""
    if op is None:
        raise _refused(identity.Refusal.UNKNOWN_KEY, f"{proof.request.actor} is not an operator")
    identity.check_key(proof, op.name, op.public_key, [identity.key_id(k) for k in op.retired_keys],
                       [pk.key for pk in op.passkeys if pk.key])


def _typed(name: str, value: Any) -> Any:
    try:
        return switches.get(name).parse(value)
    except (switches.UnknownSwitch, switches.SwitchValueError):
        return value  # the store refuses it with its own message


def two_person_refusal(values: dict[str, Any], proofs: list[identity.Proof], ops: dict[str, Operator],
                       break_glass: BreakGlass | None) -> str | None:
    """Why these signed requests do not satisfy the two-person rule for these values, or None."""
    names = approvals.two_person_changes({n: _typed(n, v) for n, v in values.items()})
    if not names:
        return None
    need = approvals.plan_owner_role(names)
    if break_glass is not None:
        op = ops.get(break_glass.by)
        signed = any(p.request.actor == break_glass.by and p.request.values.get("break_glass") == break_glass.reason
                     for p in proofs)
        if op is not None and op.role is Role.SUPER_ADMIN and signed:
            return None
        return f"break-glass by {break_glass.by} is not a super admin's signed request"
    who = sorted({p.request.actor for p in proofs
                  if (op := ops.get(p.request.actor)) is not None and op.role.at_least(need)})
    if len(who) >= 2:
        return None
    return (f"two-person rule: {', '.join(names)} needs signed approvals from two different {need.value}s "
            f"(signed so far: {', '.join(who) or 'none'})")


async def verify_workflow_change(store: SwitchStore, req: ChangeSetRequest, workflow_id: str) -> None:
    ops = {o.name: o for o in await store.operators()}
    for p in req.proofs:
        genuine(p, ops.get(p.request.actor))
        if p.request.workflow_id != workflow_id:
            raise _refused(identity.Refusal.WRONG_WORKFLOW,
                           f"{p.request.actor}'s {p.request.action} was signed for {p.request.workflow_id}")
    why = two_person_refusal({c.switch: c.value for c in req.changes}, req.proofs, ops, req.break_glass)
    if why:
        raise PermissionDenied(why)


class RequestVerifier:
    """The checks and the write of one direct request (I/O against the store; see the module doc)."""

    def __init__(self, store: SwitchStore):
        self.store = store

    async def apply(self, inp: RequestApply, workflow_id: str, owner: str) -> RequestOutcome:
        p, r = inp.proof, inp.proof.request
        op = await self.store.operator(r.actor)
        current(p, op)
        used_by = await self.store.nonce_owner(r.nonce)
        if used_by is not None and used_by != owner:
            raise _refused(identity.Refusal.REUSED_NONCE, f"nonce {r.nonce} was used by {used_by}: a replayed request")
        retry = used_by == owner  # this run applied it already (an activity retry)
        if r.action == "switch.set":
            return await self._switch_set(inp, op, workflow_id, owner, retry)
        if r.action in ("operator.add", "operator.rotate_key", "operator.approve_passkey", "operator.remove_passkey"):
            return await self._operator(inp, op, owner, retry)
        raise _refused(identity.Refusal.WRONG_ACTION, f"{r.action!r} is not a direct request")

    async def _approvals(self, inp: RequestApply, workflow_id: str, need: Role) -> list[identity.Proof]:
        out: list[identity.Proof] = []
        for a in inp.approvals:
            current(a, await self.store.operator(a.request.actor))
            identity.check_binding(a, workflow_id=workflow_id, action="confirm", step=SECOND_APPROVAL_STEP,
                                   used_nonces=[x.request.nonce for x in (inp.proof, *out)])
            out.append(a)
        return out

    async def _switch_set(self, inp: RequestApply, op: Operator, workflow_id: str, owner: str,
                          retry: bool) -> RequestOutcome:
        p, r = inp.proof, inp.proof.request
        name = r.target.removeprefix("switch:")
        try:
            sw = switches.get(name)
        except switches.UnknownSwitch as e:
            raise InvalidChange(str(e)) from None
        if r.target != f"switch:{name}" or "value" not in r.values or not str(r.values.get("reason", "")).strip():
            raise InvalidChange("a switch.set request names switch:<name> and carries a value and a reason")
        try:
            value = sw.parse(r.values["value"])
        except switches.SwitchValueError as e:
            raise InvalidChange(str(e)) from None
        if not retry:
            st = await self.store.get(name)
            if st.revision != r.revision:
                raise _refused(identity.Refusal.STALE,
                               f"{name} is at etcd revision {st.revision} (set by {st.updated_by} at {st.updated_at}); "
                               f"the request was signed at revision {r.revision}: read it again and sign a new request")
        bg = r.values.get("break_glass")
        if bg and op.role is not Role.SUPER_ADMIN:
            raise PermissionDenied(f"break-glass needs a super_admin; {op.name} is {op.role.value}")
        two = approvals.two_person_changes({name: value})
        approvers = await self._approvals(inp, workflow_id, sw.permission)
        proofs = [p, *approvers]
        ops = {o.name: o for o in await self.store.operators()}
        break_glass = BreakGlass(by=r.actor, reason=bg) if bg else None
        if two and not bg and two_person_refusal({name: value}, proofs, ops, None) is not None:
            if not op.role.at_least(sw.permission):  # the requester cannot be the first of the two
                raise PermissionDenied(f"{op.name} is {op.role.value}; {name} is owned by {sw.permission.value}")
            return RequestOutcome(status="needs_approval", owner_role=sw.permission.value, two_person=two,
                                  detail=f"{name}={sw.render(value)} falls under the two-person rule: a second "
                                         f"{sw.permission.value} must approve")
        req = ChangeSetRequest(
            change_id=f"req-{r.nonce}", actor=r.actor, action="switch.set",
            changes=[SwitchChange(switch=name, value=value)], reason=str(r.values["reason"]), source="cli",
            expected={name: r.values["expected"]} if r.values.get("expected") is not None else None,
            proofs=proofs, nonce_owner=owner, revisions={name: r.revision or 0}, break_glass=break_glass,
            approved_by=approvers[-1].request.actor if approvers else None,
        )
        res = await self.store.apply(req)
        return RequestOutcome(status="applied", result=res, two_person=two, break_glass=bg,
                              detail=f"applied as audit {res.audit_id}" + (" (already applied)" if res.replayed else ""))

    async def _operator(self, inp: RequestApply, op: Operator, owner: str, retry: bool) -> RequestOutcome:
        p, r = inp.proof, inp.proof.request
        name = r.target.removeprefix("operator:")
        if r.target != f"operator:{name}":
            raise InvalidChange("an operator request names operator:<name>")
        if retry:
            now = await self.store.operator(name)
            return RequestOutcome(status="applied", detail="already applied",
                                  operator=now.model_dump(include={"name", "role", "public_key"}) if now else None)
        if r.action == "operator.add":
            if r.revision not in (0, None):
                raise _refused(identity.Refusal.STALE, "an operator.add request is signed against revision 0")
            try:
                role = Role(r.values.get("role"))
            except ValueError:
                raise InvalidChange(f"unknown role {r.values.get('role')!r}") from None
            new = await self.store.add_operator(name, role, actor=op.name, public_key=r.values.get("public_key"),
                                                proofs=[p], nonce_owner=owner)
        elif r.action == "operator.approve_passkey":
            v = r.values
            if not all(isinstance(v.get(k), str) and v.get(k) for k in ("credential_id", "public_key", "code")):
                raise InvalidChange("operator.approve_passkey names credential_id, public_key and code")
            new = await self.store.approve_passkey(name, v["credential_id"], v["public_key"], v["code"], actor=op.name,
                                                   proofs=[p], nonce_owner=owner, revision=r.revision)
            return RequestOutcome(status="applied", detail=f"passkey {v['code']} of {name} approved",
                                  operator={"name": new.name, "role": new.role.value, "passkeys": len(new.passkeys)})
        elif r.action == "operator.remove_passkey":
            if not isinstance(r.values.get("credential_id"), str):
                raise InvalidChange("operator.remove_passkey names credential_id")
            new = await self.store.remove_passkey(name, r.values["credential_id"], actor=op.name,
                                                  reason=r.values.get("reason") or None, proofs=[p],
                                                  nonce_owner=owner, revision=r.revision)
            return RequestOutcome(status="applied", detail=f"passkey of {name} removed",
                                  operator={"name": new.name, "role": new.role.value, "passkeys": len(new.passkeys)})
        else:
            if not r.values.get("public_key"):
                raise InvalidChange("operator.rotate_key needs a public_key")
            new = await self.store.rotate_key(name, r.values["public_key"], actor=op.name, proofs=[p],
                                              nonce_owner=owner, revision=r.revision,
                                              reason=r.values.get("reason") or None)
        return RequestOutcome(status="applied", detail=f"{r.action} {name} (key {new.key_id or 'none'})",
                              operator={"name": new.name, "role": new.role.value, "key_id": new.key_id})


class RequestActivities:
    def __init__(self, store: SwitchStore):
        self.verifier = RequestVerifier(store)

    @activity.defn(name="request.apply")
    async def apply(self, inp: RequestApply) -> RequestOutcome:

        info = activity.info()
        try:
            out = await self.verifier.apply(inp, info.workflow_id, f"{info.workflow_id}/{info.workflow_run_id}")
        except Exception as e:
            raise application_error(e) from e
        r = inp.proof.request
        activity.logger.info("signed request %s %s by %s (key %s): %s", r.action, r.target, r.actor,
                             inp.proof.key_id, out.status)
        return out
