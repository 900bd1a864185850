"""Error kinds: the one vocabulary for what went wrong, from an activity to the CLI's exit code.

Activities raise `ApplicationError(type=kind)`; workflows' RetryPolicies name the kinds a retry
cannot fix; Update validators refuse with a kind (`refusal_error`); the CLI maps a kind to its exit
code in one table (rollbackctl/cli/common.py EXIT_CODES). The values are the ApplicationError type
names recorded in histories, so they never change.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: the CLI's reads do not pay for temporalio
    from temporalio.exceptions import ApplicationError


class ErrorKind(StrEnum):
    # -- the switch store ---------------------------------------------------------------------------
    INVALID_CHANGE = "InvalidChange"  # bad input: a value outside its type or bounds, an unknown switch
    PERMISSION_DENIED = "PermissionDenied"  # the role, the key or etcd's credentials refused it
    CONFLICT = "Conflict"  # --expect did not match, a stale revision, a lost compare-and-swap
    NOT_INITIALISED = "NotInitialised"  # the store has no matrix yet
    STORE_UNAVAILABLE = "StoreUnavailable"  # no etcd endpoint answered (retried)
    # -- the trading core (contracts/trading_core.py) -----------------------------------------------
    BAD_REQUEST = "BadRequest"  # also paging: a body the service refused (4xx); never retried
    UNAUTHORIZED = "Unauthorized"
    SCHEMA_VIOLATION = "SchemaViolation"
    MAINTENANCE = "Maintenance"  # 503 maintenance: Degradation Level 3 is in force
    CORE_UNAVAILABLE = "CoreUnavailable"
    CORE_TIMEOUT = "CoreTimeout"
    NOT_APPLIED = "NotApplied"  # the core did not confirm a revision in time
    # -- paging (PagerDuty Events API v2, Slack) ------------------------------------------------------
    NOT_CONFIGURED = "NotConfigured"
    PAGING_UNAVAILABLE = "PagingUnavailable"
    PAGING_TIMEOUT = "PagingTimeout"
    # -- a workflow refusing a decision or a start (Update validators; nothing is written) ----------
    NOT_PERMITTED = "NotPermitted"  # who asked: not an operator, a role too low, a refused signature
    INVALID_DECISION = "InvalidDecision"  # what was asked is incomplete: no reason, no --reference, no level
    REFUSED = "Refused"  # when: not awaited now, another step, already decided, finished


# Errors a retry cannot fix: bad input, a refused permission, a compare-and-swap that lost.
SWITCH_NON_RETRYABLE = [ErrorKind.INVALID_CHANGE, ErrorKind.PERMISSION_DENIED, ErrorKind.CONFLICT,
                        ErrorKind.NOT_INITIALISED]

INVALID_CHANGE = ErrorKind.INVALID_CHANGE
PERMISSION_DENIED = ErrorKind.PERMISSION_DENIED
CONFLICT = ErrorKind.CONFLICT
NOT_INITIALISED = ErrorKind.NOT_INITIALISED
STORE_UNAVAILABLE = ErrorKind.STORE_UNAVAILABLE


class Refusal(str):
    """Why a workflow refuses a decision: the one line shown to the operator, and its kind.

    A str, so a check returns it (or None) and callers print it; the validator raises it with
    `refusal_error`, and the CLI reads the kind from the ApplicationError's type, never the text.
    """

    kind: ErrorKind

    def __new__(cls, why: str, kind: ErrorKind = ErrorKind.REFUSED) -> "Refusal":
        obj = super().__new__(cls, why)
        obj.kind = kind
        return obj


def not_permitted(why: str) -> Refusal:
    return Refusal(why, ErrorKind.NOT_PERMITTED)


def invalid(why: str) -> Refusal:
    return Refusal(why, ErrorKind.INVALID_DECISION)


def refusal_error(why: str) -> ApplicationError:
    """The ApplicationError an Update validator raises for `why` (a plain str is a REFUSED)."""
    from temporalio.exceptions import ApplicationError

    kind = why.kind if isinstance(why, Refusal) else ErrorKind.REFUSED
    return ApplicationError(str(why), type=kind.value, non_retryable=True)


def kind_of(type_name: str | None) -> ErrorKind | None:
    """The kind an ApplicationError's type names (None: not one of ours)."""
    try:
        return ErrorKind(type_name) if type_name else None
    except ValueError:
        return None
