"""Decisions signed with a passkey in the console (Chromium through Playwright, a DevTools virtual
authenticator per operator: each browser context is one operator's phone). The worker runs as in
production: signing on, so each decision's passkey assertion is checked by the workflow's validator
and again by the worker before a change set is written, and `audit verify` checks it from the trail.

What a refusal must leave: nothing changed (the etcd prefix byte for byte, the workflow where it was).
"""

from __future__ import annotations

import json
from datetime import timedelta

from activities.audit_verify import verify_store
from contracts.incidents import IncidentState
from contracts.progress import Decision, Progress
from manual.rollback import Durations, Scope, Severity
from tests.support.console_helpers import WAIT_MS, approve, device, register, served, shot, sign_in
from tests.support.identity_helpers import Signers, Unchanged, signing_worker
from tests.support.standins import StandIns
from tests.support.waits import wait_for_value
from tests.support.wf_helpers import audit_of, incident, poll_progress, set_switches, values
from workflows.degradation import DegradationWorkflow, degrade_workflow_id
from workflows.models import DegradeInput, RollbackInput
from workflows.rollback import RollbackWorkflow, rollback_workflow_id

D = Durations(observe=timedelta(seconds=1), check_interval=timedelta(milliseconds=250),
              restore_observe=timedelta(seconds=1), confirm_sla=timedelta(minutes=10))


# The console's record of each passkey's signature counter moves whenever a passkey signs (refused or not:
# a clone is detected by it); nothing else may change.
COUNTERS = ("console/counters/",)


def waits_at(step: str):
    return lambda p: p.awaiting is not None and p.awaiting.step == step


async def signed_in_device(browser, console, store, name: str, approver: str):
    page = await device(browser, console.origin)
    await approve(store, name, await register(page, name), by=approver)
    assert (await sign_in(page)).startswith(f"signed in as {name}")
    return page


async def decide(page, wid: str, step: str, kind: str, reason: str = "", capture: list | None = None) -> str:
    """Open the decision's page (as the link in a page does), fill the form, sign with the passkey: the
    message the page shows."""
    if capture is not None:
        page.on("request", lambda r: capture.append(json.loads(r.post_data))
                if r.url.endswith("/submit") and r.method == "POST" else None)
    await page.goto(f"/decide/{wid}/{step}")
    form = page.locator(f"form.decide[data-kind='{kind}']")
    if reason:
        await form.locator("input[name=reason]").fill(reason)
    await form.locator("button").click()
    msg = form.locator(".msg.ok, .msg.bad")
    await msg.wait_for(timeout=WAIT_MS)
    return (await msg.text_content()).strip()


async def post(page, url: str, body: dict) -> tuple[int, dict]:
    """A POST from the page itself, with the session's CSRF token (what a script on the page could send)."""
    r = await page.evaluate(
        """async ([url, body]) => { const r = await fetch(url, {method: 'POST', headers: {'Content-Type':
        'application/json', 'X-CSRF-Token': document.querySelector('meta[name=csrf-token]').content},
        body: JSON.stringify(body)}); return [r.status, await r.json()]; }""", [url, body])
    return r[0], r[1]


async def test_a_rollback_confirmed_from_the_console_and_every_refusal(
        dev_env, store, etcd, prefix, browser, task_queue):
    signers = Signers()
    await signers.register(store)
    await set_switches(store, "alice", global_betting_enabled=True, routing_mode="NORMAL_MODE")
    async with served(store, dev_env.client) as console:
        rita = await signed_in_device(browser, console, store, "rita", "alice")
        vic = await signed_in_device(browser, console, store, "vic", "alice")
        async with signing_worker(dev_env, store, StandIns(), task_queue):
            inc = incident()
            wid = rollback_workflow_id(inc)
            inp = RollbackInput(incident_id=inc, summary="error rate 3%", severity=Severity.CRITICAL,
                                scope=Scope.CROSS, requested_by="oscar", reason="internalization failing", durations=D)
            h = await dev_env.client.start_workflow(RollbackWorkflow.run, signers.start(inp, "rollback.start", wid),
                                                    id=wid, task_queue=task_queue)
            p = await poll_progress(h, waits_at("confirm"))
            need = p.awaiting.min_role

            # refused: a viewer (the page offers no button; a POST anyway is refused, nothing changes)
            async with Unchanged(etcd, prefix, except_=COUNTERS):
                await vic.goto(f"/decide/{wid}/confirm")
                assert await vic.locator("form.decide[data-kind='confirm'] button").count() == 0
                status, body = await post(vic, f"/decide/{wid}/confirm/prepare", {"kind": "confirm"})
                assert status == 403 and f"vic is viewer; confirm at confirm needs {need}" in body["error"]

            captured: list = []
            msg = await decide(rita, wid, "confirm", "confirm", "error rate back under 1%", capture=captured)
            assert msg.startswith("confirm by rita at confirm:"), msg
            await shot(rita, "decide")
            p = await poll_progress(h, waits_at("fix"))
            (rec,) = [d for d in p.decisions if d.kind == "confirm" and d.accepted]
            assert rec.actor == "rita" and rec.key_id.startswith("passkey:")

            async with Unchanged(etcd, prefix, except_=COUNTERS):
                # refused: a used link (the step is passed)
                await rita.goto(f"/decide/{wid}/confirm")
                assert "the workflow has moved on (now at fix)" in await rita.text_content("#passed")
                status, body = await post(rita, f"/decide/{wid}/confirm/prepare", {"kind": "confirm"})
                assert status == 409 and "moved on" in body["error"]
                # refused: the same assertion replayed to the console (its nonce was used) ...
                status, body = await post(rita, f"/decide/{wid}/confirm/submit", captured[0])
                assert status == 409 and "no decision is prepared under this nonce" in body["error"]
                # ... and straight to the workflow, which waits at another step now
                sub = captured[0]
                resp = sub["credential"]["response"]
                replay = Decision(actor="rita", reason="error rate back under 1%", action="confirm", workflow_id=wid,
                                  step="confirm", nonce=sub["nonce"], key_id=rec.key_id, signature=resp["signature"],
                                  authenticator_data=resp["authenticatorData"], client_data=resp["clientDataJSON"])
                for kind in ("confirm", "fix"):
                    try:
                        await h.execute_update(kind, replay, result_type=dict)
                        raise AssertionError(f"a replayed assertion was accepted as {kind}")
                    except Exception as e:  # the validator's refusal
                        assert "refused" in str(getattr(e, "cause", e)), e
                p2 = await poll_progress(h, waits_at("fix"))
                assert [d.kind for d in p2.decisions if d.accepted] == [d.kind for d in p.decisions if d.accepted]

                # refused: a removed passkey (its session ends; nothing is prepared or sent)
                op = await store.operator("rita")
            await store.remove_passkey("rita", op.passkeys[0].credential_id, actor="alice", reason="phone lost")
            async with Unchanged(etcd, prefix, except_=COUNTERS):
                status, body = await post(rita, f"/decide/{wid}/fix/prepare", {"kind": "fix", "reference": "pr-1"})
                assert status == 401 and "sign in again" in body["error"]
            await h.terminate("test over")


async def test_level_3_needs_a_second_super_admin_on_their_own_device(
        dev_env, store, etcd, prefix, browser, task_queue):
    signers = Signers()
    await signers.register(store)
    async with served(store, dev_env.client) as console:
        alice = await signed_in_device(browser, console, store, "alice", "sam")
        sam = await signed_in_device(browser, console, store, "sam", "alice")
        rita = await signed_in_device(browser, console, store, "rita", "alice")
        async with signing_worker(dev_env, store, StandIns(), task_queue):
            inc = incident()
            wid = degrade_workflow_id(3, inc)
            inp = DegradeInput(level=3, incident_id=inc, requested_by="alice", reason="matching engine down",
                               durations=D)
            h = await dev_env.client.start_workflow(DegradationWorkflow.run, signers.start(inp, "degrade.start", wid),
                                                    id=wid, task_queue=task_queue)
            await poll_progress(h, waits_at("second_approval"))
            await sam.goto(f"/decide/{wid}/second_approval")
            assert "Approved by alice" in await sam.text_content("#approvals")
            await shot(sam, "decide-two-person")
            async with Unchanged(etcd, prefix, except_=COUNTERS):
                # refused: the same person twice, and a role below the step's
                msg = await decide(alice, wid, "second_approval", "confirm", "again")
                assert "alice already approved" in msg, msg
                await rita.goto(f"/decide/{wid}/second_approval")
                assert await rita.locator("form.decide[data-kind='confirm'] button").count() == 0
                # refused: an assertion made for another step (prepared here, sent where the workflow is not)
                status, body = await post(sam, f"/decide/{wid}/confirm/prepare", {"kind": "confirm"})
                assert status == 409 and "this link was for step confirm" in body["error"]
            assert (await values(store, "global_api_enabled"))["global_api_enabled"] is True

            captured: list = []
            msg = await decide(sam, wid, "second_approval", "confirm", "agreed: API down", capture=captured)
            assert msg.startswith("confirm by sam at second_approval"), msg
            await poll_progress(h, waits_at("confirm"))
            assert (await values(store, "global_api_enabled"))["global_api_enabled"] is False
            # the change set carries both approvals; sam's is a passkey assertion that verifies offline
            (rec,) = [r for r in await audit_of(store, wid) if any(c.switch == "global_api_enabled" for c in r.changes)]
            sigs = rec.model_extra["signatures"]
            assert [s["request"]["actor"] for s in sigs] == ["alice", "sam"]
            assert sigs[0]["key_id"].startswith("ed25519:") and sigs[1]["key_id"].startswith("passkey:")
            assert sigs[1]["client_data"] and sigs[1]["authenticator_data"]
            assert (await verify_store(store)).ok
            # the assertion for second_approval, sent again at the next step: refused (other step), nothing changes
            sub, resp = captured[0], captured[0]["credential"]["response"]
            replay = Decision(actor="sam", reason="agreed: API down", action="confirm", workflow_id=wid,
                              step="second_approval", nonce=sub["nonce"], key_id=sigs[1]["key_id"],
                              signature=resp["signature"], authenticator_data=resp["authenticatorData"],
                              client_data=resp["clientDataJSON"])
            async with Unchanged(etcd, prefix, except_=COUNTERS):
                try:
                    await h.execute_update("confirm", replay, result_type=dict)
                    raise AssertionError("an assertion for second_approval was accepted at confirm")
                except Exception as e:
                    assert "other step" in str(getattr(e, "cause", e)), e
            await h.terminate("test over")


async def test_a_p0_acknowledged_and_ticked_from_a_phone(dev_env, store, etcd, prefix, browser, task_queue):
    """The P0 page's link leads to the acknowledgement (the Update `acknowledge`, signed as "confirm", as the
    CLI signs it); a further step is ticked off at the step the incident is at."""
    from tests.support.incident_helpers import open_incident

    signers = Signers()
    await signers.register(store)
    async with served(store, dev_env.client) as console:
        oscar = await signed_in_device(browser, console, store, "oscar", "alice")
        si = StandIns()
        async with signing_worker(dev_env, store, si, task_queue):
            h = await open_incident(dev_env, task_queue, "liquidation_failure")
            await poll_progress(h, waits_at("acknowledge"))
            msg = await decide(oscar, h.id, "acknowledge", "confirm", "on it")
            assert msg.startswith("confirm by oscar at acknowledge"), msg
            st = await wait_for_value(lambda: h.query("state", result_type=IncidentState),
                                      lambda s: s.sla.acked_by == "oscar", 10, "the acknowledgement")
            assert st.status == "acknowledged"
            p = await h.query("progress", result_type=Progress)
            step = p.decision_step()
            await oscar.goto(f"/decide/{h.id}/{step}")
            form = oscar.locator("form.decide[data-kind='tick']")
            item = st.checklist[0]
            await form.locator("select[name=item]").select_option(item.id)
            await form.locator("input[name=note]").fill("paged the risk desk")
            await form.locator("button").click()
            await form.locator(".msg.ok, .msg.bad").wait_for(timeout=WAIT_MS)
            assert (await form.locator(".msg").text_content()).startswith("tick by oscar"), \
                await form.locator(".msg").text_content()
            st = await h.query("state", result_type=IncidentState)
            done = next(i for i in st.checklist if i.id == item.id)
            assert done.done and done.by == "oscar" and done.note == "paged the risk desk"
            await h.terminate("test over")


async def test_a_canary_paused_and_resumed_from_the_console(dev_env, store, browser, task_queue):
    """A canary's controls are decisions at whatever stage it is in (bound to that step)."""
    from workflows.canary import CanaryWorkflow
    from workflows.canary_models import CanaryInput, CanaryStatus

    signers = Signers()
    await signers.register(store)
    async with served(store, dev_env.client) as console:
        rita = await signed_in_device(browser, console, store, "rita", "alice")
        async with signing_worker(dev_env, store, StandIns(), task_queue):
            wid = f"canary-phase2-{incident()}"
            inp = CanaryInput(phase="phase2", requested_by="rita", time_scale=100)
            h = await dev_env.client.start_workflow(CanaryWorkflow.run, signers.start(inp, "canary.start", wid), id=wid,
                                                    task_queue=task_queue)
            await wait_for_value(lambda: h.query("progress", result_type=Progress),
                                 lambda p: (p.decision_step() or "").endswith("_observe"), 15,
                                 "the canary observing its first stage (minutes long at 100x)")
            for kind, want in (("pause", True), ("resume", False)):
                p = await h.query("progress", result_type=Progress)
                await rita.goto(f"/decide/{wid}/{p.decision_step()}")
                form = rita.locator(f"form.decide[data-kind='{kind}']")
                assert await form.count() == 1, await rita.text_content("main")
                await form.locator("input[name=reason]").fill(f"{kind} from my phone")
                await form.locator("button").click()
                await form.locator(".msg.ok, .msg.bad").wait_for(timeout=WAIT_MS)
                assert (await form.locator(".msg").text_content()).startswith(f"{kind} by rita"), \
                    await form.locator(".msg").text_content()
                st: CanaryStatus = await h.query(CanaryWorkflow.status)
                assert st.paused is want and (st.paused_by == "rita") is want
            await h.terminate("test over")
