"""Fleet receipts: has every live consumer applied a change? (the `switch.wait_fleet` activity).

Each consumer instance keeps `<prefix>consumers/<id>` under a lease (core/watcher.py: Receipt) with the
store revision it has applied. A change at revision N counts as applied when every live registered
consumer reports a revision >= N; a consumer that has not within the change's latency class (manual:
<1 s critical, <5 s otherwise) is a straggler, paged by the workflow that waited.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

FLEET_ACTIVITY = "switch.wait_fleet"


class FleetWaitInput(BaseModel):
    revision: int = Field(ge=0)
    class_s: float = Field(gt=0, le=60)  # the latency class: applied later than this is a straggler
    timeout_s: float = Field(gt=0, le=600)  # how long to keep waiting for stragglers (>= class_s)


class Straggler(BaseModel):
    id: str
    applied_revision: int  # the last revision it reported
    applied_after_s: float | None = None  # applied late, after this long; None: not applied when the wait ended
    seen_s_ago: float | None = None  # its receipt's age when the wait ended (a wedged instance keeps refreshing)


class FleetApplied(BaseModel):
    revision: int
    class_s: float
    consumers: list[str] = []  # every live consumer the wait counted
    on_time: dict[str, float] = {}  # id -> seconds to apply (0 when it already had)
    stragglers: list[Straggler] = []  # applied late or not at all
    dropped: list[str] = []  # their lease ended during the wait (a dead instance drops out)
    waited_s: float = 0.0

    @property
    def complete(self) -> bool:
        return all(s.applied_after_s is not None for s in self.stragglers)

    def summary(self) -> str:
        """One line: what the fleet did with the revision."""
        n = len(self.consumers)
        if n == 0:
            return f"revision {self.revision}: no consumer registered, nothing confirmed it applied"
        late = [s for s in self.stragglers if s.applied_after_s is not None]
        missing = [s for s in self.stragglers if s.applied_after_s is None]
        parts = [f"revision {self.revision} applied by {n - len(self.stragglers)}/{n} consumers within "
                 f"{self.class_s:g}s"]
        if late:
            parts.append("late: " + ", ".join(f"{s.id} ({s.applied_after_s:.2f}s)" for s in late))
        if missing:
            parts.append(f"NOT APPLIED after {self.waited_s:.1f}s: "
                         + ", ".join(f"{s.id} (at revision {s.applied_revision})" for s in missing))
        if self.dropped:
            parts.append("dropped out (lease ended): " + ", ".join(self.dropped))
        return "; ".join(parts)


def receipt_rows(receipts: list[dict], matrix_revision: int, now: float) -> list[dict]:
    """Each live receipt, by id, with `behind` (below the last switch change: it acts on old values) and
    `seen_s_ago` (its age): what `consumers`, `status`, the console and the metrics show."""
    return [{**r, "behind": int(r.get("applied_revision", 0)) < matrix_revision,
             "seen_s_ago": round(now - float(r.get("at", now)), 1)}
            for r in sorted(receipts, key=lambda r: str(r.get("id")))]
