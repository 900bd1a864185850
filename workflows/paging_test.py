"""PagingTestWorkflow: `rollbackctl paging test [--level N]` — a test trigger and its resolve to each
configured escalation level, on both channels, through the same pager and activities every workflow
uses, with what each channel answered.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pydantic import BaseModel, Field
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from contracts.paging import Channel, Delivery
    from manual import escalation
    from workflows.alerting import PagingHandlers
    from workflows.runner import Runner

WAIT = timedelta(seconds=90)


class PagingTestInput(BaseModel):
    levels: list[int] = Field(default_factory=lambda: [lv.level for lv in escalation.LEVELS], min_length=1)
    requested_by: str = "rollbackctl"


class ChannelResult(BaseModel):
    ok: bool
    detail: str


class LevelResult(BaseModel):
    level: int
    name: str
    pagerduty: ChannelResult
    slack: ChannelResult
    resolve: ChannelResult


class PagingTestResult(BaseModel):
    workflow_id: str
    ok: bool
    levels: list[LevelResult]


@workflow.defn(name="PagingTestWorkflow")
class PagingTestWorkflow(PagingHandlers):
    @workflow.init
    def __init__(self, inp: PagingTestInput) -> None:
        wid = workflow.info().workflow_id
        self.r = Runner(wid, "paging_test", requested_by=inp.requested_by, drill=False, incident=wid)
        self.r.outbox = True
        self.seen: list[Delivery] = []
        self.r.on_delivery = self.seen.append

    @workflow.query
    def deliveries(self) -> list[Delivery]:
        return self.seen

    def _result(self, level: int, channel: Channel, action: str) -> ChannelResult | None:
        for d in self.seen:
            if d.level == level and d.channel is channel and d.event_action == action:
                return ChannelResult(ok=d.ok, detail=(f"accepted ({d.http_status})" if d.ok else
                                                      f"FAILED: {d.error}" + (f"; rerouted to {', '.join(d.rerouted)}"
                                                                              if d.rerouted else "")))
        return None

    @workflow.run
    async def run(self, inp: PagingTestInput) -> PagingTestResult:
        levels = sorted({min(max(lv, 1), escalation.TOP) for lv in inp.levels})
        await asyncio.gather(*(self.r.notify(
            f"rollbackctl paging test, level {lv} ({escalation.get(lv).name}): requested by {inp.requested_by}. "
            "Nothing to do; it resolves itself.", page=True, severity="info", level=lv, kind="paging_test")
            for lv in levels))

        def answered() -> bool:
            return all(self._result(lv, ch, "trigger") is not None for lv in levels
                       for ch in (Channel.PAGERDUTY, Channel.SLACK))

        try:
            await workflow.wait_condition(answered, timeout=WAIT)
        except asyncio.TimeoutError:
            pass
        await self.r.notify(f"rollbackctl paging test by {inp.requested_by}: done", page=True, severity="info",
                            event_action="resolve", kind="paging_test")
        try:
            await workflow.wait_condition(
                lambda: all(self._result(lv, Channel.PAGERDUTY, "resolve") is not None for lv in levels
                            if self._result(lv, Channel.PAGERDUTY, "trigger") and
                            self._result(lv, Channel.PAGERDUTY, "trigger").ok), timeout=WAIT)
        except asyncio.TimeoutError:
            pass
        await self.r.drain()
        await workflow.wait_condition(workflow.all_handlers_finished)
        none = ChannelResult(ok=False, detail=f"no answer within {WAIT}")
        out = []
        for lv in levels:
            pd = self._result(lv, Channel.PAGERDUTY, "trigger") or none
            out.append(LevelResult(
                level=lv, name=escalation.get(lv).name, pagerduty=pd,
                slack=self._result(lv, Channel.SLACK, "trigger") or none,
                resolve=self._result(lv, Channel.PAGERDUTY, "resolve")
                or ChannelResult(ok=not pd.ok, detail="not sent: the trigger failed" if not pd.ok else none.detail)))
        ok = all(x.pagerduty.ok and x.slack.ok and x.resolve.ok for x in out)
        return PagingTestResult(workflow_id=self.r.wid, ok=ok, levels=out)
