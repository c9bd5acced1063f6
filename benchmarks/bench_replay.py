"""Replay check: time per answer against N stored fingerprints, and what it catches.

    PYTHONPATH=daemon python benchmarks/bench_replay.py --stored 0 100 1000 3000 [--probes 20]
        [--cpu 0] [--seed 0]
    PYTHONPATH=daemon python benchmarks/bench_replay.py --passphrase 291 --stored 100 \
        --probes 12 [--max-exact 8]

Data: ../shared/data (skips with a message when absent). Answers are 5-digit strings from
FSDD (one speaker's single-digit recordings joined with 0.2 s of silence, 0.3 s of silence
before and after, like a door challenge) and VCC 2018 sentences. The N stored fingerprints
(the door's history) are written straight into a database in the original (schema 1) format
with times inside the window, so no check runs while they are stored; the detector then
opens it as a daemon would after an upgrade. Probes use recordings the history never used,
each recording at most once:

- fresh answers (the same speakers as the history, and VCC speakers reading sentences other
  speakers in the history read too): every one that is flagged is a false replay;
- replays of each fresh answer after it was checked (and so stored): exact, volume x0.3,
  volume x2 clipped, delayed by 0.1-300 ms, a 50 ms click 0.4 s before it, clicks 0.4 s
  before and 0.3 s after it, light noise (Gaussian, RMS 30 on the int16 scale), 0.1 s noise
  bursts at 4x the answer's level 0.2 s before and 0.05 s after it, played 1 % faster,
  30 ms of silence inserted in the middle.

Times are wall-clock per check_and_add() (fingerprinting included), one process pinned to
one core. The probes depend on --seed and on the largest --stored (the history is drawn
first): compare runs made with the same two. `--exact` turns the prefilter off (every stored
answer compared exactly: the reference for its decisions). With the prefilter, the script
also prints its scores: replays (that the exact check catches) against their original, and
fresh answers against the whole history.

`--passphrase DIGITS`: a passphrase door instead, where every genuine answer is the same
phrase by the same few people. Each answer (stored or probe) is those FSDD digits said by
one speaker, a recording of each (never one used twice: a live person never says a word
twice the same way), 0.2 s apart; the history is every such answer the recordings make
(about 20 per speaker and phrase; --stored caps it), in random order, so the stored answers
all look alike to the prefilter and compete for its MAX_EXACT exact comparisons.
`--max-exact K` sets replay.MAX_EXACT (the prefilter's exact comparisons per check) for
the run, to compare the bound with a large value.
"""

from __future__ import annotations

import os

# Before numpy loads its BLAS: one thread, like the daemon.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import csv  # noqa: E402
import inspect  # noqa: E402
import logging  # noqa: E402
import random  # noqa: E402
import sqlite3  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from voxgate import replay  # noqa: E402
from voxgate.audio.file import read_audio  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("VOXGATE_SHARED_DATA", REPO.parent / "shared" / "data"))
GAP = np.zeros(3200, dtype=np.int16)  # 0.2 s between digits
PAD = np.zeros(4800, dtype=np.int16)  # 0.3 s before and after
PROBE_TAKES = 5  # recordings per speaker and digit kept for probes (never in the history)
DAY = 86400.0

_cache: dict[Path, np.ndarray] = {}


def load(path: Path) -> np.ndarray:
    if path not in _cache:
        _cache[path] = read_audio(path)
    return _cache[path]


def join(paths: list[Path]) -> np.ndarray:
    parts = [PAD]
    for i, p in enumerate(paths):
        parts += [GAP, load(p)] if i else [load(p)]
    return np.concatenate([*parts, PAD])


def manifest(name: str) -> list[dict[str, str]]:
    with open(DATA / name / "manifest.csv") as f:
        return list(csv.DictReader(f))


def answers(n_history: int, n_probes: int, seed: int) -> tuple[list, list]:
    """(history, probes): lists of (label, pcm); label = speaker."""
    rng = random.Random(seed)
    by: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for row in manifest("fsdd"):
        by[(row["speaker"], row["text"])].append(DATA / "fsdd" / row["path"])
    speakers = sorted({s for s, _ in by})
    hist_pool = {k: sorted(v)[PROBE_TAKES:] for k, v in by.items()}
    probe_pool = {k: sorted(v)[:PROBE_TAKES] for k, v in by.items()}
    vcc = manifest("vcc2018_eval")
    vcc_spk = sorted({r["speaker"] for r in vcc})
    # History: FSDD strings (9 in 10) and sentences of the first half of the VCC speakers.
    vcc_hist = [DATA / "vcc2018_eval" / r["path"] for r in vcc if r["speaker"] in vcc_spk[:6]]
    history = []
    for _ in range(n_history):
        if rng.random() < 0.1:
            path = rng.choice(vcc_hist)
            history.append((path.parent.name, np.concatenate([PAD, load(path), PAD])))
            continue
        spk = rng.choice(speakers)
        digits = "".join(rng.choice("0123456789") for _ in range(5))
        history.append((spk, join([rng.choice(hist_pool[(spk, d)]) for d in digits])))
    # Probes: FSDD strings using each probe recording once; VCC sentences by the other
    # speakers (the same sentences the history's VCC speakers read).
    probes = []
    left = {k: list(v) for k, v in probe_pool.items()}
    for v in left.values():
        rng.shuffle(v)
    vcc_probe = [DATA / "vcc2018_eval" / r["path"] for r in vcc if r["speaker"] in vcc_spk[6:]]
    rng.shuffle(vcc_probe)
    while len(probes) < n_probes:
        if len(probes) % 4 == 3 and vcc_probe:
            path = vcc_probe.pop()
            probes.append((path.parent.name, np.concatenate([PAD, load(path), PAD])))
            continue
        spk = speakers[len(probes) % len(speakers)]
        digits = [d for d in "0123456789" if left[(spk, d)]]
        if len(digits) < 5:
            break
        picked = rng.sample(digits, 5)
        probes.append((spk, join([left[(spk, d)].pop() for d in picked])))
    return history, probes


def phrase_answers(phrase: str, n_probes: int, seed: int) -> tuple[list, list]:
    """(history, probes) for a passphrase door: `phrase` said by every FSDD speaker, each
    recording used once; the first answers of each speaker in turn are the probes."""
    rng = random.Random(seed)
    by: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for row in manifest("fsdd"):
        by[(row["speaker"], row["text"])].append(DATA / "fsdd" / row["path"])
    speakers = sorted({s for s, _ in by})
    said: dict[str, list[list[Path]]] = {}
    for spk in speakers:
        takes = {d: sorted(by[(spk, d)]) for d in sorted(set(phrase))}  # (set order varies)
        for v in takes.values():
            rng.shuffle(v)
        # A digit said twice in the phrase takes two of its recordings.
        n = min(len(takes[d]) // phrase.count(d) for d in set(phrase))
        said[spk] = [[takes[d].pop() for d in phrase] for _ in range(n)]
    probes = []
    while len(probes) < n_probes and any(said.values()):
        spk = speakers[len(probes) % len(speakers)]
        if said[spk]:
            probes.append((spk, join(said[spk].pop())))
        else:
            speakers.remove(spk)
    history = [(spk, join(paths)) for spk, left in said.items() for paths in left]
    rng.shuffle(history)
    return history, probes


def replays(pcm: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    peak = int(np.abs(pcm).max())
    click = rng.normal(0, peak / 3, 800).clip(-32767, 32767).astype(np.int16)
    noise = rng.normal(0, 30, len(pcm))
    loud = rng.normal(0, peak * 4 / 3, 1600).clip(-32767, 32767).astype(np.int16)  # 0.1 s
    return {
        "exact": pcm,
        "volume x0.3": (pcm * 0.3).astype(np.int16),
        "volume x2 clipped": np.clip(pcm.astype(np.int32) * 2, -32768, 32767).astype(np.int16),
        "delayed 0.1-300 ms": np.concatenate([np.zeros(int(rng.integers(1, 4800)), np.int16), pcm]),
        "click 0.4 s before": np.concatenate([click, np.zeros(6400, np.int16), pcm]),
        "clicks both sides": np.concatenate(
            [click, np.zeros(6400, np.int16), pcm, np.zeros(4800, np.int16), click]
        ),
        "noise RMS 30": np.clip(pcm + noise, -32768, 32767).astype(np.int16),
        # Cheap edits: a burst louder than the answer shifts its loud runs' edges; the last
        # two are not caught by the exact check either (docs/challenge.md).
        "loud bursts both sides": np.concatenate(
            [loud, np.zeros(3200, np.int16), pcm, np.zeros(800, np.int16), loud]
        ),
        "1 % faster": np.interp(np.arange(0, len(pcm) - 1, 1.01), np.arange(len(pcm)), pcm)
        .round()
        .astype(np.int16),
        "30 ms silence mid-answer": np.concatenate(
            [pcm[: len(pcm) // 2], np.zeros(480, np.int16), pcm[len(pcm) // 2 :]]
        ),
    }


def write_history(path: Path, fps: list[tuple[np.ndarray, np.ndarray]], now: float) -> None:
    """The rows check_and_add() stores, in the schema-1 layout, spread over the last 29 days."""
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE fingerprints (id INTEGER PRIMARY KEY, created_at REAL NOT NULL,"
            " frames INTEGER NOT NULL, fp BLOB NOT NULL, loud BLOB NOT NULL)"
        )
        db.execute("CREATE INDEX fp_time ON fingerprints(created_at)")
        db.execute("PRAGMA user_version=1")
        rows = []
        for i, (bits, loud) in enumerate(fps):
            when = now - 29 * DAY + i * (29 * DAY / max(1, len(fps)))
            rows.append(
                (when, int(loud.sum()), bits.astype("<u4").tobytes(), np.packbits(loud).tobytes())
            )
        db.executemany(
            "INSERT INTO fingerprints (created_at, frames, fp, loud) VALUES (?, ?, ?, ?)", rows
        )
    db.close()


def timed(fn: Callable[[], replay.ReplayResult], ms: list[float]) -> replay.ReplayResult:
    t0 = time.perf_counter()
    res = fn()
    ms.append((time.perf_counter() - t0) * 1000)
    return res


def run(
    n: int, history_fps: list, probes: list, seed: int, window_days: float, exact: bool
) -> dict:
    rng = np.random.default_rng(seed)
    now = 100 * DAY
    with tempfile.TemporaryDirectory(prefix="bench_replay_") as tmp:
        path = Path(tmp) / "replay.db"
        write_history(path, history_fps[:n], now)
        t0 = time.perf_counter()
        kw = {"exact_only": True} if exact else {}
        det = replay.ReplayDetector(path, window_s=window_days * DAY, **kw)
        open_ms = (time.perf_counter() - t0) * 1000
        ms: list[float] = []
        fresh_flagged, fresh_max, examined = 0, 0.0, []
        caught: dict[str, int] = defaultdict(int)
        lowest: dict[str, float] = defaultdict(lambda: 1.0)
        for _label, pcm in probes:
            now += 60
            res = timed(lambda pcm=pcm, now=now: det.check_and_add(pcm, now), ms)
            fresh_flagged += res.is_replay
            fresh_max = max(fresh_max, res.similarity)
            examined.append(getattr(det, "last_examined", -1))
            for name, x in replays(pcm, rng).items():
                now += 60
                res = timed(lambda x=x, now=now: det.check_and_add(x, now), ms)
                caught[name] += res.is_replay
                examined.append(getattr(det, "last_examined", -1))
                lowest[name] = min(lowest[name], res.similarity)
        stored = det.count()
        det.close()
    return {
        "n": n,
        "open_ms": open_ms,
        "ms": ms,
        "stored_after": stored,
        "fresh": len(probes),
        "fresh_flagged": fresh_flagged,
        "fresh_max": fresh_max,
        "caught": dict(caught),
        "lowest": dict(lowest),
        "examined": examined,
    }


def margins(history_fps: list, probes: list, seed: int) -> None:
    """The prefilter's own scores: each replay against its original alone (the exact check
    decides whether it is caught), and each fresh probe against the whole history."""
    from voxgate.replay_index import COARSE_MIN, FingerprintIndex

    rng = np.random.default_rng(seed)
    sub = replay.SUB_HOP[replay.COARSE_VIEW]

    def views(pcm: np.ndarray) -> list:
        return [replay.fingerprint(pcm), replay.fingerprint(pcm[sub:])]

    def band(fp: tuple) -> tuple[int, int]:
        count = int(fp[1].sum())
        return int(count * 0.8), int(count / 0.8) + 1

    history = FingerprintIndex()
    for i, fp in enumerate(history_fps):
        history.add(i, 0.0, *fp)
    lowest, worst, unrelated, above = 1.0, "", 0.0, 0
    for _, pcm in probes:
        v = views(pcm)
        if len(history):
            score = history.coarse(v, *band(v[0]))
            unrelated = max(unrelated, float(score.max()))
            above += int((score >= COARSE_MIN).sum())
        original = replay.fingerprint(pcm)
        alone = FingerprintIndex()
        alone.add(0, 0.0, *original)
        for name, x in replays(pcm, rng).items():
            vx = views(x)
            full = [replay.fingerprint(x[k:]) for k in replay.SUB_HOP]
            lo, hi = band(vx[0])
            if (
                not lo <= int(original[1].sum()) <= hi  # the check compares these only
                or replay.best_similarity(full, original) < replay.DEFAULT_THRESHOLD
            ):
                continue  # not caught by the exact check either
            score = float(alone.coarse(vx, lo, hi)[0])
            if score < lowest:
                lowest, worst = score, name
    print(
        f"\nprefilter scores (COARSE_MIN {COARSE_MIN}): replays the exact check catches, "
        f"against their original: lowest {lowest:.2f} ({worst}); fresh probes against "
        f"{len(history)} stored answers: highest {unrelated:.2f}, {above} pairs of "
        f"{len(probes) * len(history)} at or above COARSE_MIN"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stored", type=int, nargs="+", default=[0, 100, 1000, 3000])
    ap.add_argument("--probes", type=int, default=20, help="fresh answers (each replayed 10 ways)")
    ap.add_argument("--cpu", type=int, default=0, help="core to pin to (default 0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--window-days", type=float, default=30.0)
    ap.add_argument(
        "--passphrase",
        metavar="DIGITS",
        help="a passphrase door: every answer says these FSDD digits (e.g. 291)",
    )
    ap.add_argument(
        "--max-exact",
        type=int,
        help=f"stored answers compared exactly per check at most (default {replay.MAX_EXACT})",
    )
    ap.add_argument(
        "--exact",
        action="store_true",
        help="compare every stored answer exactly (no prefilter: the reference)",
    )
    args = ap.parse_args()
    if (
        min(args.stored) < 0
        or args.probes < 1
        or (args.max_exact is not None and args.max_exact < 1)
    ):
        print(
            "bench_replay.py: --stored must be >= 0, --probes and --max-exact >= 1",
            file=sys.stderr,
        )
        return 2
    if args.passphrase is not None and (
        not args.passphrase.isdigit() or not 1 <= len(args.passphrase) <= 5
    ):
        print("bench_replay.py: --passphrase takes 1-5 digits (e.g. 291)", file=sys.stderr)
        return 2
    if args.max_exact is not None:
        replay.MAX_EXACT = args.max_exact
    if (
        not (DATA / "fsdd" / "manifest.csv").exists()
        or not (DATA / "vcc2018_eval" / "manifest.csv").exists()
    ):
        print(f"bench_replay.py: skipped: no evaluation audio at {DATA} (fsdd, vcc2018_eval)")
        return 0
    has_prefilter = "exact_only" in inspect.signature(replay.ReplayDetector).parameters
    if args.exact and not has_prefilter:
        print("bench_replay.py: this voxgate has no prefilter: every check is exact already")
        args.exact = False
    logging.getLogger("voxgate.replay").setLevel(logging.ERROR)  # one line per replay
    if hasattr(os, "sched_setaffinity"):
        if args.cpu not in os.sched_getaffinity(0):
            print(f"bench_replay.py: --cpu {args.cpu} is not available", file=sys.stderr)
            return 2
        os.sched_setaffinity(0, {args.cpu})
    t0 = time.perf_counter()
    if args.passphrase:
        history, probes = phrase_answers(args.passphrase, args.probes, args.seed)
        if len(history) < max(args.stored):
            print(
                f"bench_replay.py: the recordings make {len(history)} stored answers of "
                f"{args.passphrase!r} besides the probes: --stored above it uses them all"
            )
        args.stored = sorted({min(n, len(history)) for n in args.stored})
    else:
        history, probes = answers(max(args.stored), args.probes, args.seed)
    history_fps = [replay.fingerprint(pcm) for _, pcm in history]
    print(
        f"data: {len(history)} stored answers, {len(probes)} fresh probes "
        f"({sum(1 for s, _ in probes if s.startswith('VCC'))} VCC sentences), "
        f"built in {time.perf_counter() - t0:.1f} s; pinned to core {args.cpu}; "
        + ("prefilter" if has_prefilter and not args.exact else "every stored answer exactly")
        + (f" (MAX_EXACT {replay.MAX_EXACT})" if has_prefilter and not args.exact else "")
        + (f"; passphrase door: every answer says {args.passphrase}" if args.passphrase else "")
    )
    if has_prefilter:
        margins(history_fps, probes, args.seed)
    for n in args.stored:
        r = run(n, history_fps, probes, args.seed, args.window_days, args.exact)
        ms = sorted(r["ms"])
        p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
        print(
            f"\nstored N={n:5d}: {len(ms)} checks  per check: "
            f"median {statistics.median(ms):8.1f} ms"
            f"  p95 {p95:8.1f} ms  mean {statistics.fmean(ms):8.1f} ms"
            f"  (open {r['open_ms']:.0f} ms, rows after {r['stored_after']})"
        )
        if min(r["examined"]) >= 0:
            ex = r["examined"]
            print(f"  compared exactly per check: mean {statistics.fmean(ex):.1f}, max {max(ex)}")
        print(
            f"  fresh answers flagged as replays: {r['fresh_flagged']} / {r['fresh']}"
            f"  (highest similarity {r['fresh_max']:.2f})"
        )
        for name, k in r["caught"].items():
            print(f"  {name:20s} caught {k:3d} / {r['fresh']}  (lowest {r['lowest'][name]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
