"""Paging and chat activities against the simulator's PagerDuty and Slack sinks (loopback)."""

from __future__ import annotations

import logging

import pytest
from pydantic import SecretStr
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import paging as pg
from activities.paging import ChatInput, PageInput, PagingActivities, PagingNotConfigured
from manual import escalation
from core.settings import PagingSettings
from tests.support.fixtures_sim import LEVEL_HOOKS, LEVEL_KEYS


@pytest.fixture
async def paging(paging_settings):
    acts = PagingActivities.from_settings(paging_settings)
    yield acts
    await acts.aclose()


def trigger(level: int = 1, dedup: str = "wf-1:L1", custom_details: dict | None = None, **kw) -> PageInput:
    return PageInput(event_action="trigger", dedup_key=dedup, summary="HL disconnected for 75 s: new orders paused",
                     escalation_level=level, custom_details=custom_details or {"workflow_id": "wf-1"}, **kw)


# -- configuration ---------------------------------------------------------------------------------
K = "0123456789abcdef0123456789abcdef"  # 32 characters, as a PagerDuty integration key


def test_unconfigured_paging_refuses_naming_what_is_missing(monkeypatch):
    for var in ("ROLLBACKCTL_PAGERDUTY_URL", "ROLLBACKCTL_PAGERDUTY_ROUTING_KEY", "ROLLBACKCTL_PAGERDUTY_ROUTING_KEYS",
                "ROLLBACKCTL_SLACK_WEBHOOK_URL", "ROLLBACKCTL_SLACK_WEBHOOK_URLS", "ROLLBACKCTL_PAGERDUTY_CHANGE_URL"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(PagingNotConfigured) as ei:
        PagingActivities.from_settings(PagingSettings())
    msg = str(ei.value)
    assert "ROLLBACKCTL_PAGERDUTY_URL" in msg and "ROLLBACKCTL_PAGERDUTY_ROUTING_KEY" in msg
    assert "ROLLBACKCTL_SLACK_WEBHOOK_URL" in msg
    monkeypatch.setenv("ROLLBACKCTL_PAGERDUTY_URL", "http://127.0.0.1:1/sim/pagerduty/v2/enqueue")
    monkeypatch.setenv("ROLLBACKCTL_PAGERDUTY_ROUTING_KEY", K)
    with pytest.raises(PagingNotConfigured) as ei:
        PagingActivities.from_settings(PagingSettings())
    assert "SLACK" in str(ei.value) and "PAGERDUTY" not in str(ei.value)
    monkeypatch.setenv("ROLLBACKCTL_SLACK_WEBHOOK_URL", "http://127.0.0.1:1/sim/slack/x")
    assert PagingActivities.from_settings(PagingSettings())  # one key and one hook for every level
    # a per-level list must cover the ladder
    monkeypatch.setenv("ROLLBACKCTL_PAGERDUTY_ROUTING_KEYS", f"{K},{K}")
    with pytest.raises(PagingNotConfigured, match="ROLLBACKCTL_PAGERDUTY_ROUTING_KEYS lists 2"):
        PagingActivities.from_settings(PagingSettings())


@pytest.mark.parametrize("env,fragment", [
    # PagerDuty answers 400 to any routing_key but the 32-character integration key
    ({"ROLLBACKCTL_PAGERDUTY_ROUTING_KEYS": f"dev-level-1,{K},{K}"},
     "ROLLBACKCTL_PAGERDUTY_ROUTING_KEYS: entry 1 is 11 characters"),
    ({"ROLLBACKCTL_PAGERDUTY_ROUTING_KEYS": f"{K},{K},{K[:-1]}"}, "entry 3 is 31 characters"),
    ({"ROLLBACKCTL_PAGERDUTY_URL": "events.pagerduty.com/v2/enqueue"}, "ROLLBACKCTL_PAGERDUTY_URL is not an http(s) URL"),
    ({"ROLLBACKCTL_PAGERDUTY_URL": "http://events.pagerduty.com/v2/enqueue"}, "must be https"),
    ({"ROLLBACKCTL_SLACK_WEBHOOK_URLS": "https://hooks.slack.com/a,ftp://x/b,https://hooks.slack.com/c"},
     "ROLLBACKCTL_SLACK_WEBHOOK_URLS: entry 2 is not an http(s) URL"),
    # a drill's own PagerDuty service and Slack channel: one entry for every level, or one per level
    ({"ROLLBACKCTL_PAGERDUTY_DRILL_ROUTING_KEYS": f"{K[::-1]},{K[::-1]}"},
     "ROLLBACKCTL_PAGERDUTY_DRILL_ROUTING_KEYS lists 2 entries; give one for every level, or one per level (3"),
    ({"ROLLBACKCTL_PAGERDUTY_DRILL_ROUTING_KEYS": "drill-key"},
     "ROLLBACKCTL_PAGERDUTY_DRILL_ROUTING_KEYS: entry 1 is 9 characters"),
    ({"ROLLBACKCTL_PAGERDUTY_DRILL_ROUTING_KEYS": K}, "ROLLBACKCTL_PAGERDUTY_DRILL_ROUTING_KEYS repeats a real routing key"),
    ({"ROLLBACKCTL_SLACK_DRILL_WEBHOOK_URLS": "http://hooks.slack.com/drills"},
     "ROLLBACKCTL_SLACK_DRILL_WEBHOOK_URLS: entry 1 must be https"),
])
def test_malformed_paging_is_refused_in_one_line(monkeypatch, env, fragment):
    base = {"ROLLBACKCTL_PAGERDUTY_URL": "https://events.pagerduty.com/v2/enqueue",
            "ROLLBACKCTL_PAGERDUTY_ROUTING_KEYS": f"{K},{K},{K}",
            "ROLLBACKCTL_SLACK_WEBHOOK_URLS": "https://hooks.slack.com/a,https://hooks.slack.com/b,https://hooks.slack.com/c"}
    for k, v in {**base, **env}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(PagingNotConfigured) as ei:
        pg.check_paging(PagingSettings())
    assert fragment in str(ei.value) and "\n" not in str(ei.value)
    assert K not in str(ei.value)  # a secret is never in the message


def test_the_change_events_url_sits_beside_the_events_url():
    assert pg.change_url_for("https://events.pagerduty.com/v2/enqueue") == "https://events.pagerduty.com/v2/change/enqueue"


def test_escalation_levels_are_data():
    assert [lv.level for lv in escalation.LEVELS] == [1, 2, 3]
    assert len({lv.slack_channel for lv in escalation.LEVELS}) == 3
    assert all(lv.ack_within.total_seconds() == 300 for lv in escalation.LEVELS)  # "5-min confirm"
    assert escalation.get(7).level == escalation.TOP and escalation.next_level(3) == 3
    with pytest.raises(ValueError):
        escalation.get(0)


# -- PagerDuty ---------------------------------------------------------------------------------------
async def test_page_has_the_events_v2_shape(sim, paging):
    res = await ActivityEnvironment().run(paging.page, trigger())
    assert res.status == "success" and res.dedup_key == "wf-1:L1" and res.http_status == 202 and res.escalation_level == 1
    [ev] = await sim.pages()
    assert set(ev) == {"routing_key", "event_action", "dedup_key", "payload", "client"}
    assert ev["routing_key"] == LEVEL_KEYS[0] and ev["event_action"] == "trigger" and ev["dedup_key"] == "wf-1:L1"
    p = ev["payload"]
    assert p["summary"].startswith("HL disconnected") and p["source"] == "rollbackctl" and p["severity"] == "critical"
    assert p["custom_details"]["workflow_id"] == "wf-1" and p["custom_details"]["escalation_level"] == 1
    assert p["timestamp"]


async def test_escalating_pages_the_next_level_as_a_new_incident(sim, paging):
    env = ActivityEnvironment()
    await env.run(paging.page, trigger(1, "wf-1:L1"))
    await env.run(paging.page, trigger(1, "wf-1:L1"))  # re-paging the same level: PagerDuty deduplicates
    await env.run(paging.page, trigger(2, "wf-1:L2"))
    pages = await sim.pages()
    assert [p["routing_key"] for p in pages] == [LEVEL_KEYS[0], LEVEL_KEYS[0], LEVEL_KEYS[1]]
    inc = {i["dedup_key"]: i for i in await sim.incidents()}
    assert len(inc["wf-1:L1"]["log"]) == 2 and inc["wf-1:L1"]["notifications"] == 1  # deduplicated: nobody woken
    assert inc["wf-1:L2"]["routing_key"] == LEVEL_KEYS[1] and inc["wf-1:L2"]["notifications"] == 1
    # above the top level: the top level, and the request is recorded
    res = await env.run(paging.page, trigger(9, "wf-1:L9"))
    assert res.escalation_level == 3
    last = (await sim.pages())[-1]
    assert last["routing_key"] == LEVEL_KEYS[2] and last["payload"]["custom_details"]["escalation_level_requested"] == 9


async def test_acknowledge_and_resolve_carry_no_payload(sim, paging):
    env = ActivityEnvironment()
    await env.run(paging.page, trigger(2, "wf-2:L2"))
    for action in ("acknowledge", "resolve"):
        res = await env.run(paging.page, PageInput(event_action=action, dedup_key="wf-2:L2", summary="handled",
                                                   escalation_level=2))
        assert res.status == "success"
    pages = await sim.pages()
    assert [set(p) for p in pages[1:]] == [{"routing_key", "event_action", "dedup_key"}] * 2
    assert all(p["routing_key"] == LEVEL_KEYS[1] for p in pages)
    assert (await sim.incidents())[0]["status"] == "resolved"


async def test_long_summaries_are_cut_to_pagerdutys_limit(sim, paging):
    await ActivityEnvironment().run(paging.page, PageInput(event_action="trigger", dedup_key="wf-3:L1",
                                                           summary="x" * 5000, severity="warning"))
    [ev] = await sim.pages()
    assert len(ev["payload"]["summary"]) == 1024 and ev["payload"]["severity"] == "warning"


async def test_a_drill_pages_and_chats_on_its_own_service_and_acts_on_its_alert_there(sim, sim_server, paging,
                                                                                       drill_paging_settings):
    """With ROLLBACKCTL_PAGERDUTY_DRILL_ROUTING_KEYS / ROLLBACKCTL_SLACK_DRILL_WEBHOOK_URLS set, a drill's pages
    go to the game-day service's key for their level and its chat to the game-day channel; real ones do not move.
    PagerDuty keys an alert by routing key and dedup key: an acknowledge or resolve "sent via a different
    routing_key ... will be dropped" (Events API v2, https://developer.pagerduty.com/docs/events-api-v2/overview/;
    the strict sink does the same), so a drill's acknowledge must go where its trigger went. Unset, a drill pages
    the real keys (its summary says [DRILL])."""
    from tests.support.fixtures_sim import DRILL_HOOK, DRILL_KEYS

    env = ActivityEnvironment()
    drills = PagingActivities.from_settings(drill_paging_settings)
    try:
        await env.run(drills.page, trigger(2, "drill-1:L2", drill=True))
        await env.run(drills.page, PageInput(event_action="acknowledge", dedup_key="drill-1:L2", summary="acked",
                                             escalation_level=2, drill=True))
        await env.run(drills.page, trigger(2, "real-1:L2"))
        await env.run(drills.chat, ChatInput(text="[DRILL] rollback started", escalation_level=2, drill=True))
        await env.run(drills.chat, ChatInput(text="rollback started", escalation_level=2))
    finally:
        await drills.aclose()
    pages = await sim.pages()
    assert [(p["dedup_key"], p["routing_key"]) for p in pages] == [
        ("drill-1:L2", DRILL_KEYS[1]), ("drill-1:L2", DRILL_KEYS[1]), ("real-1:L2", LEVEL_KEYS[1])]
    inc = {i["dedup_key"]: i for i in await sim.incidents()}
    assert inc["drill-1:L2"]["status"] == "acknowledged" and inc["real-1:L2"]["status"] == "triggered"
    assert (await sim.pagerduty())["dropped"] == []
    assert [m["text"] for m in await sim.chats(DRILL_HOOK)] == ["[DRILL] rollback started"]
    assert [m["text"] for m in await sim.chats(LEVEL_HOOKS[1])] == ["rollback started"]
    # not configured: the real keys, and the drill's acknowledge still finds its alert
    await sim.clear_sinks()
    await env.run(paging.page, trigger(1, "drill-2:L1", drill=True))
    await env.run(paging.page, PageInput(event_action="acknowledge", dedup_key="drill-2:L1", summary="acked",
                                         drill=True))
    assert [p["routing_key"] for p in await sim.pages()] == [LEVEL_KEYS[0]] * 2
    assert (await sim.incidents())[0]["status"] == "acknowledged"


# -- Slack ------------------------------------------------------------------------------------------------
async def test_chat_goes_to_the_levels_webhook(sim, paging):
    env = ActivityEnvironment()
    res = await env.run(paging.chat, ChatInput(text="Rollback started: routing_mode -> HL_MODE",
                                               fields={"workflow": "wf-1", "incident": "INC-7"}))
    assert res.ok and res.channel == escalation.get(1).slack_channel
    await env.run(paging.chat, ChatInput(text="escalated", escalation_level=3))
    [msg] = await sim.chats(LEVEL_HOOKS[0])
    assert msg["text"] == "Rollback started: routing_mode -&gt; HL_MODE"  # Slack's control characters escaped
    assert [b["type"] for b in msg["blocks"]] == ["section", "section", "context"]
    assert msg["blocks"][1]["fields"][0]["text"] == "*workflow*\nwf-1"
    assert escalation.get(1).slack_channel in msg["blocks"][2]["elements"][0]["text"]
    assert [m["text"] for m in await sim.chats(LEVEL_HOOKS[2])] == ["escalated"]
    assert await sim.chats(LEVEL_HOOKS[1]) == []
    assert all(not m["mangled"] for m in (await sim.slack())["messages"])


async def test_slack_shows_the_manuals_thresholds_as_written(sim, paging):
    """Unescaped, "margin <150% ... > 200%" is read by Slack as a control sequence and shown mangled."""
    text = "P0 hedge margin <150% of target: top up to > 200% (P&L at risk)"
    await ActivityEnvironment().run(paging.chat, ChatInput(text=text))
    [m] = (await sim.slack())["messages"]
    assert m["mangled"] == [] and m["text"] == "P0 hedge margin &lt;150% of target: top up to &gt; 200% (P&amp;L at risk)"
    section = m["body"]["blocks"][0]["text"]["text"] if "body" in m else None
    assert section is None or "&lt;150%" in section


async def test_slack_429_is_retried_after_its_retry_after(sim, paging):
    """Slack: about one message a second per webhook; a 429 says when to come back (Retry-After)."""
    env = ActivityEnvironment()
    await env.run(paging.chat, ChatInput(text="first"))
    with pytest.raises(ApplicationError) as ei:
        await env.run(paging.chat, ChatInput(text="second, at once"))
    e = ei.value
    assert e.type == pg.PAGING_UNAVAILABLE and not e.non_retryable and e.next_retry_delay.total_seconds() == 1


async def test_pagerduty_429_is_retryable_and_the_event_was_not_ingested(sim, paging):
    await sim.paging_config(pagerduty_events_per_min=2)
    env = ActivityEnvironment()
    await env.run(paging.page, trigger(1, "wf-9/a:L1"))
    await env.run(paging.page, trigger(1, "wf-9/b:L1"))
    with pytest.raises(ApplicationError) as ei:
        await env.run(paging.page, trigger(1, "wf-9/c:L1"))
    assert ei.value.type == pg.PAGING_UNAVAILABLE and not ei.value.non_retryable and "429" in ei.value.message
    pd = await sim.pagerduty()
    assert {a["dedup_key"] for a in pd["alerts"]} == {"wf-9/a:L1", "wf-9/b:L1"}
    assert [r["status"] for r in pd["rejected"]] == [429]


async def test_a_change_event_goes_to_pagerdutys_change_endpoint(sim, paging):
    res = await ActivityEnvironment().run(paging.change_event, pg.ChangeEventInput(
        summary="rita (risk_manager): hedge_max_leverage 3.0 -> 1.5 — hedge margin thin",
        custom_details={"actor": "rita", "changes": [{"switch": "hedge_max_leverage", "old": 3.0, "new": 1.5}]}))
    assert res.http_status == 202
    [ce] = (await sim.pagerduty())["change_events"]
    assert ce["routing_key"] == LEVEL_KEYS[0] and ce["payload"]["custom_details"]["actor"] == "rita"
    assert (await sim.notifications()) == []


# -- errors ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path,fault,etype,retry", [
    ("/sim/pagerduty", {"api_status": 500}, pg.PAGING_UNAVAILABLE, True),
    ("/sim/pagerduty", {"api_status": 429}, pg.PAGING_UNAVAILABLE, True),
    ("/sim/pagerduty", {"api_status": 400}, pg.BAD_REQUEST, False),
    ("/sim/slack", {"api_status": 404}, pg.BAD_REQUEST, False),
    ("/sim/slack", {"api_status": 503}, pg.PAGING_UNAVAILABLE, True),
    ("/sim/slack", {"api_timeout": True}, pg.PAGING_TIMEOUT, True),
])
async def test_errors_are_classified(sim, paging_settings, path, fault, etype, retry):
    # a short timeout only where the timeout is the fault: 0.3 s elsewhere was once a ConnectTimeout under load
    timeout_s = 0.3 if fault.get("api_timeout") else 5.0
    acts = PagingActivities.from_settings(paging_settings.model_copy(update={"paging_timeout_s": timeout_s}))
    await sim.inject({**fault, "api_paths": [path]})
    call = acts.page(trigger()) if path == "/sim/pagerduty" else acts.chat(ChatInput(text="hi"))
    with pytest.raises(ApplicationError) as ei:
        await call
    assert ei.value.type == etype and ei.value.non_retryable is (not retry), ei.value.message
    await acts.aclose()


async def test_no_secret_reaches_logs_or_errors(sim, paging, paging_settings, caplog):
    caplog.set_level(logging.DEBUG)
    env = ActivityEnvironment()
    await env.run(paging.page, trigger())
    await env.run(paging.chat, ChatInput(text="hello"))
    msgs = [repr(paging), repr(paging_settings), str(paging_settings)]
    for path in ("/sim/pagerduty", "/sim/slack"):
        await sim.clear_faults()
        await sim.inject(api_status=500, api_paths=[path])
        with pytest.raises(ApplicationError) as ei:
            await (env.run(paging.page, trigger()) if "pager" in path else env.run(paging.chat, ChatInput(text="x")))
        msgs.append(str(ei.value))
    text = caplog.text + "\n".join(msgs)
    assert "page trigger level 1" in caplog.text
    for secret in [*LEVEL_KEYS, *LEVEL_HOOKS, "/sim/pagerduty/v2", "/sim/slack/"]:
        assert secret not in text, secret


def test_settings_hold_secrets_as_secretstr():
    s = PagingSettings(pagerduty_url=SecretStr("http://x/y"), pagerduty_routing_keys=SecretStr("a,b,c"))
    assert "a,b,c" not in repr(s) and "http://x/y" not in str(s)



async def test_a_page_and_a_message_asking_for_a_decision_link_to_it_in_the_console(sim, paging_settings):
    """PagerDuty Events API v2: `links` is a list of {href, text} shown on the alert
    (developer.pagerduty.com, "Send an Alert Event"); Slack mrkdwn links are <url|text>
    (api.slack.com, "Formatting text for app surfaces"). Without a console configured: no link."""
    acts = PagingActivities.from_settings(paging_settings.model_copy(update={"console_origin": "https://console.example/"}))
    env = ActivityEnvironment()
    try:
        await env.run(acts.page, trigger(custom_details={"workflow_id": "rollback-inc-1", "decision_step": "confirm"}))
        await env.run(acts.chat, ChatInput(text="waiting for confirm", fields={"workflow": "rollback-inc-1",
                                                                                "step": "confirm"}))
        await env.run(acts.page, trigger(dedup="wf-2:L1"))  # asks nothing: no link
    finally:
        await acts.aclose()
    first, second = await sim.pages()
    assert first["links"] == [{"href": "https://console.example/decide/rollback-inc-1/confirm",
                               "text": "Decide in the console (confirm)"}]
    assert "links" not in second
    [msg] = await sim.chats(LEVEL_HOOKS[0])
    assert "<https://console.example/decide/rollback-inc-1/confirm|Decide in the console (confirm)>" in [
        b["text"]["text"] for b in msg["blocks"] if b["type"] == "section" and "text" in b]
    assert all(not m["mangled"] for m in (await sim.slack())["messages"])
