"""Replay every recorded history against today's workflow code: the one module for replay tests.

tests/histories/*.json (rollbacks, degradations, canaries, incidents, change requests, the pager) and
tests/histories/signed/*.json (signed runs) are in Temporal's own export format; each replays under the
workflow id in its started event (tests/support/histories_io.py), as a history downloaded from
production would. A running workflow that started on older code must never break: a change to workflow
logic that would replay differently needs `workflow.patched`. Re-record (RECORD_HISTORIES=1, see
tests/support/wf_helpers.save_history) only for a new branch, never to make this test pass.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from tests.support import histories_io, patch_ids
from tests.support.histories_io import REQUIRED
from tests.support.nondeterministic import CanaryWithoutSnapshot, PageFirst, ReorderedRollback
from workflows.registry import WORKFLOWS

DIR = Path(__file__).parent / "histories"
HISTORIES = sorted(DIR.glob("*.json"))
SIGNED = sorted((DIR / "signed").glob("*.json"))
ALL = HISTORIES + SIGNED

def _name(p: Path) -> str:
    return f"signed/{p.stem}" if p.parent.name == "signed" else p.stem


def _path(name: str) -> Path:
    return DIR / f"{name}.json"


def _replayer(*workflows) -> Replayer:
    return Replayer(workflows=list(workflows) or WORKFLOWS, data_converter=pydantic_data_converter)


@pytest.mark.parametrize("path", ALL, ids=[_name(p) for p in ALL])
async def test_history_replays(path):
    await _replayer().replay_workflow(histories_io.load(path))


@pytest.mark.parametrize("kind", REQUIRED)
def test_every_branch_has_a_history(kind):
    missing = set(REQUIRED[kind]) - {_name(p) for p in ALL}
    assert not missing, f"{kind} branches with no recorded history: {sorted(missing)}"


def _patch_ids() -> set[str]:
    """Every id workflows/ passes to `workflow.patched`, as a literal or a module constant."""
    return {p for _, p in patch_ids.asked()}


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
    seen = set().union(*(_markers(p) for p in ALL))
    assert ids - seen == set(), f"patches with no recorded history taking them: {sorted(ids - seen)}"


@pytest.mark.parametrize("changed, name, says", [
    (ReorderedRollback, "rollback_critical_cross_restored", "ondetermin"),  # skips the roster read
    # applies stage 1 before the snapshot: the SDK hands the snapshot's recorded result to the apply
    # (same command kind, matched by sequence), which cannot decode it
    (CanaryWithoutSnapshot, "canary_phase3_rolled_back", "validation errors for ChangeSetResult"),
    (PageFirst, "incident_hot_wallet_acked_auto_recovered", "ondetermin"),  # pages before the immediate action
], ids=["rollback", "canary", "incident"])
async def test_a_nondeterministic_change_is_caught(changed, name, says):
    res = await _replayer(changed).replay_workflow(histories_io.load(_path(name)), raise_on_replay_failure=False)
    assert res.replay_failure is not None
    assert says in f"{type(res.replay_failure).__name__} {res.replay_failure}"


@pytest.mark.parametrize("name, other", [("signed/degradation_level_3_two_person", "degrade-3-someone-else"),
                                         ("signed/canary_phase3_two_person_start", "canary-phase3-someone-else")])
async def test_a_signed_start_replayed_under_another_workflow_id_diverges(name, other):
    """A signed decision is bound to its workflow id: replayed under another id, the validators' binding
    (part of the history's logic) makes it diverge."""
    res = await _replayer().replay_workflow(histories_io.load(_path(name), other), raise_on_replay_failure=False)
    assert res.replay_failure is not None
