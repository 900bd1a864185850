"""ApplicationError type names shared by activities and workflows (one place)."""

INVALID_CHANGE = "InvalidChange"
PERMISSION_DENIED = "PermissionDenied"
CONFLICT = "Conflict"
NOT_INITIALISED = "NotInitialised"
STORE_UNAVAILABLE = "StoreUnavailable"

# Errors a retry cannot fix: bad input, a refused permission, a compare-and-swap that lost.
SWITCH_NON_RETRYABLE = [INVALID_CHANGE, PERMISSION_DENIED, CONFLICT, NOT_INITIALISED]
