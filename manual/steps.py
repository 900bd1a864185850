"""The one step vocabulary: rollback, degradation and canary plans are lists of these.

Like Argo Rollouts' canary `steps:`, each step is a tagged union member with exactly one kind,
validated when the plan is built (sane ranges, one kind per step), and interpreted by one small
piece of workflow code (workflows/runner.py).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from manual import switches
from contracts.progress import Exit
from contracts.roles import Role


class _Step(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(min_length=1, max_length=120)


class HealthCheck(BaseModel):
    """One pass/fail rule over a health snapshot field (a number, or the max over a per-symbol map)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    metric: str
    op: Literal["<=", "<", ">=", ">", "=="]
    threshold: float | bool
    # Read the threshold from a switch instead (e.g. exposure cap), when set: threshold = factor x value
    # (factor -1: daily P&L >= -daily_net_loss_limit).
    threshold_switch: str | None = None
    threshold_factor: float = 1.0
    # Trip on its own after this many failures of this check in a row (1: zero tolerance); the step's
    # `consecutive` still counts failed checks of any kind.
    consecutive: int | None = Field(default=None, ge=1, le=100)
    why: str = ""

    @model_validator(mode="after")
    def _known(self) -> "HealthCheck":
        if self.threshold_switch is not None:
            try:
                switches.get(self.threshold_switch)
            except switches.UnknownSwitch as e:  # a KeyError: pydantic would not report it as invalid
                raise ValueError(str(e)) from None
        return self


class ChecklistItem(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    id: Literal["snapshot", "requester_role", "hl_health", "notify", "exposure", "pause_canaries"]
    title: str
    why: str
    blocking: bool  # a failure stops the rollback (else it is recorded and the rollback goes on)


class Checklist(_Step):
    kind: Literal["checklist"] = "checklist"
    items: tuple[ChecklistItem, ...] = Field(min_length=1)
    # Critical path: the flip must not wait. Health reads get this timeout; chat goes out in parallel.
    health_timeout: timedelta = timedelta(milliseconds=300)
    forcing_hl: bool = False  # the change set forces HL_MODE: HL must be up


class ApplySwitches(_Step):
    """One change set, one etcd transaction. Either literal `changes` or `restore` the snapshot."""

    kind: Literal["apply_switches"] = "apply_switches"
    changes: dict[str, Any] = {}
    restore: bool = False
    overrides: dict[str, Any] = {}  # applied on top of a restore (e.g. betting_traffic_pct=5)
    authority: Literal["preapproved", "plan", "owner"] = "preapproved"
    reason: str
    verify_applied: bool = True  # wait until the trading core reports the new revision applied
    verify_timeout: timedelta = timedelta(seconds=10)

    @model_validator(mode="after")
    def _one_source(self) -> "ApplySwitches":
        if bool(self.changes) == self.restore:
            raise ValueError(f"step {self.name!r}: give either changes or restore=true, not both or neither")
        for k, v in {**self.changes, **self.overrides}.items():
            try:
                switches.get(k).parse(v)
            except switches.UnknownSwitch as e:
                raise ValueError(f"step {self.name!r}: {e}") from None
        return self


class CoreActions(_Step):
    """Trading-core actions (POST /v1/actions/<name>), each idempotent by workflow + step."""

    kind: Literal["core_actions"] = "core_actions"
    actions: tuple[tuple[str, dict[str, Any]], ...] = Field(min_length=1)


class Observe(_Step):
    """Read health every `interval` for `duration`; `consecutive` breaches in a row trigger `on_breach`."""

    kind: Literal["observe"] = "observe"
    duration: timedelta
    interval: timedelta
    checks: tuple[HealthCheck, ...] = ()
    consecutive: int = Field(default=3, ge=1, le=100)
    on_breach: Literal["escalate", "rollback", "fail", "record"] = "record"
    stop_on_escalate: bool = False  # a human `escalate` during observation ends it (non-critical)
    # Extra reads merged into the health snapshot before the checks: "exposure_precision" recomputes the
    # exposure from GET /v1/risk/exposure positions and adds `exposure_mismatches` (symbols that differ).
    probes: tuple[Literal["exposure_precision"], ...] = ()
    # Read health as a local activity: 6 history events per check instead of 11 (canaries check for days).
    local_reads: bool = False
    # A health metric that must read > 0 at least once: live traffic on the observed path (a 5% restore
    # observes nothing while orders are paused). None seen: "no_traffic"; not reported: said and paged.
    traffic: str | None = None

    @model_validator(mode="after")
    def _ranges(self) -> "Observe":
        if self.duration <= timedelta(0) or self.interval <= timedelta(0):
            raise ValueError(f"step {self.name!r}: duration and interval must be positive")
        if self.interval > self.duration:
            raise ValueError(f"step {self.name!r}: interval {self.interval} is longer than duration {self.duration}")
        return self


class AwaitConfirmation(_Step):
    """Wait for a human decision of kind `expects`, from an operator of at least `min_role`."""

    kind: Literal["await"] = "await"
    expects: Literal["confirm", "proceed_or_cancel", "fix", "escalate", "level_choice", "promote"]
    min_role: Role = Role.ON_CALL
    timeout: timedelta
    on_timeout: Literal["repage_and_wait", "proceed", "fail"] = "repage_and_wait"
    prompt: str
    approvals: int = Field(default=1, ge=1, le=2)  # 2: two different operators (two-person rule)
    no_break_glass: str = ""  # why a break-glass decision is refused at this step (empty: the gate's rule)
    exits: tuple[Exit, ...] = ()  # ways out other than the answer (withdraw, stay): contracts.progress.Exit


WITHDRAW = Exit(kind="withdraw", means="end it here: what it changed stays as it is, said and paged; nothing more "
                                       "is applied (`rollbackctl withdraw ID --as OP --reason ...`)")


def stay(role: Role, level: str) -> Exit:
    """The exit of a proposed escalation: stay at `level` and go on to its confirmation."""
    return Exit(kind="stay", min_role=role.value,
                means=f"stay at {level} and go on to its confirmation (`rollbackctl stay ID --as OP --reason ...`)")


class Notify(_Step):
    kind: Literal["notify"] = "notify"
    text: str
    page: bool = False
    severity: Literal["critical", "error", "warning", "info"] = "warning"
    event_action: Literal["trigger", "acknowledge", "resolve"] = "trigger"


Step = Annotated[
    Union[Checklist, ApplySwitches, CoreActions, Observe, AwaitConfirmation, Notify],
    Field(discriminator="kind"),
]


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    steps: tuple[Step, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> "Plan":
        seen: set[str] = set()
        for s in self.steps:
            if s.name in seen:
                raise ValueError(f"plan {self.name!r}: step name {s.name!r} used twice")
            seen.add(s.name)
        return self
