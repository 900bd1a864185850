"""Prometheus metrics: the one catalogue of rollbackctl's series, and the `/metrics` servers.

Two endpoints per process that talks to Temporal (README, "Metrics"):
- the domain endpoint (`ROLLBACKCTL_METRICS_LISTEN`), served by prometheus-client from the series
  defined here and filled by the activities, the watcher, the monitor and the collectors;
- the Temporal SDK's own endpoint (`ROLLBACKCTL_SDK_METRICS_LISTEN`, the SDK Runtime's Prometheus
  exporter): the SDK's `temporal_*` series, and the workflows' replay-safe events
  (`workflow.metric_meter()`), listed in WORKFLOW_SERIES below.

Names follow Prometheus conventions: base units (seconds, ratios), `_total` on counters, no
unbounded labels (no workflow ids: switch, rule, kind, step, channel, level and phase names come
from the manual and are bounded).

Every series about workflows (the gauges of what runs now, the workflows' own events) has a `drill`
label, "true" or "false": a game day (`rollbackctl drill`) is counted, but apart. Dashboards and alert
rules about the real exchange read `drill="false"`, so a drill's late acknowledgement pages nobody and
its times never enter the real SLA figures.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

# Buckets in seconds. Propagation: the manual's classes are < 1 s (critical) and < 10 s (the rest).
PROPAGATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Human latencies: the manual's SLAs are 5 min (acknowledge) and 10 min (action).
HUMAN_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0)
POLL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# -- the consumer side (core/watcher.py: the trading core, the simulator) ------------------------------
SWITCH_PROPAGATION = Histogram(
    "rollbackctl_switch_propagation_seconds",
    "Audited switch change (the record's updated_at) to applied by this consumer's watcher",
    ["switch"], buckets=PROPAGATION_BUCKETS, registry=None)
WATCH_RECONNECTS = Counter("rollbackctl_switch_watch_reconnects", "Times this consumer's switch watch dropped and resumed", registry=None)
WATCH_REVISION = Gauge("rollbackctl_switch_watch_revision", "Highest etcd revision of the switches this consumer has applied", registry=None)

# -- the control matrix and the audit (activities/metrics.py MatrixMetrics, in the worker) -------------
SWITCH_VALUE = Gauge("rollbackctl_switch_value", "Current value of a boolean (1 = true) or numeric switch", ["switch"], registry=None)
SWITCH_ENUM = Gauge("rollbackctl_switch_enum_value",
                    "1 for an enum switch's current value, 0 for each of its other allowed values", ["switch", "value"], registry=None)
SWITCH_OFF_DEFAULT = Gauge("rollbackctl_switch_off_default", "1 while a switch is not at its default value", ["switch"], registry=None)
SWITCH_LAST_CHANGE = Gauge("rollbackctl_switch_last_change_timestamp_seconds",
                           "When a switch was last changed (its record's updated_at), Unix time", ["switch"], registry=None)
SWITCH_CHANGES = Counter("rollbackctl_switch_changes",
                         "Audited switch changes in the audit chain (one per switch in a change set)",
                         ["switch", "authority", "role"], registry=None)
AUDIT_HEAD = Gauge("rollbackctl_audit_head_sequence", "Sequence number of the audit chain's head record", registry=None)
AUDIT_VERIFY_OK = Gauge("rollbackctl_audit_verify_ok",
                        "1 if the last full verification of the audit chain (hashes, signatures) passed, else 0", registry=None)
CONSUMERS_LIVE = Gauge("rollbackctl_consumers_live", "Consumer instances of the matrix with a live receipt", registry=None)
CONSUMERS_BEHIND = Gauge("rollbackctl_consumers_behind",
                         "Live consumer instances whose receipt is below the last switch change's revision", registry=None)
AUDIT_VERIFY_TIME = Gauge("rollbackctl_audit_verify_timestamp_seconds", "When the audit chain was last verified, Unix time", registry=None)

# -- workflows now (activities/metrics.py WorkflowMetrics: Temporal visibility + progress queries) -------
WORKFLOWS_RUNNING = Gauge("rollbackctl_workflows_running",
                          "Running rollbacks, degradations, canaries, incidents, change requests and emergency "
                          "follow-ups, by kind and current step", ["kind", "step", "drill"], registry=None)
AWAITING_HUMAN = Gauge("rollbackctl_awaiting_human", "Workflows waiting for a person's decision, by kind and the least role that may give it",
                       ["kind", "role", "drill"], registry=None)
AWAITING_HUMAN_OLDEST = Gauge("rollbackctl_awaiting_human_oldest_seconds",
                              "How long the longest-waiting workflow of a kind has waited for a person", ["kind", "drill"],
                              registry=None)
INCIDENTS_OPEN = Gauge("rollbackctl_incidents_open", "Open P0 incidents, by rule", ["rule", "drill"], registry=None)
INCIDENTS_UNACKED_PAST_SLA = Gauge("rollbackctl_incidents_unacknowledged_past_sla",
                                   "Open P0 incidents not acknowledged within the acknowledge SLA, by rule", ["rule", "drill"],
                                   registry=None)
CANARY_STAGE = Gauge("rollbackctl_canary_stage", "The running canary's stage (1-based; 0: not started)", ["phase", "drill"], registry=None)
CANARY_STAGES = Gauge("rollbackctl_canary_stages", "How many stages the running canary has", ["phase", "drill"], registry=None)
CANARY_LAST_CHECK_OK = Gauge("rollbackctl_canary_last_check_ok", "1 if the running canary's last health check passed", ["phase", "drill"], registry=None)
CANARY_FAILED_IN_A_ROW = Gauge("rollbackctl_canary_failed_checks_in_a_row",
                               "The running canary's consecutive failed health checks", ["phase", "drill"], registry=None)
TASK_QUEUE_POLLERS = Gauge("rollbackctl_task_queue_pollers",
                           "Workers that polled a task queue in the last minute (Temporal's DescribeTaskQueue)",
                           ["task_queue", "type"], registry=None)
COLLECTIONS = Counter("rollbackctl_metrics_collections", "Collections of the workflow and task-queue gauges", ["outcome"], registry=None)

# -- paging (activities/paging.py) ---------------------------------------------------------------------
PAGES_SENT = Counter("rollbackctl_pages_sent", "Pages and chat messages the service accepted, by channel and escalation level",
                     ["channel", "level", "drill"], registry=None)
PAGES_FAILED = Counter("rollbackctl_pages_failed",
                       "Page and chat attempts that failed (refused, unreachable, timed out), by channel and level",
                       ["channel", "level", "drill"], registry=None)
WEBHOOKS_RECEIVED = Counter("rollbackctl_pagerduty_webhooks", "PagerDuty v3 webhooks received, by outcome",
                            ["outcome"], registry=None)

# -- the P0 monitor (activities/monitor.py) -----------------------------------------------------------
MONITOR_POLLS = Counter("rollbackctl_monitor_polls", "Health polls of the trading core by the P0 monitor", registry=None)
MONITOR_POLL_FAILURES = Counter("rollbackctl_monitor_poll_failures",
                                "Health polls that failed (unreachable, timed out, a broken body)", registry=None)
MONITOR_LAST_POLL = Gauge("rollbackctl_monitor_last_poll_timestamp_seconds", "When the P0 monitor last polled, Unix time", registry=None)
MONITOR_SINCE_POLL = Gauge("rollbackctl_monitor_seconds_since_last_poll",
                           "Seconds since the P0 monitor's last poll (at scrape time; -1 before the first)", registry=None)
MONITOR_POLL_SECONDS = Histogram("rollbackctl_monitor_poll_duration_seconds", "One health poll of the trading core",
                                 buckets=POLL_BUCKETS, registry=None)
MONITOR_FIRING = Gauge("rollbackctl_monitor_rules_firing", "P0 rules the monitor sees firing now, by rule", ["rule"], registry=None)

# -- the HTTP services (the console, the OFREP endpoint): HttpMetrics below ----------------------------
HTTP_REQUESTS = Counter("rollbackctl_http_requests",
                        "HTTP requests answered, by service, route template (never the raw path), method and status code",
                        ["service", "route", "method", "code"], registry=None)
HTTP_LATENCY = Histogram("rollbackctl_http_request_duration_seconds",
                         "Request received to its status line sent (for a live stream: to the stream's start), "
                         "by service and route template", ["service", "route"], buckets=POLL_BUCKETS, registry=None)
CONSOLE_LIVE_STREAMS = Gauge("rollbackctl_console_live_streams", "Browsers following a live console page now", registry=None)


def drill_label(drill: bool) -> str:
    """The `drill` label's value (module docstring): "true" for a game day's series, "false" for the exchange's."""
    return "true" if drill else "false"


@dataclass(frozen=True)
class WorkflowSeries:
    """A series the workflows record through `workflow.metric_meter()` (the SDK endpoint)."""

    name: str  # as exported (the SDK adds `_total` to counters and `_seconds` to durations)
    kind: str  # counter | histogram
    help: str
    labels: tuple[str, ...]


# The SDK exporter adds its own labels too: namespace, task_queue, workflow_type, service_name.
INCIDENT_ACK = "rollbackctl_incident_ack"
INCIDENT_ACTION = "rollbackctl_incident_action"
SLA_BREACHES = "rollbackctl_sla_breaches"
HEALTH_CHECKS = "rollbackctl_health_checks"
WORKFLOWS_FINISHED = "rollbackctl_workflows_finished"
WORKFLOW_SERIES = (
    WorkflowSeries(f"{INCIDENT_ACK}_seconds", "histogram", "P0 incident opened to acknowledged (the signed ack)", ("rule", "drill")),
    WorkflowSeries(f"{INCIDENT_ACTION}_seconds", "histogram", "P0 incident opened to the first human action", ("rule", "drill")),
    WorkflowSeries(f"{SLA_BREACHES}_total", "counter", "Acknowledge or action SLAs missed (an escalation followed)",
                   ("rule", "sla", "drill")),
    WorkflowSeries(f"{HEALTH_CHECKS}_total", "counter",
                   "Health checks of canaries and of rollback / degradation observations, by kind and result (ok / failed)",
                   ("kind", "result", "drill")),
    WorkflowSeries(f"{WORKFLOWS_FINISHED}_total", "counter", "Rollbacks, degradations, canaries, incidents ended, by result",
                   ("kind", "result", "drill")),
)
SDK_BUCKETS = {INCIDENT_ACK: HUMAN_BUCKETS, INCIDENT_ACTION: HUMAN_BUCKETS}  # keyed by the name before the unit suffix


# Which process exports what: each serves only the groups it fills, so a gauge nobody sets (an audit
# verification in the simulator) is never exported as a misleading 0.
GROUPS: dict[str, tuple] = {
    "consumer": (SWITCH_PROPAGATION, WATCH_RECONNECTS, WATCH_REVISION),
    "matrix": (SWITCH_VALUE, SWITCH_ENUM, SWITCH_OFF_DEFAULT, SWITCH_LAST_CHANGE, SWITCH_CHANGES, AUDIT_HEAD,
               AUDIT_VERIFY_OK, AUDIT_VERIFY_TIME, CONSUMERS_LIVE, CONSUMERS_BEHIND),
    "workflows": (WORKFLOWS_RUNNING, AWAITING_HUMAN, AWAITING_HUMAN_OLDEST, INCIDENTS_OPEN, INCIDENTS_UNACKED_PAST_SLA,
                  CANARY_STAGE, CANARY_STAGES, CANARY_LAST_CHECK_OK, CANARY_FAILED_IN_A_ROW, COLLECTIONS),
    "paging": (PAGES_SENT, PAGES_FAILED),
    "webhooks": (WEBHOOKS_RECEIVED,),
    "http": (HTTP_REQUESTS, HTTP_LATENCY),
    "console": (CONSOLE_LIVE_STREAMS,),
    "monitor": (MONITOR_POLLS, MONITOR_POLL_FAILURES, MONITOR_LAST_POLL, MONITOR_SINCE_POLL, MONITOR_POLL_SECONDS,
                MONITOR_FIRING, TASK_QUEUE_POLLERS),
}
# The worker runs the activities (paging) and the collectors; the monitor its loop; the simulator a watcher.
WORKER = ("matrix", "workflows", "paging")
MONITOR = ("monitor",)
CONSUMER = ("consumer",)
WEBHOOK_RECEIVER = ("webhooks",)
CONSOLE = ("http", "console")
OFREP = ("http", "consumer")  # its cache is what OpenFeature clients read: propagation is measured there too


def domain_series() -> list[tuple[str, str, str]]:
    """(name as exported, type, help) of every domain series on the prometheus-client endpoints."""
    out = []
    for group in GROUPS.values():
        for metric in group:
            for m in metric.describe():
                out.append((m.name + ("_total" if m.type == "counter" else ""), m.type, m.documentation))
    return out


def registry(groups: tuple[str, ...]):
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry(auto_describe=True)
    for g in groups:
        for metric in GROUPS[g]:
            reg.register(metric)
    return reg


def serve(listen: str, groups: tuple[str, ...]) -> object:
    """Serve `groups` on host:port (a thread); returns the server (`.shutdown()` stops it)."""
    from prometheus_client import disable_created_metrics, start_http_server

    disable_created_metrics()  # no `_created` series beside every counter and histogram
    host, _, port = listen.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=registry(groups))
    return server


def serve_configured(groups: tuple[str, ...]) -> object | None:
    """This process's /metrics at ROLLBACKCTL_METRICS_LISTEN (none when empty), said in one line."""
    from core.settings import MetricsSettings

    listen = MetricsSettings().metrics_listen
    if not listen:
        return None
    print(f"metrics http://{listen}/metrics", flush=True)
    return serve(listen, groups)


METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HttpMetrics:
    """ASGI middleware counting a Starlette app's requests by route template (bounded labels: a workflow id
    in `/workflows/{wid}` is never a label; a path no route matches is `unmatched`, an odd method `other`)."""

    def __init__(self, app, service: str):
        self.app, self.service = app, service
        self.routes = list(getattr(app, "routes", ()))

    def route_of(self, scope) -> str:
        from starlette.routing import Match

        for r in self.routes:
            match, _ = r.matches(scope)
            if match is not Match.NONE:  # PARTIAL: the path matches, the method does not (405)
                return getattr(r, "path", "") or "unmatched"
        return "unmatched"

    async def __call__(self, scope, receive, send) -> None:
        import time

        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route, started, code = self.route_of(scope), time.perf_counter(), 500

        async def counted(message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
                HTTP_LATENCY.labels(self.service, route).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            method = scope.get("method", "")
            HTTP_REQUESTS.labels(self.service, route, method if method in METHODS else "other", str(code)).inc()


def _since_poll() -> float:
    import time

    last = MONITOR_LAST_POLL._value.get()  # noqa: SLF001 (the gauge's own value)
    return -1.0 if last == 0 else max(0.0, time.time() - last)


MONITOR_SINCE_POLL.set_function(_since_poll)  # computed at scrape time


def sdk_prometheus(listen: str):
    """The Temporal SDK Runtime's Prometheus exporter config (its series, and the workflows' events)."""
    from temporalio.runtime import PrometheusConfig

    return PrometheusConfig(bind_address=listen, counters_total_suffix=True, unit_suffix=True,
                            durations_as_seconds=True, histogram_bucket_overrides={k: list(v) for k, v in SDK_BUCKETS.items()})


def prometheus_config(jobs: dict[str, str], rules: "object", scrape_interval_s: float = 5.0) -> str:
    """A Prometheus config (YAML) scraping `jobs` (job name -> host:port) and loading the rules file."""
    lines = ["# Written by `rollbackctl dev up`: every endpoint of the embedded stack.",
             "global:", f"  scrape_interval: {scrape_interval_s:g}s", f"  evaluation_interval: {scrape_interval_s:g}s",
             "rule_files:", f"  - {rules}", "scrape_configs:"]
    for job, target in jobs.items():
        lines += [f"  - job_name: {job}", "    static_configs:", f"      - targets: ['{target}']"]
    return "\n".join(lines) + "\n"
