"""Replay the recorded histories of signed runs (tests/histories/signed/) against today's code.

Kept apart from tests/histories/*.json: a signed decision is bound to its workflow id, so these are
replayed under the id they ran with (their started event's workflowId, as Temporal exports it), and
replaying one under another id must diverge (the validators' binding is part of the history's logic)."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from tests.support import histories_io
from workflows.registry import WORKFLOWS

HISTORIES = sorted((Path(__file__).parent / "histories" / "signed").glob("*.json"))


def _history(path: Path, workflow_id: str | None = None) -> WorkflowHistory:
    return histories_io.load(path, workflow_id)


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_signed_history_replays(path):
    await Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter).replay_workflow(_history(path))


def test_there_are_signed_histories():
    assert {p.stem for p in HISTORIES} >= {"degradation_level_3_two_person", "rollback_two_person_restore",
                                           "canary_phase3_two_person_start", "canary_phase3_two_person_last_run"}


@pytest.mark.parametrize("name, other", [("degradation_level_3_two_person", "degrade-3-someone-else"),
                                         ("canary_phase3_two_person_start", "canary-phase3-someone-else")])
async def test_a_signed_start_replayed_under_another_workflow_id_diverges(name, other):
    path = next(p for p in HISTORIES if p.stem == name)
    replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(_history(path, other), raise_on_replay_failure=False)
    assert result.replay_failure is not None
