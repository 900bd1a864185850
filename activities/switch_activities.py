"""Temporal activities over the audited switch store.

Short and idempotent (a change set is keyed by its change id, derived from workflow id + step),
so workflows run them as local activities on the critical path. Errors are classified: bad input,
permission and lost compare-and-swap are non-retryable with the store's message; an etcd outage
retries.
"""

from __future__ import annotations

from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import errors
from activities.changes import ChangeSetRequest, ChangeSetResult, Snapshot
from activities.switch_store import Conflict, InvalidChange, NotInitialised, PermissionDenied, SwitchStore
from rollbackctl.etcd import EtcdAuthError, EtcdUnavailable


class Roster(BaseModel):
    """Operators and their roles, as the workflow's validators see them."""

    roles: dict[str, str]


_TYPES = {
    InvalidChange: errors.INVALID_CHANGE,
    PermissionDenied: errors.PERMISSION_DENIED,
    Conflict: errors.CONFLICT,
    NotInitialised: errors.NOT_INITIALISED,
}


def _classify(e: Exception) -> Exception:
    for cls, type_name in _TYPES.items():
        if isinstance(e, cls):
            # A contended store (not a value mismatch) is worth another try.
            retry = isinstance(e, Conflict) and "still contended" in str(e)
            return ApplicationError(str(e), type=type_name, non_retryable=not retry)
    if isinstance(e, EtcdAuthError):
        return ApplicationError(str(e), type=errors.PERMISSION_DENIED, non_retryable=True)
    if isinstance(e, EtcdUnavailable):
        return ApplicationError(str(e), type=errors.STORE_UNAVAILABLE)
    return e


class SwitchActivities:
    def __init__(self, store: SwitchStore):
        self.store = store

    @activity.defn(name="switch.apply")
    async def apply(self, req: ChangeSetRequest) -> ChangeSetResult:
        try:
            res = await self.store.apply(req)
        except Exception as e:
            raise _classify(e) from e
        activity.logger.info("change set %s applied as audit %s (replayed=%s)", req.change_id, res.audit_id, res.replayed)
        return res

    @activity.defn(name="switch.snapshot")
    async def snapshot(self) -> Snapshot:
        try:
            return await self.store.snapshot()
        except Exception as e:
            raise _classify(e) from e

    @activity.defn(name="switch.roster")
    async def roster(self) -> Roster:
        try:
            ops = await self.store.operators()
        except Exception as e:
            raise _classify(e) from e
        return Roster(roles={o.name: o.role.value for o in ops})
