"""The CLI side of signed requests: sign with the operator's private key, submit to the worker.

Every command that changes or approves something goes through here. With ROLLBACKCTL_SIGNING=off
(local drills only) nothing is signed and a warning is printed on stderr; the caller then writes
etcd itself, or sends an unsigned decision.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from typing import Any

from core import identity
from core.aio import within
from rollbackctl.cli.common import CliError

_warned = False


def signing_on() -> bool:
    """ROLLBACKCTL_SIGNING (on unless `off`); off is announced, loudly, once per command."""
    global _warned
    from core.settings import SIGNING_OFF_WARNING, SigningSettings

    on = SigningSettings().signing
    if not on and not _warned:
        _warned = True
        print(f"rollbackctl: {SIGNING_OFF_WARNING}", file=sys.stderr, flush=True)
    return on


def approval_timeout(at_most: timedelta | None = None) -> timedelta:
    """How long a two-person change waits for its second approval: ROLLBACKCTL_APPROVAL_TIMEOUT_S when set,
    else the manual's (manual/approvals.APPROVAL_TIMEOUT); capped at `at_most`."""
    from core.settings import SigningSettings
    from manual import approvals

    s = SigningSettings().approval_timeout_s
    t = timedelta(seconds=s) if s is not None else approvals.APPROVAL_TIMEOUT
    return min(t, at_most) if at_most is not None else t


def sign(actor: str, **fields: Any) -> identity.Proof:
    """Sign a request as `actor` with their private key (core/keys.py)."""
    from core import keys

    nonce = fields.pop("nonce", None) or identity.new_nonce()
    return identity.sign(keys.load(actor), identity.SignedRequest(actor=actor, nonce=nonce, **fields))


async def signed_decision(client, wid: str, kind: str, d):
    """`d` signed for workflow `wid`, decision `kind` and the step the workflow waits at now."""
    from core import keys
    from contracts.progress import Progress

    if not signing_on():
        return d
    p = await client.get_workflow_handle(wid).query("progress", result_type=Progress)
    return d.signed(keys.load(d.actor), kind, wid, p.decision_step())


def start_proof(inp, action: str, wid: str) -> identity.Proof | None:
    """The requester's signed start of workflow `wid` (None when signing is off)."""
    from core import keys

    if not signing_on():
        return None
    return identity.sign_start(keys.load(inp.requested_by), inp, action, wid)


# -- direct changes through the worker (ChangeRequestWorkflow) ----------------------------------------
PENDING_EXIT = 6
UNCONFIRMED_EXIT = 9  # submitted, outcome not confirmed: it may still be applied until the pickup deadline
QUERY_TIMEOUT_S = 3.0  # one progress query; a worker that does not answer is asked again until the deadline


class Unconfirmed(CliError):
    """The request reached Temporal (or may have) and its outcome is not known yet."""

    def __init__(self, wid: str, why: str, until) -> None:
        super().__init__(f"submitted as {wid}; not confirmed yet: {why}. It is applied only if a worker picks it up "
                         f"before {until:%H:%M:%S} UTC, else it expires with nothing applied: "
                         f"`rollbackctl status {wid}`", UNCONFIRMED_EXIT)
        self.workflow_id = wid


async def submit(proof: identity.Proof, wait: bool = False, wait_s: float | None = None):
    """Start ChangeRequestWorkflow for `proof`; return its result, or (None, progress) when it waits for a
    second approval and `wait` is False.

    Outcomes are never ambiguous: Temporal unreachable before the start -> exit 5, nothing submitted; once
    the start may have reached Temporal, anything short of the worker's answer within `wait_s` ->
    `Unconfirmed` (exit 9, the workflow id and the pickup deadline after which it can no longer apply)."""
    from datetime import datetime, timedelta, timezone

    from temporalio.client import WorkflowQueryFailedError
    from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
    from temporalio.exceptions import WorkflowAlreadyStartedError
    from temporalio.service import RPCError, RPCStatusCode

    from core.settings import SigningSettings, TemporalSettings
    from core.temporal_client import TemporalUnavailable, connect
    from contracts.progress import Progress, ui_summary
    from contracts.requests import ChangeRequestInput, ChangeRequestResult, change_request_workflow_id

    s = TemporalSettings()
    client = await connect(s)  # unreachable: TemporalUnavailable, exit 5, nothing submitted
    wid = change_request_workflow_id(proof.request.nonce)
    ss = SigningSettings()
    wait_s = ss.change_wait_s if wait_s is None else wait_s
    inp = ChangeRequestInput(proof=proof, approval_timeout=approval_timeout(),
                             pickup_deadline=timedelta(seconds=ss.change_pickup_s))
    until = datetime.now(timezone.utc) + inp.pickup_deadline
    try:
        h = await client.start_workflow(
            "ChangeRequestWorkflow", inp, id=wid, task_queue=s.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL, id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            request_eager_start=True, result_type=ChangeRequestResult,
            static_summary=ui_summary(f"{proof.request.action} {proof.request.target} by {proof.request.actor}"))
    except WorkflowAlreadyStartedError:
        raise Unconfirmed(wid, "a request with this nonce was already submitted", until) from None
    except RPCError as e:
        if e.status in (RPCStatusCode.UNAVAILABLE,) and "connect" in e.message.lower():
            raise TemporalUnavailable(f"Temporal at {s.temporal_address} is unreachable ({e.message}): "
                                      "nothing submitted") from None
        raise Unconfirmed(wid, f"the start's answer was lost ({e.message})", until) from None
    result = asyncio.ensure_future(h.result())
    loop = asyncio.get_running_loop()
    # --wait (a two-person change): as long as the approval may take, and the pickup before it
    deadline = loop.time() + wait_s + ((inp.approval_timeout + inp.pickup_deadline).total_seconds() if wait else 0)
    last_error = "the worker has not answered"
    try:
        while True:
            done, _ = await asyncio.wait({result}, timeout=0.05)
            if done:
                try:
                    return result.result(), None
                except RPCError as e:  # the result call itself failed (connection): ask again
                    last_error = f"Temporal did not answer ({e.message})"
                    result = asyncio.ensure_future(h.result())
            if not wait:
                try:
                    p = await within(QUERY_TIMEOUT_S, h.query("progress", result_type=Progress))
                    if p.awaiting is not None:
                        return None, p
                except (asyncio.TimeoutError, RPCError, WorkflowQueryFailedError) as e:
                    last_error = f"the worker has not answered ({type(e).__name__}: {str(e)[:120] or 'no answer'})"
            if loop.time() > deadline:
                raise Unconfirmed(wid, f"{last_error} within {wait_s:.0f}s; is the worker running?", until)
    finally:
        if not result.done():
            result.cancel()


def report(res, pending, what: str, as_json: bool, extra: dict | None = None) -> int:
    """Print a change request's outcome; the exit code. `extra`: more keys for the JSON of an applied one."""
    from rollbackctl.cli.common import print_json
    from core.settings import TemporalSettings

    if pending is not None:
        aw = pending.awaiting
        if as_json:
            print_json({"workflow_id": pending.workflow_id, "status": "pending", "awaiting": aw.model_dump(mode="json")})
        else:
            print(f"PENDING {what}: {aw.prompt}\n"
                  f"approve: rollbackctl confirm {pending.workflow_id} --as OTHER   (until {aw.deadline:%H:%M:%S} UTC)\n"
                  f"Web UI   {TemporalSettings().workflow_url(pending.workflow_id)}")
        return PENDING_EXIT
    if res.status == "refused":
        from rollbackctl.cli.common import exit_code_of_kind

        raise CliError(f"{what} refused by the worker: {res.detail}", exit_code_of_kind(res.refusal_type, 3))
    if res.status in ("expired", "withdrawn"):
        raise CliError(f"{what}: {res.detail}", 4)
    if as_json:
        print_json({**res.model_dump(mode="json"), **(extra or {})})
    return 0


async def emergency_submit(proof: identity.Proof):
    """Send a signed pre-approved move to the worker's emergency lane (Temporal is down); returns its
    EmergencyOutcome. Each configured lane is tried in order until one answers (a refusal is final)."""
    import httpx

    from contracts.emergency import EMERGENCY_PATH, EmergencyOutcome, EmergencyRequest
    from core.settings import EmergencySettings

    s = EmergencySettings()
    body = EmergencyRequest(proof=proof).model_dump_json()
    tried = []
    async with httpx.AsyncClient(timeout=s.emergency_timeout_s) as http:
        for url in s.url_list():
            try:
                resp = await http.post(url + EMERGENCY_PATH, content=body, headers={"Content-Type": "application/json"})
            except httpx.HTTPError as e:
                tried.append(f"{url}: {type(e).__name__}")
                continue
            if resp.status_code == 200:
                return EmergencyOutcome.model_validate_json(resp.content)
            try:
                err = resp.json()
            except ValueError:
                err = {"error": resp.text[:200], "kind": str(resp.status_code)}
            if resp.status_code >= 500:
                tried.append(f"{url}: {resp.status_code} {err.get('error', '')}")
                continue
            code = {400: 2, 403: 3, 409: 4}.get(resp.status_code, 1)
            raise CliError(f"emergency lane refused ({err.get('kind')}): {err.get('error')}: nothing applied", code)
    raise CliError("Temporal is unreachable and so is every emergency lane (" + "; ".join(tried or ["none configured"])
                   + "): nothing applied. Is a worker running? (ROLLBACKCTL_EMERGENCY_URLS)", 5)


def report_emergency(out, what: str, actor: str, key_id: str, as_json: bool) -> int:
    from core.settings import TemporalSettings
    from manual.emergency import render_change
    from rollbackctl.cli.common import print_json

    if as_json:
        print_json({"status": "applied", "lane": "emergency", **out.model_dump(mode="json")})
        return 0
    print(f"Temporal at {TemporalSettings().temporal_address} is unreachable: {what} is a pre-approved emergency "
          "move, applied through the worker's emergency lane.")
    for c in out.changes:
        print("  {}: {} -> {}".format(c.switch, *render_change(c)))
    print(f"  audit {out.audit_id}, etcd revision {out.revision}; signed by {actor}, key {key_id}"
          + (" (already applied)" if out.replayed else ""))
    for a in out.core_actions:
        print(f"  trading core {a}")
    print(f"When Temporal is back the worker opens {out.change_id}, which pages this move until an on-call "
          f"acknowledges it (`rollbackctl confirm {out.change_id} --as OP`).")
    return 0
