"""The console in a real browser: Playwright driving Debian's Chromium, with Chromium's own WebAuthn
implementation and the DevTools virtual authenticator (CTAP2, platform, resident keys, user verification)
standing in for a phone or a laptop's passkey store. Nothing here knows how a passkey is made: the
browser makes it (navigator.credentials.create / get) and the `webauthn` library checks it.

Sources for what is asserted:
- W3C WebAuthn Level 3 §13.4.1 (a relying party id is a registrable domain: `localhost`, never an IP
  address) and §6.1.1 (signature counter: a counter that does not grow is a cloned authenticator);
- Chrome DevTools Protocol, WebAuthn domain (addVirtualAuthenticator, getCredentials);
- OWASP CSRF Prevention Cheat Sheet (synchronizer token; verifying Origin; SameSite=Strict cookies).

With CONSOLE_SCREENSHOTS=DIR each page is also saved as DIR/<page>.png (docs/console/ holds them).
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path

from activities.switch_store import record_hash
from contracts.progress import Decision
from manual.rollback import Durations, Scope, Severity
from tests.support.console_helpers import WAIT_MS, approve, device, register, served, shot, sign_in
from tests.support.fixtures_sim import apply, apply_and_wait
from tests.support.incident_helpers import open_incident
from tests.support.waits import wait_for_value
from tests.support.wf_helpers import awaiting, incident, poll_progress, real_worker
from workflows.canary import CanaryWorkflow
from workflows.canary_models import CanaryInput
from workflows.models import RollbackInput
from workflows.rollback import RollbackWorkflow, rollback_workflow_id

async def test_register_approve_sign_in_and_every_refusal(store, browser):
    async with served(store) as console:
        rita = await device(browser, console.origin)
        # refused: no session
        await rita.goto("/matrix")
        assert rita.url == f"{console.origin}/login?next=%2Fmatrix"
        await shot(rita, "login")
        code = await register(rita, "rita")
        await shot(rita, "register")
        assert [p["code"] for p in await store.pending_passkeys()] == [code]
        # the public key stored is the one the authenticator holds (read from the authenticator itself)
        cdp, aid = rita.authenticator
        (cred,) = (await cdp.send("WebAuthn.getCredentials", {"authenticatorId": aid}))["credentials"]
        assert cred["isResidentCredential"] and (await store.pending_passkeys())[0]["credential_id"] == \
            cred["credentialId"].replace("+", "-").replace("/", "_").rstrip("=")
        # refused: a passkey nobody approved
        msg = await sign_in(rita)
        assert f"awaits a super admin's approval: `rollbackctl passkey approve rita {code}`" in msg
        assert console.sessions.sessions == {}
        await approve(store, "rita", code, by="alice")
        assert await sign_in(rita) == "signed in as rita risk_manager"
        assert rita.url == f"{console.origin}/matrix"
        cookies = {c["name"]: c for c in await rita.context.cookies()}
        assert cookies["rbc_session"]["httpOnly"] and cookies["rbc_session"]["sameSite"] == "Strict"
        # live: a change made elsewhere shows up without a reload
        await rita.evaluate("window.__same_page = true")
        await apply(store, "alice", routing_mode="BETTING_MODE")
        await rita.wait_for_function(
            "document.querySelector('tr[data-switch=routing_mode] td.value').textContent.includes('BETTING_MODE')",
            timeout=WAIT_MS)
        assert await rita.evaluate("window.__same_page === true")
        assert "off default" in await rita.text_content("tr[data-switch=routing_mode]")
        await shot(rita, "matrix")
        await rita.goto("/audit?switch=routing_mode")
        assert "chain verified" in await rita.text_content("#verify")
        await shot(rita, "audit")
        # refused: the wrong role
        resp = await rita.goto("/admin/passkeys")
        assert resp.status == 403 and "rita is risk_manager; this needs super_admin" in await rita.text_content("#error")

        # a super admin on another device: signs in, sees a pending registration, a forged CSRF token is refused
        alice = await device(browser, console.origin)
        await approve(store, "alice", await register(alice, "alice"), by="sam")
        assert await sign_in(alice) == "signed in as alice super_admin"
        oscar = await device(browser, console.origin, enforce_csp=True)  # the console's own script runs under its CSP
        oscar_code = await register(oscar, "oscar")
        await alice.goto("/admin/passkeys")
        assert oscar_code in await alice.text_content("#pending")
        await shot(alice, "passkeys")
        (pend,) = await store.pending_passkeys()
        status = await alice.evaluate(
            "async (id) => (await fetch('/admin/passkeys/' + id + '/decline', {method: 'POST', headers: "
            "{'X-CSRF-Token': 'forged-token'}})).status", pend["credential_id"])
        assert status == 403 and len(await store.pending_passkeys()) == 1
        await alice.click(f"tr[data-code='{oscar_code}'] button")
        await alice.wait_for_selector("#no-pending", timeout=WAIT_MS)
        assert await store.pending_passkeys() == []
        # the declined passkey signs in nowhere
        assert (await sign_in(oscar)).startswith("Refused: unknown passkey")

        # refused: a removed passkey (its open session ends at the next request)
        op = await store.operator("rita")
        await store.remove_passkey("rita", op.passkeys[0].credential_id, actor="alice", reason="device lost")
        await rita.goto("/matrix")
        assert "/login" in rita.url
        assert (await sign_in(rita)).startswith("Refused: unknown passkey")

        resp = await alice.goto("/maintenance")
        assert resp.status == 200 and "Trading is paused" in await alice.text_content("#maintenance")
        await shot(alice, "maintenance")
        resp = await alice.goto("/no-such-page")
        assert resp.status == 404


QUICK = Durations(observe=timedelta(seconds=1), check_interval=timedelta(milliseconds=250),
                  restore_observe=timedelta(seconds=1), confirm_sla=timedelta(minutes=10))


async def test_watch_a_rollback_and_a_p0_live_then_export_the_timeline(
        dev_env, store, sim, core_settings, paging_settings, http, task_queue, browser, tmp_path):
    await apply_and_wait(sim, store, global_betting_enabled=True, routing_mode="NORMAL_MODE")
    async with served(store, dev_env.client) as console, \
            real_worker(dev_env, store, core_settings, paging_settings, http, task_queue):
        rita = await device(browser, console.origin)
        await approve(store, "rita", await register(rita, "rita"), by="alice")
        assert await sign_in(rita) == "signed in as rita risk_manager"

        inc = incident()
        wid = rollback_workflow_id(inc)
        h = await dev_env.client.start_workflow(
            RollbackWorkflow.run,
            RollbackInput(incident_id=inc, summary="error rate 3%", severity=Severity.CRITICAL, scope=Scope.CROSS,
                          requested_by="oscar", reason="internalization failing", durations=QUICK),
            id=wid, task_queue=task_queue)
        await rita.goto(f"/workflows/{wid}")
        await rita.evaluate("window.__same_page = true")
        # the rollback moves on while the page is open: the wait for a confirmation appears, live
        await rita.wait_for_selector("#awaiting", timeout=WAIT_MS)
        assert "Waiting for confirm" in await rita.text_content("#awaiting h2")
        countdown = rita.locator("#awaiting .countdown")
        first = await countdown.text_content()
        await rita.wait_for_function(
            "(t) => document.querySelector('#awaiting .countdown').textContent !== t", arg=first, timeout=WAIT_MS)
        assert (await countdown.text_content()).endswith("left")
        await shot(rita, "workflow")
        await poll_progress(h, awaiting("confirm"))
        await h.execute_update(RollbackWorkflow.confirm, Decision(actor="oscar", reason="error rate back to normal"))
        await rita.wait_for_function(
            "document.querySelector('#awaiting h2') && document.querySelector('#awaiting h2').textContent.includes('fix')",
            timeout=WAIT_MS)
        assert await rita.evaluate("window.__same_page === true")
        await rita.goto("/workflows")
        assert wid in await rita.text_content("#workflows")
        await shot(rita, "workflows")

        # a P0 incident: its acknowledgement countdown runs on the page
        ih = await open_incident(dev_env, task_queue, "liquidation_failure")
        await rita.goto("/incidents")
        card = rita.locator(f".incident[data-wid='{ih.id}'] .sla .countdown").first
        await card.wait_for(timeout=WAIT_MS)
        before = await card.text_content()
        await rita.wait_for_function(
            "([w, t]) => { const e = document.querySelector(`.incident[data-wid='${w}'] .sla .countdown`);"
            " return e && e.textContent !== t && e.textContent.endsWith('to acknowledge'); }",
            arg=[ih.id, before], timeout=WAIT_MS)
        await shot(rita, "incidents")
        # a canary (Phase 2 at 86,400x: a day a second): its stages and health checks against their limits
        cw = f"canary-phase2-{uuid.uuid4().hex[:8]}"
        ch = await dev_env.client.start_workflow(
            CanaryWorkflow.run, CanaryInput(phase="phase2", requested_by="alice", time_scale=86400),
            id=cw, task_queue=task_queue)
        await wait_for_value(lambda: ch.query(CanaryWorkflow.status), lambda st: len(st.recent_checks) >= 3,
                             WAIT_MS / 1000, "three canary health checks")
        await rita.goto("/canary")
        chart = rita.locator(f".canary[data-wid='{cw}'] svg.chart[data-metric='error_rate']")
        await chart.wait_for(timeout=WAIT_MS)
        assert await chart.locator("circle").count() >= 3
        assert "the 1% line" in await rita.locator(f".canary[data-wid='{cw}'] figcaption").first.text_content()
        assert await rita.locator(f".canary[data-wid='{cw}'] ol.stages li").count() >= 1
        await shot(rita, "canary")
        await ch.terminate("test over")

        # the timeline: exported, and every audit record in it re-derives to its hash and sits in the chain
        await rita.goto(f"/timeline/{wid}")
        kinds = await rita.locator("#timeline tr td:nth-child(2) .tag").all_text_contents()
        assert {"started", "decision", "change"} <= set(kinds), kinds
        await shot(rita, "timeline")
        async with rita.expect_download() as dl:
            await rita.click("#export-json")
        path = tmp_path / "timeline.json"
        await (await dl.value).save_as(path)
        t = json.loads(path.read_text())
        assert t["format"] == "rollbackctl/timeline/v1" and t["workflow_id"] == wid and t["audit_ok"] is True
        recs = t["audit_records"]
        assert recs and all(r["source"] == wid for r in recs)
        chain = {a.id: a for a in await store.audit()}
        for r in recs:
            assert record_hash(r) == r["hash"] == chain[r["id"]].hash
        confirm = [e for e in t["events"] if e["kind"] == "decision" and e["what"].startswith("confirm accepted")]
        assert confirm and confirm[0]["by"] == "oscar"
        changes = [e for e in t["events"] if e["kind"] == "change"]
        assert [e["audit_hash"] for e in changes] == [r["hash"] for r in recs]
        async with rita.expect_download() as dl:
            await rita.click("#export-md")
        md = Path(await (await dl.value).path()).read_text()
        assert md.startswith(f"# Postmortem draft: Rollback {wid}") and recs[0]["hash"] in md
        await ih.terminate("test over")
        await h.terminate("test over")
