"""Paging settings that point at the simulator's sinks (for `rollbackctl dev up`, the demo, tests).

    env.update(paging_env("http://127.0.0.1:8700"))

One PagerDuty routing key and one Slack webhook path per escalation level (manual/escalation.py),
so escalations show up at the sinks under their own key / path: `GET /sim/pagerduty`,
`GET /sim/slack/dev/level-2`.
"""

from __future__ import annotations

from manual import escalation


def paging_env(sim_url: str) -> dict[str, str]:
    base = sim_url.rstrip("/")
    return {
        "ROLLBACKCTL_PAGERDUTY_URL": f"{base}/sim/pagerduty",
        "ROLLBACKCTL_PAGERDUTY_ROUTING_KEYS": ",".join(f"dev-routing-key-level-{lv.level}" for lv in escalation.LEVELS),
        "ROLLBACKCTL_SLACK_WEBHOOK_URLS": ",".join(f"{base}/sim/slack/dev/level-{lv.level}" for lv in escalation.LEVELS),
    }
