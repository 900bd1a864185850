"""The Control Matrix as data (manual: "Control Matrix (Risk Manager Controlled)").

Nineteen rows from the manual, plus:
- `global_api_enabled`: Degradation Level 3 sets it false (API answers 503). Super Admin.
- `betting_traffic_pct`: share of eligible orders internalized; the "5% canary" and "gradual ramp".
- `hedge_dry_run`: Phase 2 Stage 3 "Simulated Hedging": the hedge engine computes, sends nothing.

Meaning kept everywhere: `global_betting_enabled=false` means no internalization at all, whatever
`routing_mode` says; `routing_mode` picks the internalization size limit (NORMAL_MODE ->
`normal_threshold`, BETTING_MODE -> `betting_threshold`) only while betting is on; HL_MODE routes
every order to Hyperliquid.

Where the manual's rollback is vague ("Increase/set to $0", "Lower/disable", "Lower", "Raise/disable")
the value chosen is written in `rollback_value` with the manual's words kept in `rollback_text`.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from contracts.roles import Role


class SwitchType(str, Enum):
    BOOL = "bool"
    ENUM = "enum"
    MONEY = "money"
    FLOAT = "float"
    INT = "int"
    SYMBOLS = "symbols"


class Latency(str, Enum):
    CRITICAL = "<1s"
    NORMAL = "<5s"

    @property
    def seconds(self) -> float:
        """The class as a deadline: every live consumer applies a change within it (contracts/fleet.py)."""
        return float(self.value.removeprefix("<").removesuffix("s"))


def latency_s(names) -> float:
    """The strictest latency class among these switches (a change set is as urgent as its most urgent
    switch); the normal class when none is known."""
    return min((BY_NAME[n].latency.seconds for n in names if n in BY_NAME), default=Latency.NORMAL.seconds)


ROUTING_MODES = ("HL_MODE", "NORMAL_MODE", "BETTING_MODE")
_SYMBOL = re.compile(r"^[A-Z0-9]{1,15}$")
MONEY_MAX = Decimal("1000000000000")  # $1T: anything above is a typo


class SwitchValueError(ValueError):
    """A value that the switch does not accept; the message says why."""


def _shown(raw: Any) -> str:
    """A value as an error message shows it: its repr, cut to a readable length."""
    try:
        text = repr(raw)
    except ValueError:  # an int too long for str() (sys.get_int_max_str_digits)
        return "an integer of thousands of digits"
    return text if len(text) <= 60 else text[:57] + "..."


class Switch(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    type: SwitchType
    default: Any
    scope: str
    permission: Role
    rollback_value: Any
    rollback_text: str
    latency: Latency
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    unit: str = ""

    @model_validator(mode="after")
    def _self_consistent(self) -> "Switch":
        # The table itself must pass its own validation: a typo here fails at import.
        object.__setattr__(self, "default", self.parse(self.default))
        object.__setattr__(self, "rollback_value", self.parse(self.rollback_value))
        return self

    def parse(self, raw: Any) -> Any:
        """Validate and normalise a value (typed JSON or CLI text). Raises SwitchValueError."""
        t, n = self.type, self.name
        if t is SwitchType.BOOL:
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
                return raw.strip().lower() == "true"
            raise SwitchValueError(f"{n}: expected true or false, got {_shown(raw)}")
        if t is SwitchType.ENUM:
            if isinstance(raw, str) and raw.strip() in self.choices:
                return raw.strip()
            raise SwitchValueError(f"{n}: expected one of {', '.join(self.choices)}, got {_shown(raw)}")
        if t is SwitchType.SYMBOLS:
            if isinstance(raw, str):
                items = [s.strip() for s in raw.split(",")] if raw.strip() else []
            elif isinstance(raw, (list, tuple)):
                items = list(raw)
            else:
                raise SwitchValueError(f"{n}: expected a comma-separated list of tickers, got {_shown(raw)}")
            out: list[str] = []
            for s in items:
                if not isinstance(s, str) or not _SYMBOL.match(s):
                    raise SwitchValueError(f"{n}: {_shown(s)} is not an upper-case ticker (A-Z, 0-9, 1-15 chars)")
                if s in out:
                    raise SwitchValueError(f"{n}: {s} is listed twice")
                out.append(s)
            return out
        if isinstance(raw, str) and self.unit and raw.strip().endswith(self.unit):
            raw = raw.strip()[: -len(self.unit)]  # "1.5x", "10%", "2000ms": what render() shows
        if t is SwitchType.INT:
            if isinstance(raw, bool):
                raise SwitchValueError(f"{n}: expected an integer, got {_shown(raw)}")
            if isinstance(raw, int):
                v = raw
            elif isinstance(raw, float) and raw.is_integer():
                v = int(raw)
            elif isinstance(raw, str) and re.fullmatch(r"\s*-?\d+\s*", raw):
                try:
                    v = int(raw)
                except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
                    raise SwitchValueError(f"{n}: expected an integer, got {_shown(raw)}") from None
            else:
                raise SwitchValueError(f"{n}: expected an integer, got {_shown(raw)}")
            self._range(v)
            return v
        # money and float
        if isinstance(raw, bool):
            raise SwitchValueError(f"{n}: expected a number, got {_shown(raw)}")
        if isinstance(raw, str) and "," in raw:
            # A comma is a decimal point in much of the world: "1,5" must never become 15. Only money takes
            # commas, and only as thousands separators in groups of three ("$10,000", "1,250,000.50").
            text = raw.strip().lstrip("$")
            if t is not SwitchType.MONEY or not re.fullmatch(r"\d{1,3}(,\d{3})+(\.\d+)?", text):
                raise SwitchValueError(
                    f"{n}: {_shown(raw)} has a comma, which could be a decimal comma or a thousands separator: "
                    f"write {text.replace(',', '.')!r} for a decimal, or the digits without separators")
        try:
            d = Decimal(raw.strip().lstrip("$").replace(",", "") if isinstance(raw, str) else str(raw))
        except (InvalidOperation, TypeError, ValueError):
            raise SwitchValueError(f"{n}: expected a number, got {_shown(raw)}") from None
        if not d.is_finite():
            raise SwitchValueError(f"{n}: expected a finite number, got {_shown(raw)}")
        if t is SwitchType.MONEY:
            if d < 0:
                raise SwitchValueError(f"{n}: money must be >= 0, got {_shown(raw)}")
            if d > MONEY_MAX:
                raise SwitchValueError(f"{n}: {_shown(raw)} is above the sanity cap of $1,000,000,000,000")
            if d != d.quantize(Decimal("0.01")):
                raise SwitchValueError(f"{n}: money has at most 2 decimals (cents), got {_shown(raw)}")
            return int(d) if d == d.to_integral_value() else float(d)
        v = float(d)
        if not math.isfinite(v):
            raise SwitchValueError(f"{n}: expected a finite number, got {_shown(raw)}")
        self._range(v)
        return v

    def _range(self, v: float) -> None:
        if self.minimum is not None and v < self.minimum:
            raise SwitchValueError(f"{self.name}: {_shown(v)} is below the minimum {self.minimum:g}{self.unit}")
        if self.maximum is not None and v > self.maximum:
            raise SwitchValueError(f"{self.name}: {_shown(v)} is above the maximum {self.maximum:g}{self.unit}")

    def render(self, v: Any) -> str:
        """The CLI's text form (the inverse of parse for text)."""
        if self.type is SwitchType.BOOL:
            return "true" if v else "false"
        if self.type is SwitchType.SYMBOLS:
            return ",".join(v)
        if self.type is SwitchType.MONEY:
            return f"${v:,.2f}".replace(".00", "")
        if self.type is SwitchType.FLOAT:
            # the shortest text that reads back as this very float (`:g` kept 6 digits: 1.2345678 showed as
            # 1.23457, and `--expect` with what `switch list` showed could never match)
            text = repr(float(v))
            return f"{text[:-2] if text.endswith('.0') else text}{self.unit}"
        return str(v)


def _s(name, type_, default, scope, permission, rollback_value, rollback_text, latency, **kw) -> Switch:
    return Switch(
        name=name, type=type_, default=default, scope=scope, permission=permission,
        rollback_value=rollback_value, rollback_text=rollback_text, latency=latency, **kw,
    )


B, E, M, F, I, S = (SwitchType.BOOL, SwitchType.ENUM, SwitchType.MONEY, SwitchType.FLOAT,
                    SwitchType.INT, SwitchType.SYMBOLS)
SA, RM = Role.SUPER_ADMIN, Role.RISK_MANAGER
FAST, SLOW = Latency.CRITICAL, Latency.NORMAL

SWITCHES: tuple[Switch, ...] = (
    _s("global_betting_enabled", B, False, "Global internalization toggle", SA, False, "Switch → HL_MODE", FAST),
    _s("routing_mode", E, "HL_MODE", "Routing mode (HL_MODE/NORMAL/BETTING)", RM, "HL_MODE", "Back to HL_MODE",
       FAST, choices=ROUTING_MODES),
    _s("normal_threshold", M, 10_000, "NORMAL_MODE size limit", RM, 0, "Increase/set to $0 (chosen: $0)", SLOW),
    _s("betting_threshold", M, 50_000, "BETTING_MODE size limit", RM, 0, "Lower/disable (chosen: $0)", SLOW),
    _s("auto_mode_switch", B, False, "Auto mode switching", RM, False, "Disable", SLOW),
    _s("hedge_enabled", B, True, "Hedge engine toggle", RM, False, "Disable → manual", FAST),
    _s("hedge_max_leverage", F, 3.0, "Max hedge leverage", RM, 1.5, "Lower to 1.5x", SLOW,
       minimum=1.0, maximum=20.0, unit="x"),
    _s("per_symbol_betting", S, ["BTC", "ETH"], "Symbols allowed for internalization", RM, [], "Clear (ban all)", SLOW),
    _s("liquidation_enabled", B, True, "Liquidation engine", SA, False, "Disable (manual)", FAST),
    _s("liquidation_check_interval_ms", I, 500, "Liquidation detection frequency", RM, 2000, "Increase to 2000",
       SLOW, minimum=50, maximum=60_000, unit="ms"),
    _s("withdrawal_enabled", B, True, "Withdrawal toggle (run-on defense)", SA, False, "Disable", FAST),
    _s("max_internal_exposure_usd", M, 500_000, "Max internal net exposure/symbol", RM, 0, "Lower (chosen: $0)", SLOW),
    _s("hedge_threshold_tier1", M, 100_000, "Tier 1 hedge trigger (50%)", RM, 500_000, "Raise to $500K", SLOW),
    _s("hedge_threshold_tier2", M, 500_000, "Tier 2 hedge trigger (80%)", RM, 1_000_000, "Raise to $1M", SLOW),
    _s("risk_reserve_min_usd", M, 200_000, "Reserve minimum (pause if below)", RM, 300_000, "Raise to $300K", SLOW),
    _s("daily_net_loss_limit", M, 500_000, "Daily net loss circuit breaker", RM, 1_000_000,
       "Raise/disable (chosen: raise to $1M)", SLOW),
    _s("max_order_size_internal", M, 10_000, "Max single internal order", RM, 1_000, "Lower to $1K", SLOW),
    _s("force_hl_volatility_pct", F, 5.0, "Force HL if volatility >X", RM, 10.0, "Raise to 10%", SLOW,
       minimum=0.1, maximum=100.0, unit="%"),
    _s("force_hl_latency_ms", I, 500, "Force HL if HL latency >X", RM, 1000, "Raise to 1000", SLOW,
       minimum=1, maximum=60_000, unit="ms"),
    # --- added beside the manual's table (see module docstring) ---
    _s("global_api_enabled", B, True, "Whole API; false = maintenance mode, 503 (Degradation Level 3)", SA, False,
       "Disable → 503 (Level 3)", FAST),
    _s("betting_traffic_pct", I, 100, "Share of eligible orders internalized (canary ramp)", RM, 0,
       "Set to 0", SLOW, minimum=0, maximum=100, unit="%"),
    _s("hedge_dry_run", B, False, "Hedge engine computes but sends nothing (Simulated Hedging)", RM, True,
       "Enable (compute only)", SLOW),
)

BY_NAME: dict[str, Switch] = {s.name: s for s in SWITCHES}
assert len(BY_NAME) == len(SWITCHES), "duplicate switch name"


class UnknownSwitch(KeyError):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        import difflib

        close = difflib.get_close_matches(self.name, BY_NAME, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return f"unknown switch {self.name!r}{hint}"


def get(name: str) -> Switch:
    try:
        return BY_NAME[name]
    except KeyError:
        raise UnknownSwitch(name) from None


def defaults() -> dict[str, Any]:
    return {s.name: s.default for s in SWITCHES}


# A numeric change that moves a switch away from its rollback value (the manual's safe state) by this
# factor or more is asked again (`--yes`): a misplaced decimal point (1.5 typed as 15, $2,500 as $25,000)
# is a 10x change; no change the manual describes is one. Towards the rollback value (100% -> the 5%
# canary) is never asked: it lowers risk.
LARGE_CHANGE_FACTOR = 5.0


def large_change(sw: Switch, old: Any, new: Any) -> str | None:
    """Why changing `sw` from `old` to `new` needs a second look (a large factor away from its rollback
    value), or None. Pure."""
    if sw.type not in (SwitchType.MONEY, SwitchType.FLOAT, SwitchType.INT):
        return None
    if not isinstance(old, (int, float)) or not isinstance(new, (int, float)) or not old or not new:
        return None  # to or from zero: switching a limit off or on is not a typo's shape
    safe = sw.rollback_value
    if abs(new - safe) <= abs(old - safe):
        return None  # towards the safe state
    factor = max(new / old, old / new)
    if factor < LARGE_CHANGE_FACTOR:
        return None
    return (f"{sw.name} {sw.render(old)} -> {sw.render(new)} is a {factor:.3g}x change away from its rollback "
            f"value {sw.render(safe)} (a misplaced decimal point looks like this)")
