"""Fault injection: metric overrides and faults of the API itself.

`POST /sim/faults` merges a JSON object into the faults in force; a key set to null removes that
fault; `DELETE /sim/faults` clears all. Per-symbol maps merge per symbol
(`{"order_price_deviation": {"BTC": 0.07}}` leaves ETH to the random walk).

Metric overrides: any field of the health snapshot except `as_of` and `maintenance` (those come from
the clock and the switches), typed as in the contract. An override wins over the simulated value,
and the simulation reacts to it (a faulted volatility above force_hl_volatility_pct routes to HL,
`hl_connected: false` makes HL-routed orders fail and starts the `hl_disconnected_for_s` clock).

API faults (keys starting with `api_`), applied to requests whose path starts with one of
`api_paths` (default `["/v1/"]`; the paging sinks `/sim/pagerduty` and `/sim/slack` may be named
too; the other `/sim/` controls never fail):
- `api_latency_ms`: added delay before answering;
- `api_error_share`: share (0..1) of requests answered 500 (seeded draw);
- `api_status`: answer every matching request with this status (400..599) and an error body;
- `api_timeout`: hold the request without answering for `api_timeout_s` (default 30 s, or until
  the faults are cleared), then 504;
- `api_malformed`: `"not_json"` (a truncated body), `"wrong_type"` or `"missing_field"` (the JSON
  body with `api_malformed_field`, default `hl_margin_ratio`, turned into a string or removed);
- `api_fault_after`: strike after the route ran (an action is performed, its answer is lost);
- `api_fault_count`: only the next N matching requests are faulted, then the API faults clear;
- `api_problem_json`: error answers are RFC 9457 `application/problem+json` documents (`type`, `title`,
  `status`, `detail`) instead of `{"error", "detail"}`, as some cores answer;
- `api_action_ms`: an action takes this long to perform; meanwhile its Idempotency-Key is in flight and
  a second request with it gets `409 in_flight` with `Retry-After: 1` (the idempotency-key draft).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from contracts.trading_core import HealthSnapshot

METRIC_FIELDS = {n: f for n, f in HealthSnapshot.model_fields.items() if n not in ("as_of", "maintenance", "controls")}
MAP_FIELDS = {n for n, f in METRIC_FIELDS.items() if f.annotation == dict[str, float]}


class ApiFaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_latency_ms: float | None = Field(default=None, ge=0, le=120_000)
    api_error_share: float | None = Field(default=None, ge=0, le=1)
    api_status: int | None = Field(default=None, ge=400, le=599)
    api_timeout: bool | None = None
    api_timeout_s: float | None = Field(default=None, gt=0, le=600)
    api_malformed: Literal["not_json", "wrong_type", "missing_field"] | None = None
    api_malformed_field: str | None = None
    api_fault_after: bool | None = None
    api_fault_count: int | None = Field(default=None, ge=1)
    api_problem_json: bool | None = None
    api_action_ms: float | None = Field(default=None, ge=0, le=120_000)
    api_paths: list[str] | None = None

    def active(self) -> bool:
        return any(v is not None and v is not False for k, v in self.model_dump().items()
                   if k not in ("api_paths", "api_timeout_s", "api_malformed_field", "api_fault_after",
                                "api_fault_count", "api_problem_json", "api_action_ms"))

    def matches(self, path: str) -> bool:
        return any(path.startswith(p) for p in (self.api_paths or ["/v1/"]))


class FaultError(ValueError):
    pass


def _metric_adapter(name: str) -> TypeAdapter:
    f = METRIC_FIELDS[name]
    return TypeAdapter(Annotated[f.annotation, *f.metadata]) if f.metadata else TypeAdapter(f.annotation)


class Faults:
    """The faults in force. Metric overrides are checked against the contract's field types."""

    def __init__(self) -> None:
        self.metrics: dict[str, Any] = {}
        self.api = ApiFaults()

    def as_dict(self) -> dict[str, Any]:
        return {**self.metrics, **self.api.model_dump(exclude_none=True)}

    def clear(self) -> None:
        self.metrics = {}
        self.api = ApiFaults()

    def clear_api(self) -> None:
        self.api = ApiFaults()

    def merge(self, body: Any) -> None:
        """Validate all of `body` first, then apply it (all or nothing). Raises FaultError."""
        if not isinstance(body, dict):
            raise FaultError("faults must be a JSON object")
        metrics = {k: v for k, v in body.items() if not k.startswith("api_")}
        api = {k: v for k, v in body.items() if k.startswith("api_")}
        new_metrics = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.metrics.items()}
        for k, v in metrics.items():
            if k not in METRIC_FIELDS:
                known = ", ".join(sorted(METRIC_FIELDS))
                raise FaultError(f"unknown fault {k!r}: metric overrides are health fields ({known}) or api_* faults")
            if v is None:
                new_metrics.pop(k, None)
                continue
            if k in MAP_FIELDS:
                if not isinstance(v, dict):
                    raise FaultError(f"{k}: expected an object symbol -> number, got {v!r}")
                cur = dict(new_metrics.get(k) or {})
                for sym, x in v.items():
                    if x is None:
                        cur.pop(sym, None)
                        continue
                    if isinstance(x, bool) or not isinstance(x, (int, float)):
                        raise FaultError(f"{k}.{sym}: expected a number, got {x!r}")
                    cur[sym] = float(x)
                if cur:
                    new_metrics[k] = cur
                else:
                    new_metrics.pop(k, None)
                continue
            if METRIC_FIELDS[k].annotation is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            try:
                val = _metric_adapter(k).validate_python(v, strict=True)
            except ValidationError as e:
                raise FaultError(f"{k}: {e.errors()[0]['msg']} (got {v!r})") from None
            new_metrics[k] = val
        merged_api = {**self.api.model_dump(exclude_none=True), **api}
        merged_api = {k: v for k, v in merged_api.items() if v is not None}
        try:
            new_api = ApiFaults.model_validate(merged_api)
        except ValidationError as e:
            err = e.errors()[0]
            raise FaultError(f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        self.metrics, self.api = new_metrics, new_api

    def overlay(self, base: dict[str, Any]) -> dict[str, Any]:
        """`base` with the metric overrides applied (per-symbol maps merged)."""
        out = dict(base)
        for k, v in self.metrics.items():
            if k in MAP_FIELDS:
                out[k] = {**(base.get(k) or {}), **v}
            else:
                out[k] = v
        return out
