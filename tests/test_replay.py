"""Replay every recorded history in tests/histories/ against today's workflow code.

A running workflow that started on older code must never break: a change to workflow logic that
would replay differently needs `workflow.patched`. Re-record with RECORD_HISTORIES=1 only for a
new branch, never to make this test pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from tests import histories_io
from workflows.registry import WORKFLOWS

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def _history(path: Path) -> WorkflowHistory:
    # Temporal's own export format; the id it ran under is in its started event (tests/histories_io.py)
    return histories_io.load(path)


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_history_replays(path):
    replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)
    await replayer.replay_workflow(_history(path))


def test_there_are_histories_for_each_branch():
    names = {p.stem for p in HISTORIES}
    for required in ("rollback_critical_cross_restored", "rollback_data_window_cancelled",
                     "rollback_non_critical_monitored", "rollback_breach_escalated_to_level_3",
                     "rollback_hl_down_level_2", "rollback_hl_down_level_2_restored", "rollback_restore_blocked",
                     "degradation_level_2_restored", "pager_storm", "pager_reroute",
                     # before patch "pager-outbox": workflows that started on the direct paging path
                     "rollback_critical_cross_restored_pre_outbox", "degradation_level_2_restored_pre_outbox"):
        assert required in names


@workflow.defn(name="RollbackWorkflow")
class ReorderedRollback:
    """The same workflow type with a deliberate nondeterministic change: it skips the roster read."""

    @workflow.run
    async def run(self, inp: dict) -> dict:
        await workflow.sleep(1)
        return {}


async def test_a_nondeterministic_change_is_caught():
    path = next(p for p in HISTORIES if p.stem == "rollback_critical_cross_restored")
    replayer = Replayer(workflows=[ReorderedRollback], data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(_history(path), raise_on_replay_failure=False)
    assert result.replay_failure is not None
    assert "Nondeterminism" in type(result.replay_failure).__name__ or "nondetermin" in str(result.replay_failure).lower()
