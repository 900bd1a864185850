"""Escalation levels of P0 pages (manual: "SLA: 5-min confirm, 10-min action. No response after
5min → escalate").

The manual names the SLA and leaves the ladder blank. It is filled here from on-call practice
(DOMAIN.md): "confirm" is an acknowledgement within 5 minutes, "action" the mitigation within 10;
a page nobody acknowledges goes to the next level. Each level is its own PagerDuty service
(routing key) and Slack channel: PagerDuty deduplicates a trigger on an open incident's
`dedup_key`, so re-paging the same level would wake no one; escalating triggers a new event at the
next level's routing key (and the workflows use a per-level dedup key, `<workflow id>:L<level>`).

The routing keys and webhook URLs are secrets and come from the environment, one per level, in
this order (activities/paging.py reads them):
    ROLLBACKCTL_PAGERDUTY_ROUTING_KEYS = key-level-1,key-level-2,key-level-3
    ROLLBACKCTL_SLACK_WEBHOOK_URLS     = url-level-1,url-level-2,url-level-3
or a single ROLLBACKCTL_PAGERDUTY_ROUTING_KEY / ROLLBACKCTL_SLACK_WEBHOOK_URL for every level
(then the PagerDuty service's own escalation policy does the escalating).
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict

from contracts.roles import Role

ACK_WITHIN = timedelta(minutes=5)  # "5-min confirm"
ACTION_WITHIN = timedelta(minutes=10)  # "10-min action"


class EscalationLevel(BaseModel):
    model_config = ConfigDict(frozen=True)

    level: int
    name: str
    who: str
    role: Role  # the least role that can acknowledge and act at this level
    slack_channel: str
    ack_within: timedelta = ACK_WITHIN  # unacknowledged this long -> the next level is paged
    action_within: timedelta = ACTION_WITHIN


LEVELS: tuple[EscalationLevel, ...] = (
    EscalationLevel(level=1, name="Primary on-call", who="the on-call engineer of the trading platform",
                    role=Role.ON_CALL, slack_channel="#perps-oncall"),
    EscalationLevel(level=2, name="Secondary on-call and risk desk",
                    who="the secondary on-call engineer and the risk manager on duty",
                    role=Role.RISK_MANAGER, slack_channel="#perps-incident"),
    EscalationLevel(level=3, name="Incident commander",
                    who="head of risk / engineering lead (Super Admins: may order Degradation Level 3)",
                    role=Role.SUPER_ADMIN, slack_channel="#perps-leadership"),
)

TOP = LEVELS[-1].level
assert [lv.level for lv in LEVELS] == list(range(1, len(LEVELS) + 1)), "levels are 1..n in order"


def get(level: int) -> EscalationLevel:
    """The level's data; above the top level, the top level (escalation has nowhere further to go)."""
    if level < 1:
        raise ValueError(f"escalation level starts at 1, got {level}")
    return LEVELS[min(level, TOP) - 1]


def next_level(level: int) -> int:
    return min(level + 1, TOP)
