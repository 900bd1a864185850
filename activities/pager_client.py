"""Reaching the pager workflow (workflows/pager.py) from activities and services.

`paging.submit` hands a workflow's notices to the pager of its own task queue by signal-with-start:
a pager that is not running (first use, terminated by someone) is started again with the worker's
budgets, so a page is never refused for want of a pager. The PagerDuty webhook receiver reaches the
same pager with `signal_pager`.
"""

from __future__ import annotations

from temporalio import activity
from temporalio.client import Client

from core.settings import main_queue_of
from contracts.paging import (
    ALERT_EVENT_SIGNAL,
    PAGER_WORKFLOW,
    SUBMIT_SIGNAL,
    AlertEvent,
    Notice,
    PagerInput,
    PagerLimits,
    SubmitResult,
    pager_workflow_id,
)


async def signal_pager(client: Client, task_queue: str, signal: str, arg, limits: PagerLimits | None = None) -> str:
    """Signal the pager of `task_queue`, starting it if it is not running; returns its workflow id."""
    wid = pager_workflow_id(task_queue)
    await client.start_workflow(PAGER_WORKFLOW, PagerInput(limits=limits or PagerLimits()), id=wid,
                                task_queue=task_queue, start_signal=signal, start_signal_args=[arg])
    return wid


async def forward_alert_event(client: Client, task_queue: str, ev: AlertEvent) -> str:
    return await signal_pager(client, task_queue, ALERT_EVENT_SIGNAL, ev)


class PagerClient:
    """The `paging.submit` activity (the client and task queue default to the worker's own)."""

    def __init__(self, limits: PagerLimits | None = None, client: Client | None = None):
        self.limits = limits or PagerLimits()
        self.client = client

    @activity.defn(name="paging.submit")
    async def submit(self, notices: list[Notice]) -> SubmitResult:
        client = self.client or activity.client()
        # the critical lane's workflows page through the main queue's pager: one pager keeps PagerDuty's and
        # Slack's budgets, and the webhook receiver forwards acknowledgements to it
        wid = await signal_pager(client, main_queue_of(activity.info().task_queue), SUBMIT_SIGNAL, notices,
                                 self.limits)
        return SubmitResult(accepted=len(notices), pager=wid)
