"""Deliberately nondeterministic versions of the workflows, for tests/test_replay.py: each replays a
recorded history and must be caught. Their own module: the sandbox re-imports the module that defines
a workflow, so this one imports nothing but the workflows it changes."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from contracts.incidents import IncidentInput, IncidentResult
    from workflows.canary import CanaryWorkflow
    from workflows.canary_models import CanaryInput
    from workflows.incident import IncidentWorkflow


@workflow.defn(name="RollbackWorkflow")
class ReorderedRollback:
    """The same workflow type with a deliberate nondeterministic change: it skips the roster read."""

    @workflow.run
    async def run(self, inp: dict) -> dict:
        await workflow.sleep(1)
        return {}


@workflow.defn(name="CanaryWorkflow")
class CanaryWithoutSnapshot(CanaryWorkflow):
    """The first stage is applied before Phase 1 is snapshotted."""

    @workflow.run
    async def run(self, inp: CanaryInput):
        await self.r.load_roster()
        await self._apply_stage(self.plan.stages[0])
        return await super().run(inp)


@workflow.defn(name="IncidentWorkflow")
class PageFirst(IncidentWorkflow):
    """Pages before taking the immediate action: a reordering a running incident must not see."""

    @workflow.run
    async def run(self, inp: IncidentInput) -> IncidentResult:
        await self._page_opened(inp)
        await self._take_actions("immediate")
        return IncidentResult(incident_id=self.incident_id, rule=inp.rule, status="x")
