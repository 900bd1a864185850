"""Temporal activities over the audited switch store.

Short and idempotent (a change set is keyed by its change id, derived from workflow id + step),
so workflows run them as local activities on the critical path. Errors are classified: bad input,
permission and lost compare-and-swap are non-retryable with the store's message; an etcd outage
retries.
"""

from __future__ import annotations

from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.switch_store import SwitchStore, application_error
from contracts import errors
from contracts.changes import ChangeSetRequest, ChangeSetResult, SeenRecord, Snapshot
from contracts.fleet import FLEET_ACTIVITY, FleetApplied, FleetWaitInput
from core import identity


class CanaryClaim(BaseModel):
    phase: str = Field(pattern=r"^phase[23]$")
    n: int = Field(ge=1)


class Roster(BaseModel):
    """Operators, their roles and public keys, as the workflow's validators see them (they verify
    signatures without I/O). `signing` is the worker's setting: a workflow follows the worker's, never
    its starter's. Histories recorded before keys existed replay with the defaults (signing off)."""

    roles: dict[str, str]
    keys: dict[str, str] = {}  # operator -> public key (base64)
    retired: dict[str, list[str]] = {}  # operator -> ids of rotated-out keys (and removed passkeys)
    signing: bool = False
    passkeys: dict[str, list[str]] = {}  # operator -> approved passkeys' key texts (console decisions)


def signing_setting(signing: bool | None) -> bool:
    if signing is not None:
        return signing
    from core.settings import SigningSettings

    return SigningSettings().signing


class SwitchActivities:
    def __init__(self, store: SwitchStore, signing: bool | None = None):
        """`signing` None: ROLLBACKCTL_SIGNING (on unless set off)."""
        self.store = store
        self.signing = signing_setting(signing)

    @activity.defn(name="switch.apply")
    async def apply(self, req: ChangeSetRequest) -> ChangeSetResult:
        from activities import requests

        try:
            if self.signing and req.proofs:
                info = activity.info()
                # Nonces belong to this workflow: a retry, a later change set or (continue-as-new) a later
                # run of it may carry them again. The workflow names its first run ("<id>/<first run id>",
                # stable across continue-as-new); an owner outside its own workflow id is not taken.
                owner = req.nonce_owner or ""
                if not owner.startswith(f"{info.workflow_id}/") or owner == f"{info.workflow_id}/":
                    owner = f"{info.workflow_id}/{info.workflow_run_id}"
                req = req.model_copy(update={"nonce_owner": owner})
                await requests.verify_workflow_change(self.store, req, info.workflow_id)
            res = await self.store.apply(req)
        except Exception as e:
            raise application_error(e) from e
        activity.logger.info("change set %s applied as audit %s (replayed=%s)", req.change_id, res.audit_id, res.replayed)
        return res

    @activity.defn(name="switch.snapshot")
    async def snapshot(self) -> Snapshot:
        try:
            return await self.store.snapshot()
        except Exception as e:
            raise application_error(e) from e

    @activity.defn(name="switch.roster")
    async def roster(self) -> Roster:
        try:
            ops = await self.store.operators()
        except Exception as e:
            raise application_error(e) from e
        return Roster(roles={o.name: o.role.value for o in ops},
                      keys={o.name: o.public_key for o in ops if o.public_key},
                      retired={o.name: [identity.key_id(k) for k in o.retired_keys] for o in ops if o.retired_keys},
                      signing=self.signing,
                      passkeys={o.name: [pk.key for pk in o.passkeys if pk.key] for o in ops
                                if any(pk.key for pk in o.passkeys)})

    @activity.defn(name=FLEET_ACTIVITY)
    async def wait_fleet(self, inp: FleetWaitInput) -> FleetApplied:
        """Every live consumer at `inp.revision`? Never fails on stragglers: it says who (the workflow pages)."""
        from activities.fleet import wait_fleet

        try:
            return await wait_fleet(self.store.etcd, self.store.prefix, inp)
        except Exception as e:
            raise application_error(e) from e

    @activity.defn(name="switch.record_seen")
    async def record_seen(self, seen: SeenRecord) -> str:
        """An alert acknowledged/resolved in PagerDuty, in the audit trail (no switch changes)."""
        try:
            return await self.store.record_seen(seen)
        except Exception as e:
            raise application_error(e) from e

    @activity.defn(name="canary.claim_seq")
    async def claim_canary_seq(self, claim: CanaryClaim) -> int:
        """The canary `canary-<phase>-<n>` exists: the phase's counter moves up to n (the worker writes it,
        never an operator's CLI: operators' etcd users are read-only)."""
        wid = activity.info().workflow_id
        if wid != f"canary-{claim.phase}-{claim.n}":
            raise ApplicationError(f"{wid} claims canary {claim.phase} #{claim.n}: not its own id; counter left as is",
                                   type=errors.INVALID_CHANGE, non_retryable=True)
        try:
            return await self.store.advance_counter(f"canary/{claim.phase}/seq", claim.n)
        except Exception as e:
            raise application_error(e) from e

    def methods(self) -> list:
        """Every activity of this class (workers register them all)."""
        return [self.apply, self.snapshot, self.roster, self.record_seen, self.claim_canary_seq, self.wait_fleet]

