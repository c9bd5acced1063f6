"""Two voices enrolled as one: how far apart do the two halves of a take set sound?

Builds enrollment take sets from ../shared/data, embeds every take once with the shipped
speaker model (the same `embed` the enrollment check calls; takes the quality checks reject
are left out), and applies the enrollment check's two-voices rule (`enrollment.two_voices`):
the good takes are split into the two groups that sound farthest apart (`split_two`: the
best bipartition of the centred unit embeddings, 2+ takes a group) and the statistic is the
scorer's centred cosine between the two groups' voiceprints. One speaker gives two groups
that still sound alike; two speakers give two that do not. Below speaker.enroll_two_voices_
cosine the enrollment is refused, unless the outlier rule dropped the whole smaller group.

The outlier rule (a take inconsistent with the others is dropped and named) is judged on the
same sets, with each --rules rule in turn: "shipped" is enrollment.find_outliers as
check_takes calls it; "raw" (leave-one-out raw cosine, one pass: the shipped rule, written
out so a comparison outlives a change to it), "centred" (leave-one-out with the scorer's
centred cosine), "iterative" (raw, the worst flagged take dropped and the rest judged again)
and "both" are the candidates measured against it (same OUTLIER_Z, OUTLIER_MIN_GAP and
a-third cap; docs/speaker-verification.md has the figures and the verdict). Per rule:
genuine sets refused, and their takes dropped as outliers (sets losing one or more, and
takes); mixed sets refused, "two voices enrolled" (another voice's take averaged in) and the
other voice dropped whole (stored with the majority's takes only). With --noisy, each
genuine take is also mixed with a piece of a real noise (../shared/data/noise) at the
lowest SNR of NOISY_SNRS the take gate still passes, and "noisy+other" sets are n-2 clean
takes of one speaker, a noisy take of that speaker and one take of another: is the other
voice dropped when a noisy take inflates the spread?

Sets (takes per set in brackets):
  fsdd: 4-digit strings, like the protocol's takes; 6 speakers, all male [10]
  vcc2018_eval: one sentence per take; 12 speakers, F/M in the name [10]
  resemblyzer_ls: each utterance cut into 2.5-3.5 s pieces; the 10 test speakers [10]
  speechcommands_v001_sample: 3 one-word files per take; speakers with >= 18 words [6]
Genuine sets: --draws random take sets of one speaker's takes. Mixed sets: k random takes of
one speaker and n-k of another, for every ordered pair (k = n/2 .. n-1). "refused" counts
the rule's refusals; "two voices enrolled" counts mixed sets stored with takes of both
speakers (neither refused nor the other voice dropped whole as outliers).

    PYTHONPATH=daemon python benchmarks/enroll_two_voices.py [--level 0.62] [--draws 20]
        [--rules shipped raw centred iterative both] [--noisy] [--sets fsdd ...]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import random
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voxgate.audio.file import read_audio
from voxgate.cohort import centered_cosine
from voxgate.config.speaker import SpeakerConfig
from voxgate.enrollment import (
    OUTLIER_MIN_GAP,
    OUTLIER_Z,
    TWO_VOICES_MIN_GROUP,
    find_outliers,
    split_two,
    take_problem,
    two_voices,
)
from voxgate.evaluation import load_recording
from voxgate.quality import assess
from voxgate.voiceprints import l2_normalize

try:
    from benchmarks.noise_gate import mix
except ImportError:  # run as a script: benchmarks/ itself is on the path
    from noise_gate import mix

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
NOISY_SNRS = (5, 10, 15, 20, 25, 30, 35, 40)  # dB over the speech; the lowest that passes


@dataclass
class Take:
    speaker: str
    emb: np.ndarray | None  # None: the enrollment check rejects the take's audio
    noisy: np.ndarray | None = None  # --noisy: the take with noise the take gate passes
    snr: float | None = None  # ... mixed in at this SNR (dB)


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def fsdd_takes(root: Path, rng: random.Random) -> dict[str, list[list[str]]]:
    by: dict[str, list[str]] = defaultdict(list)
    for row in csv_rows(root / "manifest.csv"):
        by[row["speaker"]].append(row["path"])
    out = {}
    for spk, paths in sorted(by.items()):
        rng.shuffle(paths)
        out[spk] = [paths[i : i + 4] for i in range(0, len(paths) - 3, 4)]
    return out


def words_takes(root: Path, rng: random.Random, per: int, least: int) -> dict[str, list[list[str]]]:
    by: dict[str, list[str]] = defaultdict(list)
    for row in csv_rows(root / "manifest.csv"):
        by[row["speaker"]].append(row["path"])
    out = {}
    for spk, paths in sorted(by.items()):
        if len(paths) < least:
            continue
        rng.shuffle(paths)
        out[spk] = [paths[i : i + per] for i in range(0, len(paths) - per + 1, per)]
    return out


def load_parts(root: Path, parts: list[str]) -> np.ndarray:
    return load_recording(root, ";".join(parts))


def ls_pieces(pcm: np.ndarray, rng: random.Random) -> list[np.ndarray]:
    out, start = [], 0
    while True:
        n = int(rng.uniform(2.5, 3.5) * 16000)
        if start + n > len(pcm):
            return out
        out.append(pcm[start : start + n])
        start += n


def embed_set(
    name: str,
    embedder: Any,
    cfg: SpeakerConfig,
    rng: random.Random,
    noises: list[np.ndarray] | None = None,
) -> dict[str, list[Take]]:
    root = DATA / name
    audio: dict[str, list[np.ndarray]] = {}
    if name == "fsdd":
        for spk, takes in fsdd_takes(root, rng).items():
            audio[spk] = [load_parts(root, t) for t in takes]
    elif name == "speechcommands_v001_sample":
        for spk, takes in words_takes(root, rng, 3, 18).items():
            audio[spk] = [load_parts(root, t) for t in takes]
    elif name == "vcc2018_eval":
        for spk, takes in words_takes(root, rng, 1, 1).items():
            audio[spk] = [load_parts(root, t) for t in takes]
    else:  # resemblyzer_ls: the 10 test speakers only (the cohort pool has one file each)
        spk_ids = sorted({r["model"] for r in csv_rows(root / "enroll.csv")})
        rows = [r for r in csv_rows(root / "manifest.csv") if r["speaker"] in spk_ids]
        by: dict[str, list[np.ndarray]] = defaultdict(list)
        for r in rows:
            by[r["speaker"]] += ls_pieces(load_parts(root, [r["path"]]), rng)
        for spk, pieces in by.items():
            rng.shuffle(pieces)
            audio[spk] = pieces
    out: dict[str, list[Take]] = {}
    pick = np.random.default_rng(rng.randrange(2**32))  # noise type and piece per take
    for spk, takes in audio.items():
        out[spk] = []
        for pcm in takes:
            emb = embed_take(pcm, embedder, cfg)
            take = Take(spk, emb)
            if noises and emb is not None:
                noise = noises[int(pick.integers(len(noises)))]
                start = int(pick.integers(len(noise) - len(pcm)))
                piece = noise[start : start + len(pcm)]
                for snr in NOISY_SNRS:
                    noisy = embed_take(mix(pcm, piece, snr), embedder, cfg)
                    if noisy is not None:
                        take.noisy, take.snr = noisy, snr
                        break
            out[spk].append(take)
    return out


def embed_take(pcm: np.ndarray, embedder: Any, cfg: SpeakerConfig) -> np.ndarray | None:
    """The take's embedding, or None when the enrollment check would reject it."""
    if take_problem(assess(pcm), cfg) is not None:
        return None
    try:
        return np.asarray(embedder.embed(pcm))
    except Exception:  # as check_takes: no embedding, take rejected
        return None


Rule = Callable[[np.ndarray, np.ndarray], list[int]]


def candidate(centred: bool, iterate: bool) -> Rule:
    """An outlier rule: leave-one-out cosine of each take to the normalised mean of the
    others (`centred`: the scorer's centred cosine; else raw), robust z < -OUTLIER_Z and
    OUTLIER_MIN_GAP below the median, at most a third of the takes; `iterate`: drop the
    worst flagged take and judge the rest again, else all flagged takes in one pass."""

    def rule(embeddings: np.ndarray, center: np.ndarray) -> list[int]:
        e = l2_normalize(np.asarray(embeddings, np.float64))
        n = len(e)
        kept, out = list(range(n)), []
        while n >= 3 and len(out) < n // 3:
            sub = e[kept]
            means = l2_normalize(sub.sum(axis=0) - sub)
            loo = centered_cosine(means, sub, center) if centred else np.sum(means * sub, 1)
            med = np.median(loo)
            z = (loo - med) / (1.4826 * np.median(np.abs(loo - med)) + 0.01)
            flagged = [kept[j] for j in np.argsort(z) if z[j] < -OUTLIER_Z]
            flagged = [i for i in flagged if med - loo[kept.index(i)] > OUTLIER_MIN_GAP]
            if not flagged:
                break
            if not iterate:
                return flagged[: n // 3]
            out.append(flagged[0])
            kept.remove(flagged[0])
        return out

    return rule


RULES: dict[str, Rule] = {
    "shipped": lambda e, center: find_outliers(e)[0],
    "raw": candidate(centred=False, iterate=False),
    "centred": candidate(centred=True, iterate=False),
    "iterative": candidate(centred=False, iterate=True),
    "both": candidate(centred=True, iterate=True),
}


@dataclass
class Outcome:
    cosine: float  # first-pass split cosine (the outlier rule plays no part in it)
    refused: bool  # by the two-voices rule
    dropped: set[int]  # takes the outlier rule dropped
    other: set[int]  # the other voice's takes (empty for a genuine set)
    noisy: int | None = None  # the noisy take's index (noisy+other sets)

    @property
    def two_voices(self) -> bool:
        """Stored with a take of the other voice averaged in."""
        return bool(self.other) and not self.refused and not self.other <= self.dropped

    @property
    def other_dropped(self) -> bool:
        """Stored with the other voice's takes all dropped as outliers."""
        return bool(self.other) and not self.refused and self.other <= self.dropped


def judge(
    embs: list[np.ndarray],
    center: np.ndarray,
    level: float,
    rules: list[str],
    minority: int = 0,
    noisy: int | None = None,
) -> dict[str, Outcome]:
    """Each rule's outcome for a take set whose last `minority` takes are the other voice
    (0 for a genuine set)."""
    e = np.stack(embs)
    split = split_two(e, center, TWO_VOICES_MIN_GROUP)
    cosine = split.cosine if split is not None else 1.0
    other = set(range(len(e) - minority, len(e)))
    out = {}
    for name in rules:
        outliers = RULES[name](e, center)
        refused = two_voices(e, outliers, center, level) is not None
        out[name] = Outcome(cosine, refused, set(outliers), other, noisy)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--sets",
        nargs="*",
        default=["fsdd", "vcc2018_eval", "resemblyzer_ls", "speechcommands_v001_sample"],
    )
    ap.add_argument(
        "--level",
        type=float,
        default=SpeakerConfig().enroll_two_voices_cosine,
        help="speaker.enroll_two_voices_cosine (default: the shipped one)",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--draws", type=int, default=20, help="random take sets per speaker/pair")
    ap.add_argument(
        "--rules", nargs="*", default=["shipped"], choices=list(RULES), help="outlier rules"
    )
    ap.add_argument("--noisy", action="store_true", help="also noisy+other take sets")
    args = ap.parse_args()
    if not DATA.is_dir():
        print(f"no data at {DATA}", file=sys.stderr)
        return 2
    from voxgate import cohort as cohort_mod
    from voxgate.embedding import load_embedder

    embedder = load_embedder()
    cohort = cohort_mod.for_model(embedder.model_id)
    assert cohort.center is not None
    center = cohort.center
    cfg = SpeakerConfig()
    print(
        f"model {embedder.model_id}; verification threshold at target_fmr "
        f"{cfg.target_fmr:g}: {cohort.threshold_for(cfg.target_fmr):.3f} (centred cosine)"
    )
    noises = None
    if args.noisy:
        noise_dir = DATA / "noise"
        names = [r["path"] for r in csv_rows(noise_dir / "manifest.csv")]
        noises = [read_audio(noise_dir / n).astype(np.float64) for n in names]
    for name in args.sets:
        rng = random.Random(args.seed)
        takes = embed_set(name, embedder, cfg, rng, noises)
        n = 6 if name == "speechcommands_v001_sample" else 10
        good = {spk: [t for t in ts if t.emb is not None] for spk, ts in takes.items()}
        good = {spk: ts for spk, ts in good.items() if len(ts) >= n}
        pool = {spk: [t.emb for t in ts if t.emb is not None] for spk, ts in good.items()}
        draw = random.Random(args.seed)
        genuine = [
            judge(draw.sample(p, n), center, args.level, args.rules)
            for p in pool.values()
            for _ in range(args.draws)
        ]
        rejected = sum(t.emb is None for ts in takes.values() for t in ts)
        total = sum(len(ts) for ts in takes.values())
        print(
            f"\n== {name}: {len(pool)} speakers, {total} takes ({rejected} rejected by "
            f"quality), {n} takes a set, {args.draws} random sets per speaker or pair"
        )
        line("genuine", genuine, args.level, args.rules, genuine=True, size=n)
        for k in range(n // 2, n):
            mixed, same = [], []
            worst: dict[tuple[str, str], float] = {}
            for a, b in itertools.permutations(pool, 2):
                if k == n - k and a > b:
                    continue  # 5+5 of (a, b) and (b, a) are the same kind of set
                for _ in range(args.draws):
                    emb = draw.sample(pool[a], k) + draw.sample(pool[b], n - k)
                    s = judge(emb, center, args.level, args.rules, n - k)
                    mixed.append(s)
                    first = s[args.rules[0]]
                    if first.two_voices:
                        worst[(a, b)] = max(worst.get((a, b), -1.0), first.cosine)
                    if name == "vcc2018_eval" and a[-2] == b[-2]:
                        same.append(s)
            line(f"mixed {k}+{n - k}", mixed, args.level, args.rules)
            if same:
                line(f"  same gender {k}+{n - k}", same, args.level, args.rules)
            if k == n - k:
                for v, (a, b) in sorted((v, p) for p, v in worst.items())[::-1]:
                    print(f"    two voices enrolled: {a}+{b} (highest split cosine {v:.3f})")
        if noises:
            noisy_other(good, n, center, args, draw)
    return 0


def noisy_other(
    good: dict[str, list[Take]],
    n: int,
    center: np.ndarray,
    args: argparse.Namespace,
    draw: random.Random,
) -> None:
    """n-2 clean takes of a speaker, another of theirs with noise, one of another speaker."""
    sets = []
    snrs = [t.snr for ts in good.values() for t in ts if t.snr is not None]
    for a, b in itertools.permutations(good, 2):
        with_noise = [i for i, t in enumerate(good[a]) if t.noisy is not None]
        if not with_noise:
            continue
        for _ in range(args.draws):
            j = draw.choice(with_noise)
            rest = [t.emb for i, t in enumerate(good[a]) if i != j and t.emb is not None]
            noisy = good[a][j].noisy
            other = draw.choice(good[b]).emb
            assert noisy is not None and other is not None
            emb = [*draw.sample(rest, n - 2), noisy, other]
            sets.append(judge(emb, center, args.level, args.rules, 1, n - 2))
    q = np.percentile(snrs, [0, 50, 100]) if snrs else [np.nan] * 3
    print(
        f"noisy+other: {n - 2} clean + 1 noisy + 1 other (noisy takes at SNR {q[0]:g}-"
        f"{q[2]:g} dB, median {q[1]:g}; {len(snrs)} takes)"
    )
    line(f"  {n - 2}+1 noisy+1 other", sets, args.level, args.rules)


def line(
    label: str,
    sets: list[dict[str, Outcome]],
    level: float,
    rules: list[str],
    genuine: bool = False,
    size: int = 0,
) -> None:
    v = np.array([s[rules[0]].cosine for s in sets])
    q = np.percentile(v, [0, 5, 50, 95, 100])
    print(
        f"{label:22s} n={len(v):4d}  split cosine min {q[0]:.3f} p5 {q[1]:.3f} "
        f"median {q[2]:.3f} p95 {q[3]:.3f} max {q[4]:.3f}  | at {level:g}:"
    )
    for rule in rules:
        got = [s[rule] for s in sets]
        refused = sum(o.refused for o in got)
        text = f"    {rule:10s} "
        if genuine:
            takes = sum(len(o.dropped) for o in got)
            lost = sum(bool(o.dropped) for o in got)
            text += (
                f"refused {refused}/{len(v)} ({100 * refused / len(v):.1f} %); takes dropped "
                f"as outliers: sets {lost}/{len(v)}, takes {takes}/{len(v) * size}"
            )
        else:
            enrolled = sum(o.two_voices for o in got)
            whole = sum(o.other_dropped for o in got)
            text += (
                f"refused {refused}, two voices enrolled {enrolled}/{len(v)} "
                f"({100 * enrolled / len(v):.1f} %), other voice dropped whole {whole}"
            )
            if got[0].noisy is not None:
                noisy = sum(o.noisy in o.dropped for o in got)
                text += f", noisy take dropped {noisy}"
        print(text)


if __name__ == "__main__":
    sys.exit(main())
