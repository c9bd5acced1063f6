"""Percentiles, one-line latency summaries, the evaluation-data check and the common
arguments shared by the benchmark scripts."""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


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


def set_parser(doc: str, sets: list[str], **sets_kw: Any) -> argparse.ArgumentParser:
    """A benchmark's parser over protocol sets: the first paragraph of its docstring as the
    description, the rest as the epilog, with --data (default ../shared/data beside the
    repository) and --sets (`sets_kw` adds to it, e.g. choices)."""
    head, body = doc.split("\n\n", 1)
    ap = argparse.ArgumentParser(
        description=head, epilog=body, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--sets", nargs="+", default=list(sets), **sets_kw)
    return ap
