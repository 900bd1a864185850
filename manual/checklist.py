"""The Rollback Checklist (manual: "Before any rollback:", left blank there; filled here).

Each item says why it is there. For a critical rollback nothing on this list may delay the
flip: the snapshot comes from etcd (fast, local activity), chat goes out in parallel, the health
read has a tight timeout; an item that could not finish in time is recorded as skipped.
"""

from __future__ import annotations

from manual.steps import ChecklistItem

SNAPSHOT = ChecklistItem(
    id="snapshot", blocking=True, title="Snapshot every switch value and revision",
    why="Restore returns exactly here, and compare-and-swap detects anyone who changed a switch since.",
)
REQUESTER_ROLE = ChecklistItem(
    id="requester_role", blocking=True, title="Check the requester's role",
    why="On-call may trigger the manual's pre-approved moves; Level 3 needs a super admin.",
)
HL_HEALTH = ChecklistItem(
    id="hl_health", blocking=True, title="Check HL health before forcing HL_MODE",
    why="If Hyperliquid itself is down, HL_MODE strands every order: pause new orders, page, and let a "
        "human choose degradation level 2 or 3 instead.",
)
NOTIFY = ChecklistItem(
    id="notify", blocking=False, title="Notify the incident channel",
    why="Everyone trading or supporting users must know the platform is changing under them.",
)
EXPOSURE = ChecklistItem(
    id="exposure", blocking=False, title="Record open internal exposure per symbol",
    why="Turning internalization off leaves the book's open positions: the risk desk must hedge or unwind them.",
)
PAUSE_CANARIES = ChecklistItem(
    id="pause_canaries", blocking=False, title="Pause any running canary",
    why="Nothing may promote over a rollback.",
)

BEFORE_ROLLBACK = (SNAPSHOT, REQUESTER_ROLE, HL_HEALTH, NOTIFY, EXPOSURE, PAUSE_CANARIES)
BEFORE_DEGRADATION = (SNAPSHOT, REQUESTER_ROLE, NOTIFY, EXPOSURE, PAUSE_CANARIES)
