"""Decisions from the console, signed with a passkey (from a phone: the link in a page leads here).

`/decide/WID/STEP` shows what a waiting workflow asks, what the answer changes and who approved so far,
and a form per answer it accepts (the awaited decision and the wait's exits). Answering is two posts:

1. `prepare`: the console builds the request exactly as the CLI signs one (core/identity.SignedRequest:
   the decision kind, the operator, the workflow, the step, the decision's content, a new nonce) and
   keeps it; the browser gets the WebAuthn challenge, which is the SHA-256 of that request's canonical
   form, with the session's passkey as the only allowed credential;
2. `submit`: the browser's assertion. The console checks it is the session's passkey and a genuine
   signature over that very request, then sends the signed decision to the workflow as an Update. The
   workflow's validator checks it again with the same rules as an Ed25519 signature (current key,
   nonce never used, the step it waits at, the role, the two-person rule, break-glass), the worker
   re-checks it before a change set is written, and the audit record keeps the assertion, so
   `rollbackctl audit verify` checks it offline.

A link is bound to its step: once the workflow has moved past it the page says so and answers nothing.
The link carries no secret: what makes a decision is the passkey's signature, bound to the step.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from contracts.roles import Role
from core import identity

KINDS_WITH_FIELDS = {"fix": ("reference", "tests_passed", "restore"), "escalate": ("level",), "stay": ("level",),
                     "extend": ("extend_by",), "resolve": ("undo", "force"), "tick": ("item", "done", "note")}
PENDING_S = 120  # a prepared decision must be signed within this
ANSWER_MEANS = {"proceed": "go ahead now, without waiting for the window to end",
                "cancel": "do not roll back (a reason is required)",
                "escalate": "go to the next level (or the level you name)",
                "confirm": "approve: the workflow goes on"}


def standing(workflow_kind: str) -> list[dict[str, Any]]:
    """Decisions a workflow takes at any step (not only when it waits): a canary's controls, an incident's
    checklist and resolve. Roles as the manual has them (the workflow's validator decides in the end)."""
    if workflow_kind == "CanaryWorkflow":
        from manual.canary import DECISION_ROLES

        means = {"pause": "stop the clock and the stage's progress (health checks go on)",
                 "resume": "start the clock again", "abort": "roll back to Phase 1's configuration and end",
                 "extend": "observe the current stage longer"}
        return [{"kind": k, "min_role": DECISION_ROLES[k].value, "means": m, "fields": KINDS_WITH_FIELDS.get(k, ())}
                for k, m in means.items()]
    if workflow_kind == "IncidentWorkflow":
        return [{"kind": "tick", "min_role": Role.ON_CALL.value, "means": "tick off a further step of the manual's list",
                 "fields": KINDS_WITH_FIELDS["tick"]},
                {"kind": "resolve", "min_role": Role.ON_CALL.value,
                 "means": "resolve the incident (undo: also undo its immediate actions)",
                 "fields": KINDS_WITH_FIELDS["resolve"]}]
    return []


def options(p: Any, workflow_kind: str = "", step: str | None = None) -> list[dict[str, Any]]:
    """The answers the workflow accepts at `step`: the awaited kind and the wait's exits (each with its role),
    then the decisions it takes at any step."""
    out: list[dict[str, Any]] = []
    aw = p.awaiting
    if aw is not None and (step is None or aw.step == step):
        from workflows.base import ANSWERS

        for kind in ANSWERS.get(aw.expects, (aw.expects,)):  # "proceed_or_cancel": proceed, cancel; ...
            out.append({"kind": kind, "min_role": aw.min_role, "means": ANSWER_MEANS.get(kind, "answer the question above"),
                        "fields": KINDS_WITH_FIELDS.get(kind, ())})
        for e in aw.exits:
            out.append({"kind": e.kind, "min_role": e.min_role or aw.min_role, "means": e.means,
                        "fields": KINDS_WITH_FIELDS.get(e.kind, ())})
    have = {o["kind"] for o in out}
    return out + [o for o in standing(workflow_kind) if o["kind"] not in have]


def model_for(workflow_kind: str, kind: str):
    """The Update's input model for decision `kind` of a workflow kind."""
    from contracts.incidents import ResolveRequest, TickRequest
    from contracts.progress import Decision
    from workflows.canary_models import CanaryDecision

    if workflow_kind == "CanaryWorkflow":
        return CanaryDecision
    if workflow_kind == "IncidentWorkflow":
        return {"resolve": ResolveRequest, "tick": TickRequest}.get(kind, Decision)
    return Decision


def update_name(workflow_kind: str, step: str, kind: str) -> str:
    """The Update that carries decision `kind` (an incident's acknowledgement is signed as "confirm")."""
    if workflow_kind == "IncidentWorkflow" and step == "acknowledge" and kind == "confirm":
        return "acknowledge"
    return kind


def decision_from(body: dict[str, Any], actor: str, fields: tuple[str, ...], model=None):
    """The decision of a prepare body (400 naming the field when malformed)."""
    from pydantic import ValidationError

    from contracts.progress import Decision
    from rollbackctl.console.common import Denied

    unknown = set(body) - {"kind", "reason", "break_glass", *fields}
    if unknown:
        raise Denied(400, f"{sorted(unknown)[0]}: not a field of this decision")
    data = {k: body[k] for k in ("reason", "break_glass", *fields) if k in body and body[k] not in (None, "")}
    if isinstance(data.get("extend_by"), str):
        from rollbackctl.cli.workflow_cmds import duration

        try:
            data["extend_by"] = duration(data["extend_by"])
        except Exception:
            raise Denied(400, f"extend_by: {data['extend_by']!r} is not a duration like 12h or 2d") from None
    try:
        return (model or Decision)(actor=actor, **data)
    except ValidationError as e:
        err = e.errors()[0]
        raise Denied(400, f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}") from None


class Decisions:
    """The decision routes of one Console (its sessions, data and settings)."""

    def __init__(self, console):
        self.c = console
        self.prepared: dict[str, tuple[float, str, str, str, Any]] = {}  # nonce -> (expires, session, wid, step, decision)

    async def _context(self, request: Request) -> tuple[Any, str, str, Any]:
        from rollbackctl.console.common import WID_RE, Denied

        wid, step = request.path_params["wid"], request.path_params["step"]
        if not WID_RE.match(wid) or not WID_RE.match(step):
            raise Denied(400, "the link's workflow id or step is malformed")
        s = await self.c.require(request, Role.VIEWER)
        from temporalio.service import RPCError

        try:
            row = await self.c.data.workflow(wid)
        except RPCError as e:
            raise Denied(404, f"workflow {wid}: {e.message}") from None
        return s, wid, step, row

    @staticmethod
    def _passed(row: Any, step: str) -> str | None:
        """Why this link answers nothing now (the step is passed, or the workflow ended), or None."""
        p = row.progress
        if row.status != "running" or p is None:
            return f"{row.id} is {row.status}" + (f" ({p.result})" if p is not None and p.result else "") + \
                   ": nothing waits for a decision any more"
        if p.decision_step() != step:
            return (f"this link was for step {step}; the workflow has moved on (now at {p.decision_step()}): "
                    "nothing to decide here")
        return None

    async def page(self, request: Request) -> Response:
        s, wid, step, row = await self._context(request)
        role = request.state.role
        passed = self._passed(row, step)
        p = row.progress
        opts = [] if passed else [{**o, "allowed": role.at_least(Role(o["min_role"]))}
                                  for o in options(p, row.kind, step)]
        checklist = [i for i in (row.extra.checklist if row.kind == "IncidentWorkflow" and row.extra else [])]
        op = (await self.c.data.operators()).get(s.operator)
        pk = next((k for k in (op.passkeys if op else []) if k.credential_id == s.credential_id), None)
        can_sign = pk is not None and bool(pk.key)
        recent = [d for d in (p.decisions if p else [])][-6:]
        return self.c.render("decide.html", request, title=f"Decide: {wid}", row=row, p=p, step=step, passed=passed,
                             opts=opts, can_sign=can_sign, recent=recent, super_admin=role is Role.SUPER_ADMIN,
                             checklist=checklist)

    async def prepare(self, request: Request) -> Response:
        from rollbackctl.console.common import Denied

        s, wid, step, row = await self._context(request)
        await self.c.check_csrf(request, s)
        body = await self.c.json_body(request)
        passed = self._passed(row, step)
        if passed:
            raise Denied(409, passed)
        kind = body.get("kind")
        opts = options(row.progress, row.kind, step)
        opt = next((o for o in opts if o["kind"] == kind), None)
        if opt is None:
            raise Denied(400, f"kind: {kind!r} is not an answer step {step} accepts ({', '.join(o['kind'] for o in opts)})")
        if not request.state.role.at_least(Role(opt["min_role"])):
            raise Denied(403, f"{s.operator} is {request.state.role.value}; {kind} at {step} needs {opt['min_role']} "
                              "or above")
        op = (await self.c.data.operators()).get(s.operator)
        pk = next((k for k in (op.passkeys if op else []) if k.credential_id == s.credential_id), None)
        if pk is None or not pk.key:
            raise Denied(409, "this passkey signs in but cannot sign decisions (approved before they could): "
                              "register it again")
        d = decision_from(body, s.operator, opt["fields"], model_for(row.kind, kind))
        d = d.model_copy(update={"action": kind, "workflow_id": wid, "step": step, "nonce": identity.new_nonce(),
                                 "key_id": identity.key_id(pk.key)})
        req = d.signed_request()
        now = self.c.sessions.clock()
        for n in [n for n, v in self.prepared.items() if v[0] < now]:
            del self.prepared[n]
        self.prepared[d.nonce] = (now + PENDING_S, s.id, wid, step, d)
        fields = identity.passkey_fields(pk.key)
        return JSONResponse({
            "nonce": d.nonce, "request": req.model_dump(mode="json"),
            "publicKey": {"challenge": identity.challenge(req), "rpId": fields["rp_id"], "timeout": 60000,
                          "userVerification": "preferred",
                          "allowCredentials": [{"type": "public-key", "id": s.credential_id}]},
        }, headers={"Cache-Control": "no-store"})

    async def submit(self, request: Request) -> Response:
        from temporalio.client import WorkflowUpdateFailedError
        from temporalio.service import RPCError

        from rollbackctl.console.common import Denied

        s, wid, step, row = await self._context(request)
        await self.c.check_csrf(request, s)
        body = await self.c.json_body(request)
        nonce = body.get("nonce")
        got = self.prepared.pop(nonce, None) if isinstance(nonce, str) else None
        if got is None or got[0] < self.c.sessions.clock():
            raise Denied(409, "no decision is prepared under this nonce (used already, or older than "
                              f"{PENDING_S} s): start again")
        _, sid, pwid, pstep, d = got
        if sid != s.id or (pwid, pstep) != (wid, step):
            raise Denied(403, "this decision was prepared in another session or for another step")
        cred = body.get("credential")
        if not isinstance(cred, dict) or cred.get("id") != s.credential_id or not isinstance(cred.get("response"), dict):
            raise Denied(403, "the assertion is not from the passkey this session signed in with")
        r = cred["response"]
        if not all(isinstance(r.get(k), str) for k in ("authenticatorData", "clientDataJSON", "signature")):
            raise Denied(400, "credential.response: authenticatorData, clientDataJSON and signature are required")
        d = d.model_copy(update={"signature": r["signature"], "authenticator_data": r["authenticatorData"],
                                 "client_data": r["clientDataJSON"]})
        op = (await self.c.data.operators()).get(s.operator)
        pk = next((k for k in (op.passkeys if op else []) if k.credential_id == s.credential_id), None)
        if pk is None:
            raise Denied(401, "your passkey was removed: sign in again")
        why = identity.passkey_refusal(d.proof(), pk.key)
        if why is not None:
            raise Denied(403, f"the passkey's assertion is refused: {why}")
        await self.c.count_signature(s.credential_id, d.authenticator_data)
        name = update_name(row.kind, step, d.action)
        try:
            ack = await self.c.data.client.get_workflow_handle(wid).execute_update(name, d)  # a DecisionAck or a str
        except WorkflowUpdateFailedError as e:
            cause = getattr(e, "cause", None)
            raise Denied(409, f"{d.action} refused by {wid}: {getattr(cause, 'message', None) or cause or e}") from None
        except RPCError as e:
            raise Denied(503, f"{wid}: {e.message}") from None
        msg = ack.get("message", "accepted") if isinstance(ack, dict) else str(ack)
        return JSONResponse({"ok": True, "message": f"{d.action} by {s.operator} at {step}: {msg}",
                             "at": datetime.now(timezone.utc).isoformat()}, headers={"Cache-Control": "no-store"})
