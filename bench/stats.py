"""Percentiles for benchmark samples."""

from __future__ import annotations

import statistics


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def summary(xs: list[float]) -> dict[str, float]:
    return {"n": len(xs), "p50": round(pct(xs, 50), 2), "p90": round(pct(xs, 90), 2), "p99": round(pct(xs, 99), 2),
            "max": round(max(xs), 2), "mean": round(statistics.mean(xs), 2)}
