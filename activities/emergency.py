"""The emergency lane: the manual's pre-approved emergency moves while Temporal is down.

With signing on, only the worker holds etcd's write credentials and every change normally travels
through a Temporal workflow. When the Temporal cluster is unreachable that leaves nobody able to
take the moves the manual says to take at once. Each worker therefore serves, beside its Temporal
polling, a small HTTP endpoint (`POST /v1/emergency`, loopback by default: ROLLBACKCTL_EMERGENCY_LISTEN)
that takes exactly one kind of input: a signed request for one of manual/emergency.py's moves.

- `EmergencyLane.apply`: the same checks as a change request (activities/requests.py): the
  operator's current key and signature, a nonce never used (the CLI's `switch set` proof is the very
  request it would have sent through Temporal: it lands in one lane only), the etcd revision the
  operator read, the role; then one transaction with the audit record (source `emergency`,
  change id `emergency-<nonce>`) and the nonce. Level 2's trading-core pauses follow, idempotent by
  the change id. Nothing that needs a second person or a super admin.
- `EmergencyReconciler`: once Temporal answers again, every emergency change without a follow-up
  gets one: `EmergencyWorkflow` (workflows/emergency.py, id = the change id) pages what was done and
  waits for an acknowledgement. Found through the change markers the store writes in the same
  transaction as the change (`<prefix>changes/emergency-*`), so a move is never missed, and opened at
  most once (the workflow id; `<prefix>emergency/followed/<change id>` once it is).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Awaitable, Callable

from temporalio import activity

from activities.requests import current
from activities.switch_store import InvalidChange, PermissionDenied, StoreError, SwitchStore
from contracts.changes import Authority, ChangeRecord, ChangeSetRequest
from contracts.emergency import (
    EMERGENCY_PATH,
    EMERGENCY_PREFIX,
    EmergencyFollowUpInput,
    EmergencyOutcome,
    EmergencyRecord,
    EmergencyRequest,
    emergency_id,
)
from core.aio import wait_set
from contracts.trading_core import CoreActionInput
from core import identity
from manual import emergency

log = logging.getLogger("rollbackctl.emergency")

CoreAction = Callable[[CoreActionInput], Awaitable[Any]]


class EmergencyLane:
    def __init__(self, store: SwitchStore, core_action: CoreAction | None = None):
        self.store, self.core_action = store, core_action

    async def apply(self, proof: identity.Proof) -> EmergencyOutcome:
        r = proof.request
        try:
            mv = emergency.move(r.action, r.target, r.values)
        except emergency.NotEmergency as e:
            raise InvalidChange(str(e)) from None
        reason = str(r.values.get("reason", "")).strip()
        if not reason:
            raise InvalidChange("an emergency move carries a reason")
        op = await self.store.operator(r.actor)
        current(proof, op)  # unknown operator, removed or unknown key, bad signature: refused
        change_id = emergency_id(r.nonce)
        used_by = await self.store.nonce_owner(r.nonce)
        if used_by is not None and used_by != change_id:
            raise identity.Refused(identity.Refusal.REUSED_NONCE, f"nonce {r.nonce} was used by {used_by}: a replayed request")
        if not op.role.at_least(mv.role):
            raise PermissionDenied(f"{mv.what} needs {mv.role.value}; {op.name} is {op.role.value}")
        revisions: dict[str, int] = {}
        if used_by is None:  # not a retry of this very request
            for name in mv.changes:
                st = await self.store.get(name)
                if r.revision is None or st.revision > r.revision or (r.action == emergency.SWITCH_ACTION
                                                                     and st.revision != r.revision):
                    raise identity.Refused(identity.Refusal.STALE, (
                        f"{name} is at etcd revision {st.revision} (set by {st.updated_by} at {st.updated_at}); the "
                        f"request was signed at revision {r.revision}: read it again and sign a new request"))
                revisions[name] = st.revision
        res = await self.store.apply(ChangeSetRequest(
            change_id=change_id, actor=r.actor, action=r.action, source="emergency", authority=Authority.PREAPPROVED,
            changes=[{"switch": k, "value": v} for k, v in mv.changes.items()],
            reason=reason, proofs=[proof], nonce_owner=change_id,  # the reason as signed: `audit verify` checks it
            revisions=revisions or None))
        done = [await self._core(change_id, m.action, m.body) for m in mv.core_actions]
        if done:
            await self.store.etcd.put(self.store.counter_key(f"emergency/core/{change_id}"), json.dumps(done).encode())
        log.warning("EMERGENCY LANE: %s by %s (key %s) applied as audit %s%s", mv.what, r.actor, proof.key_id,
                    res.audit_id, f"; trading core: {', '.join(done)}" if done else "")
        return EmergencyOutcome(change_id=change_id, audit_id=res.audit_id, revision=res.revision, changes=res.changes,
                                core_actions=done, replayed=res.replayed,
                                detail=f"{mv.what} applied as audit {res.audit_id}" + (" (already applied)" if res.replayed else ""))

    async def _core(self, change_id: str, action: str, body: dict[str, Any]) -> str:
        if self.core_action is None:
            return f"{action}: NOT SENT (no trading core configured)"
        try:
            out = await self.core_action(CoreActionInput(action=action, body=body,
                                                         idempotency_key=f"{change_id}:{action}"))
            return f"{action}: {getattr(out, 'status', 'done')}"
        except Exception as e:  # the switches are in force; say what the core did not take
            return f"{action}: FAILED ({getattr(e, 'message', None) or e})"

    async def record(self, change_id: str) -> EmergencyRecord | None:
        kv = await self.store.etcd.get(self.store.marker_key(change_id))
        if kv is None:
            return None
        audit_id = json.loads(kv.value)["audit_id"]
        rec_kv = await self.store.etcd.get(f"{self.store.prefix}audit/{audit_id}")
        if rec_kv is None:
            return None
        rec = json.loads(rec_kv.value)
        core_kv = await self.store.etcd.get(self.store.counter_key(f"emergency/core/{change_id}"))
        proofs = rec.get("signatures") or []
        return EmergencyRecord(change_id=change_id, audit_id=audit_id, at=rec["at"], actor=rec["actor"],
                               action=rec.get("action", ""), reason=rec.get("reason", ""),
                               changes=[ChangeRecord(**c) for c in rec["changes"]],
                               key_id=(proofs[0].get("key_id") if proofs and isinstance(proofs[0], dict) else None),
                               core_actions=json.loads(core_kv.value) if core_kv else [])


# -- the HTTP endpoint --------------------------------------------------------------------------------------
def refusal_status(e: Exception) -> tuple[int, str]:
    """(HTTP status, kind) of a refused emergency request."""
    if isinstance(e, identity.Refused):
        return (409 if e.kind is identity.Refusal.STALE else 403), e.kind.value
    if isinstance(e, PermissionDenied):
        return 403, "permission denied"
    if isinstance(e, InvalidChange):
        return 400, "invalid"
    if isinstance(e, StoreError):
        return 409, type(e).__name__
    return 503, "unavailable"


def create_app(lane: EmergencyLane):
    from pydantic import ValidationError
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def post(request: Request) -> JSONResponse:
        try:
            req = EmergencyRequest.model_validate_json(await request.body())
        except ValidationError as e:
            return JSONResponse({"error": f"not a signed emergency request: {e.errors()[0]['msg']}", "kind": "invalid"},
                                status_code=400)
        try:
            out = await lane.apply(req.proof)
        except Exception as e:
            status, kind = refusal_status(e)
            if status == 503:
                log.warning("emergency lane: %s: %s", type(e).__name__, e)
            return JSONResponse({"error": str(e) or type(e).__name__, "kind": kind}, status_code=status)
        return JSONResponse(out.model_dump(mode="json"))

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "moves": [f"{emergency.SWITCH_ACTION} to a rollback value",
                                                   *(f"{emergency.LEVEL_ACTION} level:{n}" for n in emergency.LEVELS)]})

    return Starlette(routes=[Route(EMERGENCY_PATH, post, methods=["POST"]), Route(EMERGENCY_PATH, health, methods=["GET"])])


async def serve(lane: EmergencyLane, listen: str, stop: asyncio.Event) -> None:
    """Serve the lane on `listen` (host:port) until `stop`; a port in use is said, not fatal (another
    worker on this host serves it)."""
    import uvicorn

    host, _, port = listen.rpartition(":")
    server = uvicorn.Server(uvicorn.Config(create_app(lane), host=host, port=int(port), log_level="warning",
                                           access_log=False, lifespan="off"))
    server.install_signal_handlers = lambda: None  # the worker owns SIGTERM / SIGINT
    task = asyncio.create_task(server.serve())
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        stopper.cancel()
        log.warning("emergency lane not served on %s (%s): another worker may serve it", listen,
                    task.exception() or "server ended")
        return
    server.should_exit = True
    await task


# -- follow-ups once Temporal is back -------------------------------------------------------------------------
class EmergencyReconciler:
    def __init__(self, store: SwitchStore, start: Callable[[str], Awaitable[bool]]):
        """`start(change_id)` opens the follow-up workflow; True when it exists (started now or before)."""
        self.store, self.start = store, start

    def followed_key(self, change_id: str) -> str:
        return self.store.counter_key(f"emergency/followed/{change_id}")

    async def pending(self) -> list[str]:
        kvs, _ = await self.store.etcd.get_prefix(self.store.marker_key(EMERGENCY_PREFIX))
        ids = [kv.key.removeprefix(self.store.marker_key("")) for kv in kvs]
        followed, _ = await self.store.etcd.get_prefix(self.followed_key(EMERGENCY_PREFIX))
        done = {kv.key.removeprefix(self.followed_key("")) for kv in followed}
        return [i for i in ids if i not in done]

    async def step(self) -> list[str]:
        """Open the follow-up of every emergency change without one; returns the change ids followed now."""
        out = []
        for change_id in await self.pending():
            if await self.start(change_id):
                await self.store.etcd.put(self.followed_key(change_id), json.dumps({"workflow": change_id}).encode())
                out.append(change_id)
        return out

    async def run(self, stop: asyncio.Event, every_s: float = 2.0) -> None:
        while not stop.is_set():
            try:
                for change_id in await self.step():
                    log.warning("emergency move %s: follow-up workflow opened (Temporal is back)", change_id)
            except Exception as e:  # Temporal or etcd still down: the next round tries again
                log.info("emergency follow-ups: %s: %s", type(e).__name__, e)
            await wait_set(stop, every_s)


def temporal_starter(client, task_queue: str) -> Callable[[str], Awaitable[bool]]:
    from datetime import datetime, timezone

    from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
    from temporalio.exceptions import WorkflowAlreadyStartedError

    async def start(change_id: str) -> bool:
        try:
            await client.start_workflow(
                "EmergencyWorkflow", EmergencyFollowUpInput(change_id=change_id, detected_at=datetime.now(timezone.utc)),
                id=change_id, task_queue=task_queue, id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                static_summary=f"follow-up of an emergency move applied while Temporal was down ({change_id})")
        except WorkflowAlreadyStartedError:
            pass
        return True

    return start


class EmergencyActivities:
    def __init__(self, store: SwitchStore):
        self.lane = EmergencyLane(store)

    @activity.defn(name="emergency.record")
    async def record(self, inp: EmergencyFollowUpInput) -> EmergencyRecord | None:
        return await self.lane.record(inp.change_id)

