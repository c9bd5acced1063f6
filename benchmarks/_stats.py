"""Percentiles and one-line latency summaries shared by the benchmark scripts."""

from __future__ import annotations

import statistics


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def report(name: str, ms: list[float]) -> None:
    print(
        f"{name:10s} n={len(ms):4d}  p50={pct(ms, 50):7.2f} ms  p95={pct(ms, 95):7.2f} ms  "
        f"max={max(ms):7.2f} ms  mean={statistics.fmean(ms):7.2f} ms"
    )
