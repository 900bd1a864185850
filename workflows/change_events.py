"""ChangeEventsWorkflow: keeps the PagerDuty Change Events relay running (activities/change_events.py).

One per task queue (`change-events-<task queue>`); the worker starts it at boot with
id_conflict_policy=USE_EXISTING. Its one activity follows the audit trail and heartbeats its cursor; a
dead worker's activity is retried on another worker from the last heartbeat; every `run_for_s` it
returns and the workflow continues as new with the cursor, so its history stays a handful of events.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.change_events import ChangeEventRelay, RelayInput


def change_events_workflow_id(task_queue: str) -> str:
    return f"change-events-{task_queue}"


@workflow.defn(name="ChangeEventsWorkflow")
class ChangeEventsWorkflow:
    @workflow.run
    async def run(self, inp: RelayInput) -> None:
        st = await workflow.execute_activity_method(
            ChangeEventRelay.relay, inp, start_to_close_timeout=timedelta(seconds=inp.run_for_s + 300),
            heartbeat_timeout=timedelta(seconds=max(10.0, inp.poll_s * 10)),
            retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                                     maximum_interval=timedelta(seconds=30), maximum_attempts=0))
        workflow.continue_as_new(inp.model_copy(update={"after_seq": st.after_seq}))
