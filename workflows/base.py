"""What the interpreter's parts share (workflows/runner.py): patch names, retry policies, timing
constants, which decision answers which awaited step, and how a step fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from contracts import errors
    from contracts.progress import Decision

SWITCH_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    maximum_interval=timedelta(seconds=5),
    non_retryable_error_types=errors.SWITCH_NON_RETRYABLE,
)
CORE_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    maximum_interval=timedelta(seconds=5),
    non_retryable_error_types=["BadRequest", "SchemaViolation", "Maintenance", "Unauthorized"],
)
NOTIFY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30),
                           maximum_attempts=20, non_retryable_error_types=["BadRequest", "NotConfigured"])
SUBMIT_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=500), maximum_interval=timedelta(seconds=10),
                           maximum_attempts=10)
# Patch "pager-outbox": notices go through the pager workflow (budgets, storms, rerouting) and every alert
# a workflow opens is in its ledger, resolved or handed on when it ends.
PAGER_OUTBOX = "pager-outbox"
# patch: restore change sets carry only the switches they change; `fix` needs the role the store will demand
RESTORE_ONLY_CHANGES = "restore-only-changes"
# patch: a degradation's restore goes through the manual's 5% stage when internalization comes back
# (before: straight to the pre-incident values, unlike a rollback's restore and the runbook)
DEGRADATION_5PCT = "degradation-5pct-restore"
# patch: a workflow cancelled in Temporal says what stays and pages it before it ends CANCELED
CANCEL_HANDLED = "cancel-handled"
# patch: an observation with a `traffic` metric (a 5% restore) passes only if live traffic was seen
OBSERVE_TRAFFIC = "observe-needs-traffic"
# patch: every patch a run may ask about is decided in its first activation (patches_first)
PATCHES_FIRST = "patches-first"
# patch: an applied change set waits for the fleet's receipts (workflows/runner.py)
FLEET_RECEIPTS = "fleet-receipts"
# patch: a step waiting for a signed human decision re-reads the roster (workflows/gate.py)
ROSTER_REFRESH_PATCH = "roster-refresh"
# patch: a two-person step needs two distinct approvers (workflows/gate.py)
TWO_PERSON = "two-person"
# patch: a workflow's own earlier write is snapshotted before it writes again (workflows/gateway.py)
SNAPSHOT_OWN_WRITE = "snapshot-before-own-write"
# patch: an acknowledge or resolve of an alert still held in a storm waits for the storm's page and goes out
# under its key (workflows/alerting.py)
ACK_AFTER_STORM = "ack-after-storm"
# The patches the interpreter's shared parts ask about (workflows/runner.py, gate.py, gateway.py,
# alerting.py), whichever workflow runs them; each workflow adds its own when it calls patches_first.
RUNNER_PATCHES = (FLEET_RECEIPTS, ROSTER_REFRESH_PATCH, OBSERVE_TRAFFIC, TWO_PERSON, SNAPSHOT_OWN_WRITE,
                  ACK_AFTER_STORM)
CLOSE_WAIT = timedelta(seconds=30)  # at its end a workflow waits this long to hear its alerts resolved
# The longest a trading-core action is retried under one Idempotency-Key; the core must keep a
# performed action's answer at least this long (docs/trading-core-api.md; the simulator: 24 h).
CORE_ACTION_HORIZON = timedelta(hours=1)
MAX_CHECKS_KEPT = 20
# While a step waits for a human (signing on), the roster and its keys are re-read at least this often:
# a rotated or removed key stops working for approvals within this interval.
ROSTER_REFRESH = timedelta(seconds=30)

# Which Update kinds answer which awaited step.
ANSWERS: dict[str, tuple[str, ...]] = {
    "confirm": ("confirm",),
    "proceed_or_cancel": ("proceed", "cancel"),
    "fix": ("fix",),
    "escalate": ("escalate", "confirm"),
    "level_choice": ("escalate",),
    "promote": ("promote",),
}
EXITS = ("withdraw", "stay")  # ways out of a wait other than its answer, where the step offers them


def root_cause(e: BaseException) -> BaseException:
    """The ApplicationError behind an activity failure (local activities raise it unwrapped)."""
    while isinstance(e, ActivityError) and e.cause is not None:
        e = e.cause
    return e


class Withdrawn(Exception):
    """An operator took a wait's `withdraw` exit (workflows/gate.py raises it from run_await): the workflow
    ends "withdrawn", leaving what it changed as it is, said and paged (each workflow that offers the exit
    catches it in its run)."""

    def __init__(self, step: str, decision: Decision):
        super().__init__(f"withdrawn by {decision.actor} at step {step}: {decision.reason}")
        self.step = step
        self.decision = decision


class StepFailed(Exception):
    """A step could not complete; the workflow ends with this message. `kind`: the error kind when
    one is known (CONFLICT: someone changed a switch in between; a caller may read again)."""

    def __init__(self, message: str, kind: "errors.ErrorKind | None" = None):
        super().__init__(message)
        self.kind = kind

    @property
    def conflict(self) -> bool:
        return self.kind is errors.ErrorKind.CONFLICT


@dataclass(frozen=True)
class ActionOutcome:
    """What one trading-core action of a CoreActions step came to (str(): the line shown and logged)."""

    action: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def __str__(self) -> str:
        return self.action if self.ok else f"{self.action} FAILED ({self.error})"


class StartRefused(StepFailed):
    """The requester's signed start was refused (signing on): nothing was changed."""


def patches_first(*own: str) -> None:
    """Decide, in the run's first activation, every patch the run may later ask about (a new run: each
    True, as it would answer later). Call it at the top of `run`, before anything is awaited.

    Why: a patch first asked right after a local activity's result can be answered differently on replay.
    Temporal's core may record a local activity's marker in one workflow task and the commands that follow
    its result in the next, and it tells a replay of a patch only when replay reaches the task that holds
    the patch's marker (sdk-core, worker/workflow/machines/workflow_machines.rs: "Scan through to the next
    WFT, searching for any patch / la markers"). So replay answered False where the run had answered True:
    "Nondeterminism error: Non-deprecated patch marker encountered for change canary-seq-by-worker" on
    every replay of that canary (a query of the ended run, a worker restart). Asked here, before any local
    activity, every marker is in the first workflow task; later calls return the decision remembered (the
    SDK memoizes `patched` per id). Runs recorded before PATCHES_FIRST keep their patches where they were
    decided then."""
    if workflow.patched(PATCHES_FIRST):
        for name in (*RUNNER_PATCHES, *own):
            workflow.patched(name)
