"""The service identity and reserved names (manual: "Permission Levels"; the roles are contracts/roles.py)."""

from __future__ import annotations


# The P0 monitor acts under this identity. It is not an operator: the CLI refuses the name,
# and the store lets it make only the manual's pre-approved moves.
MONITOR_IDENTITY = "monitor"
RESERVED_NAMES = frozenset({MONITOR_IDENTITY, "system", "cli"})
