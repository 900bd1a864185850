"""Replay the recorded canary histories (tests/histories/canary_*.json) against today's code.

They cover: a Phase 3 run passing its four stages with the Full Open gate promoted (dev server,
simulator), an automatic rollback after 3 failed checks in a row, extend + promote + abort by a
risk manager, a pause by a rollback workflow's signal, a Phase 2 risk-calc precision rollback,
a run that ends in continue-as-new (the state handed over), and a CLI-started pass and rollback
whose worker moved the phase's id counter (the canary-seq-by-worker patch). Record again with
RECORD_HISTORIES=1 only for a new branch; a change that replays differently needs
`workflow.patched`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workflows.canary import CanaryWorkflow
from workflows.canary_models import CanaryInput

HISTORIES = sorted((Path(__file__).parent / "histories").glob("canary_*.json"))
REQUIRED = ("canary_phase3_passed", "canary_phase3_rolled_back", "canary_phase3_extended_promoted_aborted",
            "canary_phase3_paused_by_rollback", "canary_phase2_precision_rolled_back",
            "canary_phase3_continued_as_new", "canary_phase3_passed_seq_by_worker",
            "canary_phase3_rolled_back_seq_by_worker")


def _history(path: Path) -> WorkflowHistory:
    # the workflow id it ran under: the file's name without its version suffix (_v1, _pre_outbox: the
    # same branch recorded before a patch), since ids derived from it (a child's) are commands
    return WorkflowHistory.from_json(re.sub(r"_(v\d+|pre_outbox)$", "", path.stem), json.loads(path.read_text()))


def test_every_canary_branch_has_a_history():
    assert set(REQUIRED) <= {p.stem for p in HISTORIES}


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_canary_history_replays(path):
    await Replayer(workflows=[CanaryWorkflow], data_converter=pydantic_data_converter).replay_workflow(_history(path))


@workflow.defn(name="CanaryWorkflow")
class CanaryWithoutSnapshot(CanaryWorkflow):
    """A deliberate nondeterministic change: the first stage is applied before Phase 1 is snapshotted."""

    @workflow.run
    async def run(self, inp: CanaryInput):
        await self.r.load_roster()
        await self._apply_stage(self.plan.stages[0])
        return await super().run(inp)


async def test_a_nondeterministic_change_is_caught():
    path = next(p for p in HISTORIES if p.stem == "canary_phase3_rolled_back")
    res = await Replayer(workflows=[CanaryWithoutSnapshot], data_converter=pydantic_data_converter).replay_workflow(
        _history(path), raise_on_replay_failure=False)
    assert res.replay_failure is not None
