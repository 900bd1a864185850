"""Activities that act on other workflows (e.g. a rollback pauses running canaries)."""

from __future__ import annotations

from temporalio import activity
from temporalio.client import Client


class TemporalOps:
    def __init__(self, client: Client):
        self.client = client

    @activity.defn(name="ops.pause_canaries")
    async def pause_canaries(self, requested_by_workflow: str) -> str:
        """Signal `pause` to every running CanaryWorkflow; returns what it did."""
        paused = []
        try:
            async for wf in self.client.list_workflows(
                "WorkflowType = 'CanaryWorkflow' AND ExecutionStatus = 'Running'"
            ):
                await self.client.get_workflow_handle(wf.id).signal("pause_for_rollback", requested_by_workflow)
                paused.append(wf.id)
        except Exception as e:  # visibility unavailable (e.g. the time-skipping test server)
            return f"could not list canaries: {type(e).__name__}"
        return ("paused " + ", ".join(paused)) if paused else "no canary running"
