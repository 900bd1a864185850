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
