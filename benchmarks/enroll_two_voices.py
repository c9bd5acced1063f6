"""Two voices enrolled as one: how far apart do the two halves of a take set sound?

Builds enrollment take sets from ../shared/data, embeds every take once with the shipped
speaker model (the same `embed` the enrollment check calls; takes the quality checks reject
are left out), and applies the enrollment check's two-voices rule (`enrollment.two_voices`):
the good takes are split into the two groups that sound farthest apart (`split_two`: the
best bipartition of the centred unit embeddings, 2+ takes a group) and the statistic is the
scorer's centred cosine between the two groups' voiceprints. One speaker gives two groups
that still sound alike; two speakers give two that do not. Below speaker.enroll_two_voices_
cosine the enrollment is refused, unless the outlier rule dropped the whole smaller group.

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
"""

from __future__ import annotations

import argparse
import csv
import itertools
import random
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voxgate.config.speaker import SpeakerConfig
from voxgate.enrollment import (
    TWO_VOICES_MIN_GROUP,
    find_outliers,
    split_two,
    take_problem,
    two_voices,
)
from voxgate.evaluation import load_recording
from voxgate.quality import assess

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


@dataclass
class Take:
    speaker: str
    emb: np.ndarray | None  # None: the enrollment check rejects the take's audio


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
    name: str, embedder: Any, cfg: SpeakerConfig, rng: random.Random
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
    for spk, takes in audio.items():
        out[spk] = []
        for pcm in takes:
            bad = take_problem(assess(pcm), cfg)
            emb = None
            if bad is None:
                try:
                    emb = embedder.embed(pcm)
                except Exception:  # as check_takes: no embedding, take rejected
                    emb = None
            out[spk].append(Take(spk, emb))
    return out


def statistic(
    embs: list[np.ndarray], center: np.ndarray, level: float, minority: int = 0
) -> tuple[float, bool, bool]:
    """(split cosine, refused by the two-voices rule, the other voice still enrolled) for a
    take set whose last `minority` takes are the other voice (0 for a genuine set)."""
    e = np.stack(embs)
    outliers, _ = find_outliers(e)
    split = split_two(e, center, TWO_VOICES_MIN_GROUP)
    refused = two_voices(e, outliers, center, level) is not None
    other = set(range(len(e) - minority, len(e)))
    enrolled = minority > 0 and not refused and not other <= set(outliers)
    return (split.cosine if split is not None else 1.0), refused, enrolled


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
    args = ap.parse_args()
    if not DATA.is_dir():
        print(f"no data at {DATA}", file=sys.stderr)
        return 2
    from voxgate import cohort as cohort_mod
    from voxgate.embedding import load_embedder

    embedder = load_embedder()
    cohort = cohort_mod.for_model(embedder.model_id)
    assert cohort.center is not None
    cfg = SpeakerConfig()
    print(
        f"model {embedder.model_id}; verification threshold at target_fmr "
        f"{cfg.target_fmr:g}: {cohort.threshold_for(cfg.target_fmr):.3f} (centred cosine)"
    )
    for name in args.sets:
        rng = random.Random(args.seed)
        takes = embed_set(name, embedder, cfg, rng)
        n = 6 if name == "speechcommands_v001_sample" else 10
        pool = {spk: [t.emb for t in ts if t.emb is not None] for spk, ts in takes.items()}
        pool = {spk: p for spk, p in pool.items() if len(p) >= n}
        draw = random.Random(args.seed)
        genuine = [
            statistic(draw.sample(p, n), cohort.center, args.level)
            for p in pool.values()
            for _ in range(args.draws)
        ]
        rejected = sum(t.emb is None for ts in takes.values() for t in ts)
        total = sum(len(ts) for ts in takes.values())
        print(
            f"\n== {name}: {len(pool)} speakers, {total} takes ({rejected} rejected by "
            f"quality), {n} takes a set, {args.draws} random sets per speaker or pair"
        )
        line("genuine", genuine, args.level, genuine=True)
        for k in range(n // 2, n):
            mixed, same = [], []
            worst: dict[tuple[str, str], float] = {}
            for a, b in itertools.permutations(pool, 2):
                if k == n - k and a > b:
                    continue  # 5+5 of (a, b) and (b, a) are the same kind of set
                for _ in range(args.draws):
                    emb = draw.sample(pool[a], k) + draw.sample(pool[b], n - k)
                    s = statistic(emb, cohort.center, args.level, n - k)
                    mixed.append(s)
                    if s[2]:
                        worst[(a, b)] = max(worst.get((a, b), -1.0), s[0])
                    if name == "vcc2018_eval" and a[-2] == b[-2]:
                        same.append(s)
            line(f"mixed {k}+{n - k}", mixed, args.level)
            if same:
                line(f"  same gender {k}+{n - k}", same, args.level)
            if k == n - k:
                for v, (a, b) in sorted((v, p) for p, v in worst.items())[::-1]:
                    print(f"    two voices enrolled: {a}+{b} (highest split cosine {v:.3f})")
    return 0


def line(
    label: str, values: list[tuple[float, bool, bool]], level: float, genuine: bool = False
) -> None:
    v = np.array([x[0] for x in values])
    refused = sum(x[1] for x in values)
    enrolled = sum(x[2] for x in values)
    q = np.percentile(v, [0, 5, 50, 95, 100])
    text = (
        f"{label:22s} n={len(v):4d}  split cosine min {q[0]:.3f} p5 {q[1]:.3f} "
        f"median {q[2]:.3f} p95 {q[3]:.3f} max {q[4]:.3f}  | at {level:g}: "
    )
    if genuine:
        text += f"refused {refused}/{len(v)} ({100 * refused / len(v):.1f} %)"
    else:
        text += (
            f"refused {refused}, two voices enrolled {enrolled}/{len(v)} "
            f"({100 * enrolled / len(v):.1f} %)"
        )
    print(text)


if __name__ == "__main__":
    sys.exit(main())
