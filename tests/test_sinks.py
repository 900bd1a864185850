"""The PagerDuty and Slack sinks are as strict as the real services (simulator/sinks.py).

Each rule is PagerDuty's or Slack's documented behaviour:
- PagerDuty Events API v2 (github.com/PagerDuty/developer-docs docs/events-API-v2/02-Trigger-Events.md):
  "routing_key ... the 32 character Integration Key"; summary "maximum permitted length ... 1024";
  dedup_key "maximum permitted length ... 255"; "Submitting subsequent events for the same dedup_key will
  result in those events being applied to an open alert"; "While an incident is acknowledged, it won't
  generate any additional notifications, even if it receives new trigger events"; "Subsequent acknowledge
  or resolve events sent via a different routing_key from the original will be dropped"; "Once the alert
  is resolved, any further events with the same dedup_key will create a new alert (for trigger events) or
  be dropped (for acknowledge and resolve events)"; images "must be served via HTTPS".
- docs/events-API-v2/05-Rate-Limits.md: "approximately 120 calls/minute per integration key ... calculated
  over a 60 second window looking back"; "429 ... PagerDuty will not ingest the event".
- docs/events-API-v2/01-Overview.md: "Events API payloads are limited to 512 KB".
- docs/webhooks/04-Signatures.md: `X-PagerDuty-Signature: v1=<hex HMAC-SHA256 of the body>`, comma-separated.
- Slack (api.slack.com/changelog/2016-05-17-changes-to-errors-for-incoming-webhooks): 400 invalid_payload,
  403 action_prohibited, 404 channel_not_found, 410 channel_is_archived; "Basic message formatting": "There
  are three characters you must convert to HTML entities and only three: &, <, and >"; Block Kit: section
  text <= 3000, <= 10 fields, <= 50 blocks; about one message per second per webhook (429, Retry-After).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid

import pytest

from simulator.sinks import PagerDutySink, SlackSink, change_event_errors, pagerduty_errors, slack_mangles

KEY = uuid.uuid4().hex  # 32 characters
KEY2 = uuid.uuid4().hex


def trigger(dk="wf/a:L1", key=KEY, severity="critical", summary="HL down", **payload):
    return {"routing_key": key, "event_action": "trigger", "dedup_key": dk,
            "payload": {"summary": summary, "source": "rollbackctl", "severity": severity, **payload}}


def act(action, dk="wf/a:L1", key=KEY):
    return {"routing_key": key, "event_action": action, "dedup_key": dk}


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.mark.parametrize("body,why", [
    ({**trigger(), "routing_key": "dev-level-1"}, "32-character integration key (got 11"),
    ({**trigger(), "routing_key": "x" * 31}, "got 31"),
    ({**trigger(), "routing_key": "k" * 16 + "-" * 16}, "32-character"),
    ({**trigger(), "event_action": "page"}, "'event_action' must be one of"),
    ({**trigger(), "dedup_key": "d" * 256}, "at most 255"),
    (trigger(summary="s" * 1025), "longer than 1024"),
    (trigger(severity="high"), "'payload.severity'"),
    ({k: v for k, v in trigger().items() if k != "payload"}, "'payload' is required"),
    (trigger(custom_details="text"), "custom_details' must be an object"),
    (trigger(timestamp="yesterday"), "ISO 8601"),
    ({**trigger(), "links": [{"text": "no href"}]}, "'links'"),
    ({**trigger(), "images": [{"src": "http://x/img.png"}]}, "https 'src'"),
    ({k: v for k, v in act("resolve").items() if k != "dedup_key"}, "'dedup_key' is required to resolve"),
])
def test_pagerduty_refuses_what_its_events_api_refuses(body, why):
    errs = pagerduty_errors(body)
    assert any(why in e for e in errs), errs
    sink = PagerDutySink()
    code, answer = sink.receive(body)
    assert code == 400 and answer["status"] == "invalid event"
    assert sink.alerts == {} and sink.notifications == [] and len(sink.rejected) == 1


def test_a_well_formed_trigger_is_accepted_and_notifies_once():
    sink = PagerDutySink()
    assert pagerduty_errors(trigger()) == []
    code, answer = sink.receive(trigger())
    assert (code, answer["status"], answer["dedup_key"]) == (202, "success", "wf/a:L1")
    assert len(sink.notifications) == 1 and sink.notifications[0]["urgency"] == "high"


def test_a_body_over_512_kb_is_refused():
    assert PagerDutySink().receive(trigger(), size=512 * 1024 + 1)[0] == 400


def test_a_trigger_on_an_open_alert_is_appended_and_notifies_nobody():
    sink = PagerDutySink()
    for _ in range(3):
        assert sink.receive(trigger(summary="ESCALATED"))[0] == 202
    assert len(sink.notifications) == 1  # the urgent follow-ups went into the open alert's log
    assert len(sink.alerts[(KEY, "wf/a:L1")]["log"]) == 3


def test_an_acknowledged_alert_notifies_nobody_even_on_new_triggers():
    sink = PagerDutySink()
    sink.receive(trigger())
    sink.receive(act("acknowledge"))
    sink.receive(trigger(summary="ACTION SLA BREACHED"))
    assert len(sink.notifications) == 1
    assert sink.alerts[(KEY, "wf/a:L1")]["status"] == "acknowledged"


def test_acknowledge_and_resolve_need_the_routing_key_that_opened_the_alert():
    sink = PagerDutySink()
    sink.receive(trigger())
    assert sink.receive(act("resolve", key=KEY2))[0] == 202  # accepted ...
    assert sink.alerts[(KEY, "wf/a:L1")]["status"] == "triggered"  # ... and dropped
    assert sink.dropped and sink.dropped[0]["why"].startswith("no open alert")
    sink.receive(act("resolve"))
    assert sink.alerts[(KEY, "wf/a:L1")]["status"] == "resolved"


def test_after_a_resolve_the_same_dedup_key_opens_a_new_alert_and_late_acks_are_dropped():
    sink = PagerDutySink()
    sink.receive(trigger())
    sink.receive(act("resolve"))
    sink.receive(act("acknowledge"))  # on a resolved alert: dropped
    assert len(sink.dropped) == 1
    sink.receive(trigger(summary="again"))
    assert len(sink.notifications) == 2 and sink.alerts[(KEY, "wf/a:L1")]["status"] == "triggered"


def test_more_than_120_events_in_60_seconds_get_429_and_are_not_ingested():
    clock = Clock()
    sink = PagerDutySink(clock=clock)
    codes = [sink.receive(trigger(dk=f"wf/s{i}:L1"))[0] for i in range(125)]
    assert codes.count(202) == 120 and codes[120:] == [429] * 5
    assert len(sink.alerts) == 120  # the throttled five were not ingested
    assert sink.receive(trigger(dk="wf/other:L1", key=KEY2))[0] == 202  # the limit is per routing key
    clock.t += 59.9
    assert sink.receive(trigger(dk="wf/late:L1"))[0] == 429  # still within the 60 s looking back
    clock.t += 0.2
    assert sink.receive(trigger(dk="wf/late:L1"))[0] == 202


def test_an_unknown_integration_key_is_refused_when_the_account_is_known():
    sink = PagerDutySink(known_keys={KEY})
    assert sink.receive(trigger(key=KEY2))[0] == 400
    assert sink.receive(trigger())[0] == 202


def test_change_events_are_checked_and_kept():
    sink = PagerDutySink()
    assert change_event_errors({"routing_key": KEY, "payload": {}}) == ["'payload.summary' is missing or blank"]
    assert sink.receive_change({"routing_key": "short", "payload": {"summary": "x"}})[0] == 400
    code, _ = sink.receive_change({"routing_key": KEY, "payload": {"summary": "rita: hedge_max_leverage 3 -> 1.5",
                                                                    "custom_details": {"actor": "rita"}}})
    assert code == 202 and sink.change_events[0]["payload"]["custom_details"]["actor"] == "rita"
    assert sink.notifications == []  # a change event notifies nobody


def test_a_person_acting_in_the_app_sends_a_signed_v3_webhook():
    sink = PagerDutySink(webhook_url="http://127.0.0.1:1/pagerduty/webhook", webhook_secrets=["s1", "s2"])
    sink.receive(trigger())
    hook = sink.app_action("wf/a:L1", "acknowledge", "Olive On-call")
    ev = hook["event"]["event"]
    assert ev["event_type"] == "incident.acknowledged" and ev["data"]["incident_key"] == "wf/a:L1"
    assert ev["agent"]["summary"] == "Olive On-call"
    sigs = hook["signature"].split(",")
    assert sigs == ["v1=" + hmac.new(s.encode(), hook["body"], hashlib.sha256).hexdigest() for s in ("s1", "s2")]
    assert json.loads(hook["body"]) == hook["event"]
    sink.receive(trigger(summary="again"))
    assert len(sink.notifications) == 1  # acknowledged: nobody is woken by the new trigger
    sink.app_action("wf/a:L1", "unacknowledge", "timeout")
    assert len(sink.notifications) == 2  # its acknowledgement timed out: PagerDuty notifies again
    with pytest.raises(KeyError):
        sink.app_action("wf/unknown:L1", "acknowledge", "x")


# -- Slack --------------------------------------------------------------------------------------------------
def section(text):
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


@pytest.mark.parametrize("body,status,error", [
    ("not an object", 400, "invalid_payload"),
    ({"username": "no text"}, 400, "no_text"),
    ({"text": "x", "blocks": [{"type": "fancy"}]}, 400, "invalid_blocks"),
    ({"text": "x", "blocks": [section("s" * 3001)]}, 400, "invalid_blocks"),
    ({"text": "x", "blocks": [{"type": "section", "fields": [{"type": "mrkdwn", "text": "f"}] * 11}]}, 400,
     "invalid_blocks"),
    ({"text": "x", "blocks": [section("b")] * 51}, 400, "invalid_blocks"),
])
def test_slack_refuses_what_an_incoming_webhook_refuses(body, status, error):
    sink = SlackSink()
    assert sink.receive("T/B/x", body)[:2] == (status, error)
    assert sink.messages == []


def test_slack_permanent_errors_of_a_broken_webhook():
    sink = SlackSink()
    sink.broken["T/B/archived"] = "channel_is_archived"
    assert sink.receive("T/B/archived", {"text": "hi"})[:2] == (410, "channel_is_archived")


@pytest.mark.parametrize("text,mangled", [
    ("margin <150% of target, top up to > 200%", True),
    ("P&L down", True),
    ("margin &lt;150% of target, top up to &gt; 200%", False),
    ("P&amp;L down, see <https://console.local/x|the console> and <@U123>", False),
])
def test_unescaped_control_characters_are_shown_mangled(text, mangled):
    assert bool(slack_mangles(text)) is mangled
    sink = SlackSink()
    assert sink.receive("T/B/x", {"text": text})[0] == 200  # Slack accepts it ...
    assert bool(sink.messages[0]["mangled"]) is mangled  # ... and shows it mangled


def test_slack_takes_about_one_message_a_second_per_webhook():
    clock = Clock()
    sink = SlackSink(clock=clock)
    assert sink.receive("T/B/x", {"text": "1"})[0] == 200
    code, error, headers = sink.receive("T/B/x", {"text": "2"})
    assert (code, error, headers.get("Retry-After")) == (429, "rate_limited", "1")
    assert sink.receive("T/B/y", {"text": "other webhook"})[0] == 200
    clock.t += 1.01
    assert sink.receive("T/B/x", {"text": "3"})[0] == 200
