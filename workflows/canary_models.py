"""CanaryWorkflow's input, carried state, decisions, status view and result (pure pydantic, no I/O)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from contracts.changes import BreakGlass, ChangeSetResult, Snapshot
from manual import approvals
from manual.canary import CanaryPlan, Phase
from core.identity import Proof
from contracts.progress import CheckResult, Decision, Progress
from workflows.runner import ObserveClock

# Continue-as-new once a run's history reaches this many events (checked after each health check):
# a run's history stays under HISTORY_LIMIT + ~20 events whatever the plan's length.
HISTORY_LIMIT = 2000
KEEP_RECORDS = 40  # step records carried to the next run (older ones are in the previous run's history)
KEEP_DECISIONS = 50
START_APPROVAL = "start_approval"  # the step that waits for the second approval of a start


def canary_workflow_id(phase: str, n: int) -> str:
    return f"canary-{phase}-{n}"


class CanaryDecision(Decision):
    """A human decision on a canary; `extend` also says by how much."""

    extend_by: timedelta | None = None


class StageRecord(BaseModel):
    stage: int
    name: str
    started_at: datetime
    ended_at: datetime | None = None
    outcome: str | None = None  # passed | promoted | rolled_back | aborted
    detail: str = ""
    applied: ChangeSetResult | None = None


class CanaryState(BaseModel):
    """Everything a run hands to the next one at continue-as-new."""

    runs: int = 1
    started_at: datetime | None = None
    snapshot: Snapshot | None = None  # "Phase 1": the configuration before the canary
    config: dict[str, Any] = {}  # what the canary expects in force (snapshot + profiles applied)
    set_by_canary: dict[str, Any] = {}  # the last value this canary wrote, per switch
    stage: int = 0  # index into plan.stages
    part: Literal["apply", "observe", "gate", "done"] = "apply"
    clock: ObserveClock | None = None
    stages: list[StageRecord] = []
    paused: bool = False
    paused_by: str | None = None
    pause_reason: str = ""
    paused_since: datetime | None = None
    paused_for_rollback: str | None = None  # the rollback workflow that paused it (breaches not acted on)
    gate_since: datetime | None = None
    promoted_by: str | None = None
    abort: CanaryDecision | None = None
    extensions: list[str] = []
    progress: Progress | None = None
    roster: dict[str, str] = {}
    # The signed start (signing on): who approved it, a break-glass, the signed requests behind the
    # change sets and every nonce accepted so far. Carried, so the change sets of every later run go
    # out under the approval verified in run 1 and a decision replayed into a later run is refused.
    start_approvers: list[str] = []
    break_glass: BreakGlass | None = None
    proofs: list[Proof] = []
    used_nonces: list[str] = []


class CanaryInput(BaseModel):
    phase: Phase
    requested_by: str = Field(min_length=1, max_length=64)
    reason: str = Field(default="", max_length=2000)
    plan: CanaryPlan | None = None  # None: the manual's plan for the phase, scaled by time_scale
    time_scale: float = Field(default=1.0, ge=1.0, le=10_000_000)
    drill: bool = False
    history_limit: int = Field(default=HISTORY_LIMIT, ge=100, le=40_000)
    # Signing on: a plan under the two-person rule waits this long for a second owner's approval.
    approval_timeout: timedelta = Field(default=approvals.APPROVAL_TIMEOUT, gt=timedelta(0), le=timedelta(days=7))
    break_glass: str | None = Field(default=None, max_length=2000)  # a super admin starts it alone: the reason
    proof: Proof | None = None  # the requester's signed start ("canary.start", bound to the workflow id)
    # n of `canary-<phase>-<n>`, set by `canary start`: the worker moves the phase's counter to it
    seq: int | None = Field(default=None, ge=1)
    carry: CanaryState | None = None  # set by continue-as-new only

    def signed_values(self) -> dict[str, Any]:
        """The start's content as signed (the proof itself and the carried state aside)."""
        return self.model_dump(mode="json", exclude_defaults=True, exclude={"proof", "carry"})


class CanaryStatus(BaseModel):
    """The `status` query: where the canary is and why it waits."""

    workflow_id: str
    phase: str
    title: str
    # awaiting_approval | running | paused | waiting_gate | rolling_back | passed | rolled_back | aborted | refused
    # | not_started (no second approval in time) | failed | rollback_incomplete
    status: str
    run: int
    stage: int | None = None  # 1-based
    stage_name: str | None = None
    stage_days: str | None = None
    stages: int
    part: str
    stage_duration: timedelta | None = None
    observed: timedelta | None = None
    time_left: timedelta | None = None
    check_interval: timedelta | None = None
    next_check_at: datetime | None = None
    failed_in_a_row: int = 0
    paused: bool = False
    paused_by: str | None = None
    pause_reason: str = ""
    waiting_for: str = ""
    recent_checks: list[CheckResult] = []
    stage_log: list[StageRecord] = []
    extensions: list[str] = []
    time_scale: float = 1.0
    result: str | None = None
    detail: str = ""
    drill: bool = False  # a practice run: every view says [DRILL]

    def timer_near(self, now: datetime, margin: timedelta = timedelta(minutes=1)) -> bool:
        """Whether the next health check or the stage's end falls within `margin` of `now`."""
        soon = [self.next_check_at, now + self.time_left if self.time_left is not None and not self.paused else None]
        return any(abs(t - now) < margin for t in soon if t is not None)


class CanaryResult(BaseModel):
    workflow_id: str
    phase: str
    status: str  # passed | rolled_back | aborted | refused | not_started | failed | rollback_incomplete
    detail: str = ""
    stages: list[StageRecord] = []
    applied: list[ChangeSetResult] = []
    runs: int = 1
