"""Degradation Levels 1-3 (manual: "Degradation Levels").

The manual gives each level's trigger and switch set and leaves "Available:" blank. What stays
available is filled in below from public precedent (dYdX market statuses, reduce-only halts; see
DOMAIN.md): each level takes away the least that stops the harm named in its trigger.
Level 2's "Read-Only + Limited" is enforced with the trading core's own actions (pause HL opens =
reduce/close only, pause large withdrawals), because no switch in the matrix expresses it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from manual import switches
from manual.alerts import CoreMove  # a trading-core action and its undo: one type for the P0 table and the levels
from contracts.roles import Role


class DegradationLevel(BaseModel):
    model_config = ConfigDict(frozen=True)

    level: int
    name: str
    trigger: str
    switch_set: dict[str, Any]
    core_actions: tuple[CoreMove, ...] = ()
    available: tuple[str, ...]
    unavailable: tuple[str, ...]
    permission: Role  # who may start it (and restore from it)
    preapproved: bool  # on the manual's list of emergency moves an on-call may trigger


LEVELS: dict[int, DegradationLevel] = {
    1: DegradationLevel(
        level=1,
        name="Partial Function (Controllable Risk)",
        trigger="Internalization/Liquidation failure (HL OK)",
        switch_set={"global_betting_enabled": False, "hedge_enabled": False, "routing_mode": "NORMAL_MODE"},
        available=(
            "Trading: every order routed to HL (internalization off, so NORMAL_MODE internalizes nothing)",
            "Deposits and withdrawals",
            "Positions, balances, order history, market data",
            "Liquidation engine (still on; a failing engine is handled by the P0 liquidation rule)",
        ),
        unavailable=(
            "Internalization (B-book)",
            "Automatic hedging (risk desk hedges by hand)",
        ),
        permission=Role.ON_CALL,
        preapproved=True,
    ),
    2: DegradationLevel(
        level=2,
        name="Read-Only + Limited (Asset Protection)",
        trigger="Liquidation completely broken / Multi-module failures",
        switch_set={"global_betting_enabled": False, "routing_mode": "HL_MODE", "liquidation_enabled": False},
        core_actions=(
            CoreMove(action="pause_hl_opens", undo="resume_hl_opens"),
            CoreMove(action="pause_large_withdrawals", body={"above_usd": 10_000}, undo="resume_large_withdrawals"),
        ),
        available=(
            "Read everything: balances, positions, orders, history",
            "Cancel orders",
            "Reduce or close positions (routed to HL, reduce-only)",
            "Withdrawals up to $10,000",
            "Manual liquidation by the risk desk",
        ),
        unavailable=(
            "Opening or increasing positions",
            "Internalization",
            "Automatic liquidation",
            "Withdrawals above $10,000",
        ),
        permission=Role.ON_CALL,
        preapproved=True,
    ),
    3: DegradationLevel(
        level=3,
        name="Maintenance Mode (Emergency Stop)",
        trigger="Full outage / Database unavailable / Asset at risk",
        switch_set={"global_api_enabled": False},
        available=(
            "Nothing for users: static maintenance page, API answers 503",
            "Automation keeps reading /v1/health and /v1/risk/exposure",
        ),
        unavailable=("All trading, deposits, withdrawals and account API",),
        permission=Role.SUPER_ADMIN,
        preapproved=False,
    ),
}

# Validate the table against the control matrix at import.
for _lvl in LEVELS.values():
    for _name, _value in _lvl.switch_set.items():
        switches.get(_name).parse(_value)


def get(level: int) -> DegradationLevel:
    if level not in LEVELS:
        raise ValueError(f"degradation level must be 1, 2 or 3, got {level!r}")
    return LEVELS[level]
