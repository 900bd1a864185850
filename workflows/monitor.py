"""MonitorWorkflow: keeps the P0 monitor running (activities/monitor.py says why it is an activity).

One per Temporal namespace (workflow id `monitor`, or `monitor-<namespace>`): `rollbackctl monitor`
starts it with id_conflict_policy=USE_EXISTING, so a second monitor process becomes a standby for
the same activity instead of a second monitor. The activity heartbeats its state; when its process
dies, the heartbeat timeout makes Temporal retry it on a live monitor process, resuming from that
state. Every `run_for_s` the activity returns its state and the workflow continues as new, so the
history stays a handful of events however long it runs.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.monitor import MonitorActivities
    from contracts.incidents import MONITOR_WORKFLOW_ID, MonitorInput, MonitorState


def monitor_workflow_id(namespace: str = "") -> str:
    return MONITOR_WORKFLOW_ID + (f"-{namespace}" if namespace else "")


@workflow.defn(name="MonitorWorkflow")
class MonitorWorkflow:
    @workflow.init
    def __init__(self, inp: MonitorInput) -> None:
        self.inp = inp
        self.started: datetime = workflow.now()

    @workflow.query
    def config(self) -> MonitorInput:
        """Settings and the state carried into this run (live state: the activity's last heartbeat)."""
        return self.inp

    @workflow.run
    async def run(self, inp: MonitorInput) -> MonitorState:
        state: MonitorState = await workflow.execute_activity_method(
            MonitorActivities.run, inp,
            task_queue=inp.activity_task_queue or workflow.info().task_queue,
            start_to_close_timeout=timedelta(seconds=inp.run_for_s + 120),
            heartbeat_timeout=timedelta(seconds=inp.heartbeat_timeout_s),
            # Never give up: a monitor that stops retrying is a silent P0 blind spot.
            retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                                     maximum_interval=timedelta(seconds=10), maximum_attempts=0),
        )
        workflow.continue_as_new(inp.model_copy(update={"state": state}))
