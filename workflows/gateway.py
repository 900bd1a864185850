"""The activity gateway: every activity the interpreter calls (switch store, trading core, Temporal
ops), by method reference with its input and result models. Part of `Runner` (workflows/runner.py).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from contracts.changes import ChangeSetRequest, ChangeSetResult, Snapshot, SwitchChange, BreakGlass
    from contracts.progress import ui_summary
    from activities.switch_activities import Roster, SwitchActivities
    from contracts.trading_core import (
        CoreActionInput,
        CoreActionResult,
        ExposureReport,
        HealthSnapshot,
        ReadHealthInput,
        WaitAppliedInput,
        exposure_mismatches,
    )
    from activities.temporal_ops import TemporalOps
    from activities.trading_core import TradingCoreActivities
    from contracts.fleet import FleetApplied, FleetWaitInput
    from manual import switches as matrix
    from manual.steps import ApplySwitches, Observe
from workflows.base import SWITCH_RETRY, CORE_RETRY, CORE_ACTION_HORIZON, SNAPSHOT_OWN_WRITE, root_cause


class ActivityGateway:
    """Activity calls of a Runner; its state (progress, roster, snapshot, proofs) lives on the Runner."""

    async def load_roster(self, local: bool = True) -> None:
        """`local` on the critical path (start); a refresh while waiting is a regular activity: it holds
        no workflow task open (and time-skipping tests skip through it)."""
        run = workflow.execute_local_activity_method if local else workflow.execute_activity_method
        r: Roster = await run(SwitchActivities.roster, start_to_close_timeout=timedelta(seconds=10),
                              retry_policy=SWITCH_RETRY)
        self.roster = r.roles
        self.keys, self.retired, self.signing, self.passkeys = r.keys, r.retired, r.signing, r.passkeys
        self.roster_at = self.progress.roster_at = workflow.now()

    async def take_snapshot(self) -> Snapshot:
        snap: Snapshot = await workflow.execute_local_activity_method(
            SwitchActivities.snapshot, start_to_close_timeout=timedelta(seconds=10), retry_policy=SWITCH_RETRY)
        return snap

    async def read_health(self, timeout: timedelta, attempts: int = 2, local: bool = False) -> dict[str, Any]:
        """The core's health snapshot (GET /v1/health, validated by the activity), as the metrics the steps'
        checks read by name (manual/steps.HealthCheck.metric)."""
        inp = ReadHealthInput(timeout_s=timeout.total_seconds())
        policy = RetryPolicy(maximum_attempts=attempts, initial_interval=timedelta(milliseconds=100))
        where = f"health check ({self.progress.current_step})" if self.progress.current_step else "health check"
        if local:
            snap: HealthSnapshot = await workflow.execute_local_activity_method(
                TradingCoreActivities.read_health, inp, start_to_close_timeout=timeout + timedelta(milliseconds=200),
                retry_policy=policy, summary=where)
        else:
            snap = await workflow.execute_activity_method(
                TradingCoreActivities.read_health, inp, start_to_close_timeout=timeout + timedelta(seconds=1),
                retry_policy=policy, summary=where)
        return snap.model_dump(mode="json")

    async def core_action(self, step: str, action: str, body: dict[str, Any]) -> CoreActionResult:
        # activities.trading_core.CoreActionInput. A regular activity even on a critical path (a P0
        # immediate action): as a local activity, a core that is down holds the workflow task open
        # (no timer, no page meanwhile), and a failed local attempt followed by other commands did
        # not replay (sdk-core 1.35: nondeterminism on the next worker).
        inp = CoreActionInput(action=action, body=body, idempotency_key=f"{self._key(step)}:{action}")
        return await workflow.execute_activity_method(
            TradingCoreActivities.action, inp, start_to_close_timeout=timedelta(seconds=10),
            schedule_to_close_timeout=CORE_ACTION_HORIZON, retry_policy=CORE_RETRY,
            summary=ui_summary(f"trading core: {action} ({step})"))

    async def apply(self, step: ApplySwitches, *, expected: dict[str, Any] | None = None,
                    values: dict[str, Any] | None = None, approved_by: str | None = None,
                    actor: str | None = None, action: str | None = None,
                    break_glass: BreakGlass | None = None) -> ChangeSetResult:
        changes = values if values is not None else step.changes
        req = ChangeSetRequest(
            change_id=self._key(step.name),
            actor=actor or self.requested_by,
            actor_kind="operator" if actor else self.actor_kind,
            action=action or ("rollback.apply" if step.authority == "preapproved" else "plan.apply"),
            changes=[SwitchChange(switch=k, value=v) for k, v in changes.items()],
            reason=("[DRILL] " if self.drill else "") + step.reason,
            source=self.wid,
            authority=step.authority,
            approved_by=approved_by,
            expected=expected,
            drill=self.drill,
            proofs=list(self.proofs),
            # The nonces of these signed requests belong to this workflow's chain of runs: the first
            # run's id is stable across continue-as-new (a canary's later runs carry its start's proofs).
            nonce_owner=f"{self.wid}/{workflow.info().first_execution_run_id}",
            break_glass=break_glass,
        )
        res: ChangeSetResult = await workflow.execute_local_activity_method(
            SwitchActivities.apply, req, start_to_close_timeout=timedelta(seconds=15),
            schedule_to_close_timeout=timedelta(minutes=30), retry_policy=SWITCH_RETRY,
            summary=ui_summary(f"{step.name}: " + ", ".join(f"{k}={v}" for k, v in changes.items())))
        if res.replayed:
            self._unsee_own_write(res)
        self.progress.applied.append(res)
        return res

    def _unsee_own_write(self, res: ChangeSetResult) -> None:
        """A worker that died after this change set committed and before its result was recorded
        leaves a retried workflow task that took the snapshot again, after the write: the snapshot
        shows this workflow's own values and a restore would find nothing to restore. The audit
        record's `old` values (returned on replay) are the real ones before the change: put them back.
        Called only in that case, so the patch marker is written only in histories that need it.
        """
        snap = self.snapshot
        if snap is None:
            return
        own = [c for c in res.changes
               if (st := snap.switches.get(c.switch)) is not None and st.change_id == res.change_id]
        if not own or not workflow.patched(SNAPSHOT_OWN_WRITE):
            return
        for c in own:
            snap.switches[c.switch] = snap.switches[c.switch].model_copy(
                update={"value": c.old, "change_id": None, "updated_by": None, "updated_at": None})
            self.progress.snapshot[c.switch] = c.old
        self.log("snapshot taken after this workflow's own change set %s (worker crash): pre-change values "
                 "restored from its audit record for %s", res.change_id, ", ".join(c.switch for c in own))

    async def verify_applied(self, revision: int, timeout: timedelta) -> str:
        try:
            await workflow.execute_activity_method(
                TradingCoreActivities.wait_applied, WaitAppliedInput(revision=revision, timeout_s=timeout.total_seconds()),
                start_to_close_timeout=timeout + timedelta(seconds=2),
                retry_policy=RetryPolicy(maximum_attempts=3, non_retryable_error_types=["Maintenance"]),
                summary=f"wait until the trading core applied etcd revision {revision}",
            )
            return f"trading core applied revision {revision}"
        except FailureError as e:
            cause = root_cause(e)
            if isinstance(cause, ApplicationError) and cause.type == "Maintenance":
                return f"revision {revision} written; the trading core is in maintenance mode (503)"
            return f"revision {revision} written; trading core did not confirm it applied: {cause}"

    async def verify_fleet(self, res: ChangeSetResult, timeout: timedelta) -> FleetApplied | None:
        """Every live registered consumer at the change's revision, within its latency class (the strictest
        of its switches); None when the wait itself could not run (etcd away: said in the step)."""
        class_s = matrix.latency_s(c.switch for c in res.changes)
        try:
            return await workflow.execute_activity_method(
                SwitchActivities.wait_fleet,
                FleetWaitInput(revision=res.revision, class_s=class_s,
                               timeout_s=max(class_s, timeout.total_seconds())),
                start_to_close_timeout=max(timedelta(seconds=class_s), timeout) + timedelta(seconds=5),
                retry_policy=RetryPolicy(maximum_attempts=2),
                summary=f"wait until every live consumer applied etcd revision {res.revision} (<{class_s:g}s)",
            )
        except FailureError as e:
            workflow.logger.warning("fleet receipts for revision %s not read: %s", res.revision, root_cause(e))
            return None

    async def pause_canaries(self) -> str | None:
        """Signal running canaries to pause (nothing promotes over a rollback)."""
        try:
            r = await workflow.execute_activity_method(
                TemporalOps.pause_canaries, self.wid, start_to_close_timeout=timedelta(seconds=10),
                retry_policy=RetryPolicy(maximum_attempts=3))
            return r
        except FailureError as e:
            self.log("pausing canaries failed: %s", e)
            return None

    async def read_probes(self, step: Observe) -> dict[str, Any]:
        """Extra metrics a step asks for (Observe.probes), merged into the health snapshot."""
        out: dict[str, Any] = {}
        if "exposure_precision" in step.probes:
            report: ExposureReport = await workflow.execute_activity_method(
                TradingCoreActivities.read_exposure, start_to_close_timeout=timedelta(seconds=5),
                retry_policy=RetryPolicy(maximum_attempts=2, initial_interval=timedelta(milliseconds=100)))
            bad = exposure_mismatches(report)
            out["exposure_mismatches"] = len(bad)
            out["exposure_mismatch_detail"] = bad
        return out
