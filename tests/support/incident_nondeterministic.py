"""A deliberately nondeterministic IncidentWorkflow for the replay test (its own module: the sandbox
re-imports the module that defines a workflow, so it imports nothing else)."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows.incident import IncidentWorkflow
    from contracts.incidents import IncidentInput, IncidentResult


@workflow.defn(name="IncidentWorkflow")
class PageFirst(IncidentWorkflow):
    """Pages before taking the immediate action: a reordering a running incident must not see."""

    @workflow.run
    async def run(self, inp: IncidentInput) -> IncidentResult:
        await self._page_opened(inp)
        await self._take_actions("immediate")
        return IncidentResult(incident_id=self.incident_id, rule=inp.rule, status="x")
