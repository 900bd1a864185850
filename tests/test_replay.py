"""Replay every recorded history in tests/histories/ against today's workflow code.

A running workflow that started on older code must never break: a change to workflow logic that
would replay differently needs `workflow.patched`. Re-record with RECORD_HISTORIES=1 only for a
new branch, never to make this test pass.
"""

from __future__ import annotations

import base64
import json
import re

from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from tests.support import histories_io
from workflows.registry import WORKFLOWS

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))
SIGNED = sorted((Path(__file__).parent / "histories" / "signed").glob("*.json"))


def _history(path: Path) -> WorkflowHistory:
    # Temporal's own export format; the id it ran under is in its started event (tests/support/histories_io.py)
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
                     "rollback_critical_cross_restored_pre_outbox", "degradation_level_2_restored_pre_outbox",
                     # patches "snapshot-before-own-write", "undo-failures-paged", "restore-only-changes"
                     "rollback_crash_after_own_write_restored", "degradation_level_2_undo_refused_paged",
                     "degradation_level_1_restored_by_risk_manager",
                     "change_request_expired_before_pickup",  # patch "change-pickup-deadline"
                     "rollback_cancelled_in_temporal_at_confirm"):  # patch "cancel-handled"
        assert required in names


def _patch_ids() -> set[str]:
    """Every id workflows/ passes to `workflow.patched`, as a literal or a module constant."""
    src = {p: p.read_text() for p in (Path(__file__).parent.parent / "workflows").glob("*.py")}
    consts = dict(m for text in src.values() for m in re.findall(r'^([A-Z_]+) = "([^"]+)"', text, re.M))
    ids = set()
    for text in src.values():
        for arg in re.findall(r"workflow\.(?:patched|deprecate_patch)\(([^)]+)\)", text):
            ids.add(arg.strip('"') if arg.startswith('"') else consts[arg])
    return ids


def _markers(path: Path) -> set[str]:
    out = set()
    for ev in json.loads(path.read_text())["events"]:
        if ev["eventType"] == "EVENT_TYPE_MARKER_RECORDED":
            for pl in ev["markerRecordedEventAttributes"]["details"].get("patch-data", {}).get("payloads", []):
                out.add(json.loads(base64.b64decode(pl["data"]))["id"])
    return out


def test_every_patch_has_a_recorded_history_that_takes_its_new_branch():
    """A `workflow.patched` branch no history has taken is a branch no replay test guards: each patch id
    in workflows/ is marked in at least one recorded history (its new code ran there)."""
    ids = _patch_ids()
    assert {"pager-outbox", "snapshot-before-own-write", "undo-failures-paged", "restore-only-changes",
            "change-pickup-deadline", "cancel-handled"} <= ids
    seen = set().union(*(_markers(p) for p in HISTORIES + SIGNED))
    assert ids - seen == set(), f"patches with no recorded history taking them: {sorted(ids - seen)}"


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
