"""A test workflow standing for one that pages: it collects what the pager tells it (its own module: the
workflow sandbox re-imports it, so it imports nothing with side effects)."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from contracts.paging import AlertEvent, Delivery


@workflow.defn(name="PagingCollector")
class Collector:
    """Stands for a workflow that pages: collects what the pager tells it, ends when it has heard `n`."""

    def __init__(self) -> None:
        self.got: list[Delivery] = []
        self.events: list[AlertEvent] = []

    @workflow.signal(name="paging_outcome")
    def outcome(self, ds: list[Delivery]) -> None:
        self.got += ds

    @workflow.signal(name="paging_event")
    def event(self, ev: AlertEvent) -> None:
        self.events.append(ev)

    @workflow.query
    def heard(self) -> int:
        return len(self.got)

    @workflow.query
    def heard_events(self) -> list[AlertEvent]:
        return self.events

    @workflow.run
    async def run(self, n: int) -> list[Delivery]:
        await workflow.wait_condition(lambda: len(self.got) >= n)
        return self.got
