"""The door's brute-force limit: a stranger's guesses per day, and how often ordinary traffic
makes the door back off.

    PYTHONPATH=daemon python benchmarks/bench_lockout.py [--rates 20 40 60] \
        [--fail 0.018 0.034] [--days 60] [--attack-days 2] [--device-max 5] \
        [--window-max 20] [--window 7200] [--design book|same-user] [--seed 0]

Everything runs through the real `voxgate.lockout.LockoutBook` on a real SQLite file (in
/dev/shm when there is one), with simulated time passed as `now`. Run it with an older
`daemon` folder on PYTHONPATH (e.g. `git archive <commit> daemon | tar -x -C /tmp/old`) to
measure that release's book; `--window-max` and `--window` (lockout.device_window_failures,
lockout.device_window_s) are ignored by a book that has no such settings.

The door: people come in at `--rates` entries per hour (Poisson, all day), each one of
`--users` enrolled users chosen at random. A genuine attempt fails with probability `--fail`
(speaker FNMR at the default threshold is 2.1 % on fsdd, 2.6 % on vcc2018 since the
voice-group calibration, 1.8 / 2.3 % before it, and the digit check rejects 1.7 % of genuine
FSDD answers, so about 3.8 % per attempt for both checks, 3.4 % before:
docs/speaker-verification.md, docs/challenge.md); a person who fails tries again
`--attempt-s` later until let in, and a person who meets a back-off waits for its end and
tries again. Failures are independent (a person with a cold failing several times in a row
would make back-offs more likely than this says).

The stranger tries every `--attempt-s` seconds all day and never matches (each guess is a
chance at a false match, so the budget is what matters). Two strategies:

- quiet: guesses only when the guess cannot start any back-off (no count of the door's or
  the claimed user's would reach its limit), i.e. knows the counts: an upper bound on what
  a careful attacker gets without setting off a lock (locks go to MQTT and the audit log).
  Each guess claims the enrolled user with the lowest count (their counts are reset by
  their own entries), or nobody (identify mode) when every user is near their limit;
- forced: guesses whenever the door is not locked, back-offs or not (identify mode), and
  we report the share of legitimate entries that met a back-off (the denial of service).

`--design same-user` replaces the book with a model of another candidate fix (door failures
counted within the window, limit --window-max; a success removes the door failures that
claimed the same user; no consecutive count) to compare; it is a model, not shipped code.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from voxgate.config.service import LockoutConfig
from voxgate.lockout import LockoutBook, user_key
from voxgate.policy import LockoutState

HOUR = 3600.0
DAY = 24 * HOUR


class Book(Protocol):
    def state(self, user: str | None, now: float | None = None) -> LockoutState: ...
    def record(self, user: str | None, ok: bool, now: float | None = None) -> Any: ...


@dataclass
class SameUserClears:
    """Model of the rejected candidate: the door counts failures within the window, each
    with the name it claimed; a success removes the failures that claimed that user."""

    cfg: LockoutConfig
    window: float
    door: list[tuple[float, str | None]] = field(default_factory=list)
    door_until: float = 0.0
    users: dict[str, tuple[int, float]] = field(default_factory=dict)

    def _count(self, now: float) -> int:
        return sum(1 for t, _ in self.door if t > now - self.window)

    def state(self, user: str | None, now: float | None = None) -> LockoutState:
        assert now is not None
        n, until = self.users.get(user_key(user), (0, 0.0)) if user else (0, 0.0)
        ends = [u for u in (self.door_until, until) if u > now]
        dev = self.door_until > now
        scope = "both" if dev and until > now else "device" if dev else "user" if ends else None
        return LockoutState(
            locked=bool(ends),
            until=max(ends, default=None),
            user_failures=n,
            device_window_failures=self._count(now),
            scope=scope,
        )

    def _period(self, over: int) -> float:
        return min(self.cfg.max_s, self.cfg.initial_s * 2.0 ** min(over, 30))

    def record(self, user: str | None, ok: bool, now: float | None = None) -> None:
        assert now is not None
        key = user_key(user) if user else None
        if ok:
            self.door = [(t, u) for t, u in self.door if u != key or key is None]
            if key:
                self.users[key] = (0, 0.0)
            return
        self.door = [(t, u) for t, u in self.door if t > now - self.window] + [(now, key)]
        over = len(self.door) - self.cfg.device_window_failures
        if over >= 0:
            self.door_until = now + self._period(over)
        if key:
            n, until = self.users.get(key, (0, 0.0))
            n += 1
            if n >= self.cfg.max_failures:
                until = now + self._period(n - self.cfg.max_failures)
            self.users[key] = (n, until)


@dataclass
class Day:
    arrivals: int = 0  # people who came to the door
    entries: int = 0  # of them, let in the same day
    delayed: int = 0  # people who met a back-off of any kind
    door_backoffs: int = 0  # times a person met the door's back-off (scope device/both)
    guesses: int = 0


def simulate(
    book: Book, args: argparse.Namespace, rate: float, fail: float, days: int, attacker: str
) -> list[Day]:
    """One continuous run of `days` days; counts per day."""
    rng = random.Random(args.seed)
    users = [f"user{i}" for i in range(args.users)]
    out = [Day() for _ in range(days)]
    end = days * DAY
    events: list[tuple[float, int, str, str | None, bool]] = []  # time, seq, kind, user, met
    seq = 0

    def push(t: float, kind: str, user: str | None, met: bool = False) -> None:
        nonlocal seq
        if t < end:
            heapq.heappush(events, (t, seq, kind, user, met))
            seq += 1

    t = rng.expovariate(rate / HOUR)
    while t < end:
        push(t, "arrive", rng.choice(users))
        t += rng.expovariate(rate / HOUR)
    if attacker != "none":
        push(0.0, "guess", None)
    limits = book_limits(book)
    while events:
        now, _, kind, user, met = heapq.heappop(events)
        day = out[int(now // DAY)]
        if kind == "guess":
            push(now + args.attempt_s * rng.uniform(0.9, 1.1), "guess", None)
            claim = guess_claim(book, users, now, attacker, limits)
            if claim is not False:
                book.record(claim, False, now)
                day.guesses += 1
            continue
        if kind == "arrive":
            day.arrivals += 1
        st = book.state(user, now)
        if st.locked:
            if not met:
                day.delayed += 1
            if st.scope in ("device", "both"):
                day.door_backoffs += 1
            # Tries again a moment after the back-off ends (the stranger may be quicker).
            push(max(st.until or now, now) + rng.uniform(0.1, args.attempt_s), "entry", user, True)
            continue
        if rng.random() < fail:
            book.record(user, False, now)
            push(now + args.attempt_s, "entry", user, met)
        else:
            book.record(user, True, now)
            day.entries += 1
    return out


def book_limits(book: Book) -> tuple[int, int, int]:
    """Limits of the user's, the door's consecutive and the door's window count (a
    count a book does not keep stays 0 and never reaches its limit)."""
    cfg = book.cfg  # type: ignore[attr-defined]
    if isinstance(book, SameUserClears):
        return cfg.max_failures, 10**9, cfg.device_window_failures
    return cfg.max_failures, cfg.device_max_failures, getattr(cfg, "device_window_failures", 10**9)


def guess_claim(
    book: Book, users: list[str], now: float, attacker: str, limits: tuple[int, int, int]
) -> str | bool | None:
    """The name the stranger claims now (None: identify mode), or False: no guess now."""
    if attacker == "forced":
        return False if book.state(None, now).locked else None
    limit_user, limit_door, limit_window = limits
    door = book.state(None, now)
    if (
        door.locked
        or door.device_failures + 1 >= limit_door
        or getattr(door, "device_window_failures", 0) + 1 >= limit_window
    ):
        return False
    best: tuple[int, str] | None = None
    for u in users:
        st = book.state(u, now)
        usable = not st.locked and st.user_failures + 1 < limit_user
        if usable and (best is None or st.user_failures < best[0]):
            best = (st.user_failures, u)
    return None if best is None else best[1]


def make_book(args: argparse.Namespace, folder: Path, name: str) -> Book:
    fields = LockoutConfig.model_fields
    kw: dict[str, Any] = {"max_failures": args.user_max, "device_max_failures": args.device_max}
    if "device_window_s" in fields:
        kw["device_window_s"] = args.window
        kw["device_window_failures"] = args.window_max
    elif args.design == "same-user":
        raise SystemExit("--design same-user needs a LockoutConfig with device_window_s")
    cfg = LockoutConfig(**kw)
    if args.design == "same-user":
        return SameUserClears(cfg, args.window)
    return LockoutBook(folder / f"{name}.db", cfg)


def upper95(k: int, n: int) -> float:
    """One-sided 95 % upper bound of a rate seen k times in n (exact for k = 0)."""
    if k == 0:
        return 1 - 0.05 ** (1 / n)
    p = k / n
    return min(1.0, p + 1.645 * math.sqrt(p * (1 - p) / n) + 1 / n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rates", type=float, nargs="+", default=[20, 40, 60], help="entries/h")
    ap.add_argument("--fail", type=float, nargs="+", default=[0.018, 0.034])
    ap.add_argument("--days", type=int, default=60, help="days of legitimate traffic")
    ap.add_argument("--attack-days", type=int, default=2)
    ap.add_argument("--users", type=int, default=30)
    ap.add_argument("--attempt-s", type=float, default=10.0)
    ap.add_argument("--user-max", type=int, default=5)
    ap.add_argument("--device-max", type=int, default=5)
    ap.add_argument("--window-max", type=int, default=20)
    ap.add_argument("--window", type=float, default=7200.0)
    ap.add_argument("--design", choices=["book", "same-user"], default="book")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import voxgate.lockout

    has_window = "device_window_s" in LockoutConfig.model_fields
    print(f"book: {voxgate.lockout.__file__} ({args.design})")
    window = f"{args.window_max} in {args.window:.0f} s" if has_window else "none in this book"
    print(
        f"user_max={args.user_max} device_max={args.device_max} window={window}, "
        f"attempt every {args.attempt_s} s, {args.users} users"
    )
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(prefix="bench_lockout_", dir=shm if shm.is_dir() else None))
    try:
        print("\nstranger's guesses (quiet: no back-off ever starts; forced: ignores back-offs)")
        print(
            f"{'entries/h':>9} {'fail':>6} {'quiet /h':>9} {'quiet /day':>10} "
            f"{'forced /day':>11} {'people delayed (forced)':>23}"
        )
        for rate in args.rates if args.attack_days else ():
            fail = args.fail[-1]
            quiet = simulate(
                make_book(args, folder, f"q{rate}"), args, rate, fail, args.attack_days, "quiet"
            )
            forced = simulate(
                make_book(args, folder, f"f{rate}"), args, rate, fail, args.attack_days, "forced"
            )
            qd = sum(d.guesses for d in quiet) / len(quiet)
            fd = sum(d.guesses for d in forced) / len(forced)
            delayed = sum(d.delayed for d in forced) / max(1, sum(d.arrivals for d in forced))
            print(f"{rate:9.1f} {fail:6.3f} {qd / 24:9.1f} {qd:10.0f} {fd:11.0f} {delayed:22.1%}")

        print("\nno stranger: days on which someone met the door's back-off")
        print(
            f"{'entries/h':>9} {'fail':>6} {'days':>5} {'days with one':>13} "
            f"{'95% upper':>9} {'door back-offs/day':>18} {'people delayed':>14}"
        )
        for rate in args.rates:
            for fail in args.fail:
                days = simulate(
                    make_book(args, folder, f"l{rate}-{fail}"), args, rate, fail, args.days, "none"
                )
                hit = sum(1 for d in days if d.door_backoffs)
                per_day = sum(d.door_backoffs for d in days) / len(days)
                delayed = sum(d.delayed for d in days) / max(1, sum(d.arrivals for d in days))
                print(
                    f"{rate:9.1f} {fail:6.3f} {len(days):5d} {hit / len(days):13.1%} "
                    f"{upper95(hit, len(days)):9.1%} {per_day:18.3f} {delayed:14.3%}"
                )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
