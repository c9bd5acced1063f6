"""Clocks for tests of clock steps: the machine's own clock is never changed."""

from __future__ import annotations

T = 1_790_000_000.0  # a wall-clock time in 2026
HOUR = 3600.0


class Clocks:
    """A wall clock that can be stepped and a monotonic clock that only runs."""

    def __init__(self, wall: float) -> None:
        self.w = wall
        self.m = 1000.0

    def wall(self) -> float:
        return self.w

    def mono(self) -> float:
        return self.m

    def run(self, seconds: float) -> None:
        self.w += seconds
        self.m += seconds

    def step(self, seconds: float) -> None:
        self.w += seconds
