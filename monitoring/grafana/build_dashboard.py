"""Writes rollbackctl.json, the Grafana dashboard (python monitoring/grafana/build_dashboard.py).

Every query here is also run against a real Prometheus by tests/test_metrics_prometheus.py, and every
series it names must be in core/metrics.py's catalogue: the dashboard cannot drift from the metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

DS = {"type": "prometheus", "uid": "${datasource}"}

# (row title, [(panel title, type, [(expr, legend)], unit, description)])
ROWS = [
    ("Control matrix", [
        ("Switches off their default", "stat", [("sum(max by (switch) (rollbackctl_switch_off_default))", "off default")],
         "short", "How many switches are not at the manual's default now."),
        ("Routing mode", "state-timeline", [('max by (value) (rollbackctl_switch_enum_value{switch="routing_mode"})',
                                             "{{value}}")], "short", "1 = the current routing mode."),
        ("Boolean and numeric switches", "table", [("max by (switch) (rollbackctl_switch_value)", "{{switch}}")], "short",
         "Current values (booleans: 1 = true)."),
        ("Switch changes (per 5 min)", "timeseries",
         [("sum by (switch, authority) (increase(rollbackctl_switch_changes_total[5m]))", "{{switch}} ({{authority}})")],
         "short", "Audited changes by switch and authority."),
        ("Propagation p50 / p99 (audited -> applied)", "timeseries", [
            ("histogram_quantile(0.5, sum by (le) (rate(rollbackctl_switch_propagation_seconds_bucket[5m])))", "p50"),
            ("histogram_quantile(0.99, sum by (le) (rate(rollbackctl_switch_propagation_seconds_bucket[5m])))", "p99")],
         "s", "The manual: < 1 s for critical switches, < 10 s for the rest."),
        ("Audit head / verified", "stat", [("max(rollbackctl_audit_head_sequence)", "head"),
                                           ("min(rollbackctl_audit_verify_ok)", "verified (1 = ok)")], "short",
         "The audit chain's head sequence and whether its last verification passed."),
    ]),
    ("P0 incidents", [
        ("Open incidents by rule", "timeseries", [('max by (rule) (rollbackctl_incidents_open{drill="false"})', "{{rule}}")], "short", ""),
        ("Unacknowledged past SLA", "stat", [('sum(max by (rule) (rollbackctl_incidents_unacknowledged_past_sla{drill="false"}))', "late")],
         "short", "The manual: acknowledge within 5 minutes."),
        ("Acknowledge latency p50 / p90", "timeseries", [
            ('histogram_quantile(0.5, sum by (le) (rate(rollbackctl_incident_ack_seconds_bucket{drill="false"}[1h])))', "p50"),
            ('histogram_quantile(0.9, sum by (le) (rate(rollbackctl_incident_ack_seconds_bucket{drill="false"}[1h])))', "p90")], "s", ""),
        ("SLA breaches (per hour)", "timeseries",
         [('sum by (rule, sla) (increase(rollbackctl_sla_breaches_total{drill="false"}[1h]))', "{{rule}} {{sla}}")], "short", ""),
        ("Monitor: seconds since last poll", "stat",
         [("time() - max(rollbackctl_monitor_last_poll_timestamp_seconds)", "since poll")], "s", ""),
        ("Monitor polls / failures (per min)", "timeseries", [
            ("sum(rate(rollbackctl_monitor_polls_total[5m])) * 60", "polls"),
            ("sum(rate(rollbackctl_monitor_poll_failures_total[5m])) * 60", "failures")], "short", ""),
    ]),
    ("Rollbacks, degradations and decisions", [
        ("Running by kind and step", "timeseries",
         [('max by (kind, step) (rollbackctl_workflows_running{drill="false"})', "{{kind}}: {{step}}")], "short", ""),
        ("Awaiting a person", "timeseries", [('max by (kind, role) (rollbackctl_awaiting_human{drill="false"})', "{{kind}} ({{role}})")],
         "short", "Workflows waiting for a decision, by the least role that may give it."),
        ("Longest wait for a person", "timeseries", [('max by (kind) (rollbackctl_awaiting_human_oldest_seconds{drill="false"})', "{{kind}}")],
         "s", ""),
        ("Ended (per hour) by result", "timeseries",
         [('sum by (kind, result) (increase(rollbackctl_workflows_finished_total{drill="false"}[1h]))', "{{kind}}: {{result}}")], "short", ""),
        ("Workers polling", "stat", [('max by (task_queue) (rollbackctl_task_queue_pollers{type="workflow"})',
                                      "{{task_queue}}")], "short", "0: workflows on that queue make no progress."),
    ]),
    ("Canary", [
        ("Stage", "timeseries", [('max by (phase) (rollbackctl_canary_stage{drill="false"})', "{{phase}} stage"),
                                 ('max by (phase) (rollbackctl_canary_stages{drill="false"})', "{{phase}} stages")], "short", ""),
        ("Health checks (per hour)", "timeseries",
         [('sum by (kind, result) (increase(rollbackctl_health_checks_total{drill="false"}[1h]))', "{{kind}} {{result}}")], "short", ""),
        ("Failed checks in a row", "stat", [('max by (phase) (rollbackctl_canary_failed_checks_in_a_row{drill="false"})', "{{phase}}")],
         "short", ""),
    ]),
    # Game days (`rollbackctl drill`): drill="true" everywhere, kept out of every panel above.
    ("Drills", [
        ("Drills running by kind", "timeseries",
         [('sum by (kind) (max by (kind, step) (rollbackctl_workflows_running{drill="true"}))', "{{kind}}")], "short",
         "Practice runs now; `rollbackctl drill history` scores them."),
        ("Drill acknowledge p50 (per day)", "timeseries",
         [('histogram_quantile(0.5, sum by (le) (rate(rollbackctl_incident_ack_seconds_bucket{drill="true"}[1d])))',
           "p50")], "s", "At the drill's speed: compare with its scaled SLA in `rollbackctl drill report`."),
        ("Drills ended (per day) by result", "timeseries",
         [('sum by (kind, result) (increase(rollbackctl_workflows_finished_total{drill="true"}[1d]))',
           "{{kind}}: {{result}}")], "short", ""),
    ]),
    ("Paging", [
        ("Pages sent (per 10 min)", "timeseries",
         [('sum by (channel, level) (increase(rollbackctl_pages_sent_total{drill="false"}[10m]))', "{{channel}} L{{level}}")], "short", ""),
        ("Pages failed (per 10 min)", "timeseries",
         [('sum by (channel, level) (increase(rollbackctl_pages_failed_total{drill="false"}[10m]))', "{{channel}} L{{level}}")], "short", ""),
        ("PagerDuty webhooks", "timeseries",
         [("sum by (outcome) (increase(rollbackctl_pagerduty_webhooks_total[10m]))", "{{outcome}}")], "short", ""),
    ]),
    ("Console and OFREP", [
        ("Requests (per min) by status", "timeseries",
         [("sum by (service, code) (rate(rollbackctl_http_requests_total[5m])) * 60", "{{service}} {{code}}")], "short",
         "401 / 403 bursts at the console are refused sign-ins or decisions; 5xx are faults."),
        ("Response start p99 by route", "timeseries",
         [("histogram_quantile(0.99, sum by (service, route, le) (rate(rollbackctl_http_request_duration_seconds_bucket[5m])))",
           "{{service}} {{route}}")], "s", ""),
        ("Live console pages", "stat", [("sum(rollbackctl_console_live_streams)", "followed")], "short",
         "Browsers following a live page now."),
    ]),
]


def queries() -> list[str]:
    return [e for _, panels in ROWS for _, _, targets, _, _ in panels for e, _ in targets]


def build() -> dict:
    panels, y, pid = [], 0, 1
    for title, row in ROWS:
        panels.append({"type": "row", "title": title, "id": pid, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        pid, y = pid + 1, y + 1
        for i, (ptitle, ptype, targets, unit, desc) in enumerate(row):
            panels.append({
                "id": pid, "type": ptype, "title": ptitle, "description": desc, "datasource": DS,
                "gridPos": {"h": 7, "w": 8, "x": (i % 3) * 8, "y": y + (i // 3) * 7},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {},
                "targets": [{"datasource": DS, "expr": e, "legendFormat": leg, "refId": chr(65 + k)}
                            for k, (e, leg) in enumerate(targets)],
            })
            pid += 1
        y += ((len(row) + 2) // 3) * 7
    return {
        "title": "rollbackctl", "uid": "rollbackctl", "tags": ["rollbackctl", "perps"], "timezone": "utc",
        "schemaVersion": 39, "version": 1, "editable": True, "refresh": "10s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus",
                                 "label": "Prometheus", "current": {}, "hide": 0}]},
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    out = Path(__file__).with_name("rollbackctl.json")
    out.write_text(render())
    print(f"wrote {out} ({len(queries())} queries)")
