"""Percentiles, one-line latency summaries and the evaluation-data check shared by the
benchmark scripts."""

from __future__ import annotations

import statistics
import sys
from collections.abc import Iterable
from pathlib import Path


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def report(name: str, ms: list[float]) -> None:
    print(
        f"{name:10s} n={len(ms):4d}  p50={pct(ms, 50):7.2f} ms  p95={pct(ms, 95):7.2f} ms  "
        f"max={max(ms):7.2f} ms  mean={statistics.fmean(ms):7.2f} ms"
    )


def sets_status(
    script: str, data: Path, sets: Iterable[str], need: str = "trials.csv"
) -> int | None:
    """None when every one of `sets` has `need` under `data`. Otherwise the exit status, said
    in one line: 0, skipped, on a clone without ../shared (nothing to measure); 1 naming the
    sets that are missing."""
    if not data.is_dir():
        print(f"{script}: skipped: no evaluation data at {data}")
        return 0
    missing = [s for s in sets if not (data / s / need).is_file()]
    if missing:
        print(f"{script}: not in {data}: {', '.join(missing)}", file=sys.stderr)
        return 1
    return None
