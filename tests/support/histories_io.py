"""Recorded workflow histories in the format Temporal itself exports, and only that.

`temporal workflow show --workflow-id ID --output json` (and the Web UI's download, and
`WorkflowHistory.to_json()`) write `{"events": [...]}`; the id the workflow ran under is the
`workflowId` of its first event's `workflowExecutionStartedEventAttributes` (servers fill it in; the
time-skipping test server leaves it out, so `export` adds it there). `load` takes the id from that
field, so a history downloaded from production replays here as is, with no side file and no
renaming: a signed decision is bound to its workflow id, and ids derived from it (a child's) are
commands, so a replay under any other id would diverge.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from temporalio.client import WorkflowHistory

STARTED = "workflowExecutionStartedEventAttributes"


def workflow_id_of(data: dict[str, Any], where: str = "history") -> str:
    events = data.get("events") or []
    wid = (events[0].get(STARTED) or {}).get("workflowId") if events else None
    if not wid:
        raise ValueError(f"{where}: the first event is not a WorkflowExecutionStarted event carrying workflowId; "
                         "export it with `temporal workflow show --output json`")
    return wid


def load(path: Path, workflow_id: str | None = None) -> WorkflowHistory:
    """A history file as Temporal exports it; `workflow_id` replays it under another id (to show divergence)."""
    data = json.loads(path.read_text())
    return WorkflowHistory.from_json(workflow_id or workflow_id_of(data, str(path)), data)


def export(hist: WorkflowHistory) -> str:
    """Temporal's own JSON for `hist`, with the started event's workflowId filled in where the server left it out."""
    data = json.loads(hist.to_json())
    data["events"][0].setdefault(STARTED, {}).setdefault("workflowId", hist.workflow_id)
    workflow_id_of(data)
    return json.dumps(data)


# Each branch a running workflow may be on has a recorded history (a name: the workflow id it ran under,
# a suffix for the same branch recorded before a patch).
REQUIRED = {
    "rollback": ("rollback_critical_cross_restored", "rollback_data_window_cancelled",
                 "rollback_critical_cross_restored_patches_first",  # patch "patches-first"
                 "rollback_non_critical_monitored", "rollback_breach_escalated_to_level_3",
                 "rollback_hl_down_level_2", "rollback_hl_down_level_2_restored", "rollback_restore_blocked",
                 "rollback_crash_after_own_write_restored",  # patch "snapshot-before-own-write"
                 "rollback_cancelled_in_temporal_at_confirm",  # patch "cancel-handled"
                 "rollback_critical_cross_restored_pre_outbox",  # before patch "pager-outbox"
                 "rollback_breach_stayed_then_withdrawn", "rollback_full_system_withdrawn_by_starter",  # exits
                 "rollback_5pct_no_traffic_rolled_back_again"),  # patch "observe-needs-traffic"
    "degradation": ("degradation_level_2_restored", "degradation_level_2_restored_pre_outbox",
                    "degradation_level_2_restored_patches_first",  # patch "patches-first"
                    "degradation_level_2_undo_refused_paged",  # patch "undo-failures-paged"
                    "degradation_level_1_restored_by_risk_manager",  # patch "restore-only-changes"
                    "degradation_level_2_withdrawn_at_confirm",  # the withdraw exit
                    # patch "degradation-5pct-restore"
                    "degradation_level_1_restored_through_5pct", "degradation_level_1_5pct_restore_failed",
                    # patch "observe-needs-traffic"
                    "degradation_level_1_restored_through_5pct_traffic_seen", "degradation_level_1_5pct_no_traffic"),
    "pager": ("pager_storm", "pager_reroute"),
    "change request": ("change_request_expired_before_pickup",  # patch "change-pickup-deadline"
                       "change_request_expired_before_pickup_patches_first"),
    "emergency": ("emergency_acknowledged",),  # the follow-up of a move made while Temporal was down
    "canary": ("canary_phase3_passed", "canary_phase3_rolled_back", "canary_phase3_extended_promoted_aborted",
               "canary_phase3_paused_by_rollback", "canary_phase2_precision_rolled_back",
               "canary_phase3_continued_as_new", "canary_phase3_passed_seq_by_worker",
               "canary_phase3_rolled_back_seq_by_worker",
               "canary_phase3_passed_patches_first"),  # patch "patches-first", in every workflow below
    "incident": ("incident_hot_wallet_acked_auto_recovered", "incident_hl_margin_unacked_escalated",
                 "incident_hl_down_level_choice", "incident_asset_mismatch_rollback_child",
                 "incident_hedge_margin_undo_conflict", "incident_hl_refired_after_recovery"),
    "signed": ("signed/degradation_level_3_two_person", "signed/rollback_two_person_restore",
               "signed/canary_phase3_two_person_start", "signed/canary_phase3_two_person_last_run"),
}
