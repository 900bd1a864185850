"""Replay-safe domain events from workflows: `workflow.metric_meter()` (skipped while replaying).

They are exported on the Temporal SDK's endpoint (ROLLBACKCTL_SDK_METRICS_LISTEN), named as listed in
core/metrics.WORKFLOW_SERIES. Recording adds no command to the history: no patch is needed for it.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from core import metrics as series

_HELP = {s.name.removesuffix("_seconds").removesuffix("_total"): s.help for s in series.WORKFLOW_SERIES}


def _labels(drill: bool, labels: dict[str, str]) -> dict[str, str]:
    # Every series carries the drill mark (a required argument, so no call site can forget it): a game day's
    # acknowledge times and SLA breaches must never count toward the real ones (dashboards read drill="false").
    return {**labels, "drill": series.drill_label(drill)}


def seconds(name: str, value: timedelta, *, drill: bool, **labels: str) -> None:
    """Observe a duration (exported as `<name>_seconds`)."""
    workflow.metric_meter().create_histogram_timedelta(name, _HELP.get(name), "s").record(
        max(value, timedelta(0)), _labels(drill, labels))


def count(name: str, *, drill: bool, **labels: str) -> None:
    """Count one event (exported as `<name>_total`)."""
    workflow.metric_meter().create_counter(name, _HELP.get(name)).add(1, _labels(drill, labels))
