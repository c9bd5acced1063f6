"""One voice under two names: how often does enrollment's same-voice warning fire, for two
different people and for one person enrolled twice?

Enrollment scores the new voiceprint against every other enrolled user's with the door's
scorer and threshold (enrollment.same_voice) and warns at or above it. This builds, per
evaluation set in ../shared/data, the voiceprint of every protocol model from its enroll.csv
takes (enrollment.check_takes, as stored: the mean of the accepted takes; the shipped model
and cohort, the default speaker.target_fmr's 1:1 threshold), plus up to --again more
voiceprints per speaker from that speaker's genuine trial recordings in groups of as many
takes as the model has (the same person enrolling again from other recordings; no recording
is used twice). Then it scores every pair of voiceprints:
  different speakers: two people; a warning here is a false alarm (relatives, or a door
    whose threshold is loose); compare with speaker.target_fmr
  same speaker: one person under two names; a warning here is the warning doing its job
and prints the pairs at or above the threshold, the highest different-speaker score and
the lowest same-speaker one. Pairs share no recording, but many pairs share speakers (the
same two voices compared through other recordings), so the interval on the rates is
optimistic; the count of speaker pairs with any warning says how many pairs of people it
concerns. The sets are small (6-19 speakers).

    PYTHONPATH=daemon python benchmarks/same_voice.py [--sets fsdd vcc2018_eval ...]
        [--again 3]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("VOXGATE_SHARED_DATA", REPO.parent / "shared" / "data"))
SETS = ("fsdd", "vcc2018_eval", "speechcommands_v001_sample")


class Print:
    """What Scorer.score reads of a voiceprint."""

    def __init__(self, speaker: str, label: str, mean: np.ndarray) -> None:
        self.speaker, self.label, self.mean = speaker, label, mean


def voiceprint(takes: list[np.ndarray], embedder: Any, cfg: Any) -> np.ndarray | None:
    """The stored voiceprint's mean from these takes (the enrollment checks applied; the
    minimums of takes and speech are not: a protocol model has 2-3 short takes)."""
    from voxgate.enrollment import check_takes
    from voxgate.voiceprints import mean_embedding

    result = check_takes(takes, embedder, cfg)
    return mean_embedding(result.embeddings) if len(result.embeddings) else None


def prints_of(name: str, embedder: Any, cfg: Any, again: int) -> list[Print]:
    from voxgate.evaluation import load_recording, read_set

    es = read_set(DATA / name)
    out: list[Print] = []
    used = {r for recs in es.enroll.values() for r in recs}
    genuine: dict[str, list[str]] = defaultdict(list)
    for model, rec, target in es.trials:
        if target and rec not in used and rec not in genuine[model]:
            genuine[model].append(rec)
    for model, recs in sorted(es.enroll.items()):
        speaker = es.speaker(recs[0])
        mean = voiceprint([load_recording(es.root, r) for r in recs], embedder, cfg)
        if mean is not None:
            out.append(Print(speaker, model, mean))
        pool = genuine[model]
        for k in range(min(again, len(pool) // len(recs))):
            group = pool[k * len(recs) : (k + 1) * len(recs)]
            mean = voiceprint([load_recording(es.root, r) for r in group], embedder, cfg)
            if mean is not None:
                out.append(Print(speaker, f"{model}+{k + 1}", mean))
    return out


def interval(k: int, n: int) -> str:
    from voxgate.evaluation import binomial_interval

    if n == 0:
        return "-"
    lo, hi = binomial_interval(k, n)
    return f"{100 * k / n:.1f} % (95 % CI {100 * lo:.1f}-{100 * hi:.1f} %)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", nargs="*", default=list(SETS))
    ap.add_argument("--again", type=int, default=3, help="more voiceprints per speaker (default 3)")
    args = ap.parse_args()
    missing = [s for s in args.sets if not (DATA / s / "enroll.csv").exists()]
    if missing:
        print(f"skipped: no evaluation data at {DATA} for {', '.join(missing)} "
              "(set VOXGATE_SHARED_DATA)", file=sys.stderr)  # fmt: skip
        return 0
    from voxgate import cohort as cohort_mod
    from voxgate.config.speaker import SpeakerConfig
    from voxgate.embedding import load_embedder
    from voxgate.scoring import Scorer

    embedder = load_embedder()
    cfg = SpeakerConfig()
    cohort = cohort_mod.for_model(embedder.model_id, None, cohort_mod.model_sha256(embedder))
    scorer = Scorer(None, embedder, cfg, cohort)  # type: ignore[arg-type]  # score() only
    threshold = scorer.threshold(1)
    print(f"model {embedder.model_id}, threshold {threshold:.3f} (speaker.target_fmr "
          f"{cfg.target_fmr:g}, 1:1); voiceprints: the protocol's + up to {args.again} more "
          "a speaker")  # fmt: skip
    for name in args.sets:
        prints = prints_of(name, embedder, cfg, args.again)
        scores: dict[bool, list[tuple[float, str, str]]] = {True: [], False: []}
        flagged: dict[tuple[str, ...], bool] = {}  # speaker pair -> any pair warned
        for a, b in itertools.combinations(prints, 2):
            score, _ = scorer.score(a.mean, b)  # type: ignore[arg-type]
            scores[a.speaker == b.speaker].append((score, a.label, b.label))
            if a.speaker != b.speaker:
                pair = tuple(sorted((a.speaker, b.speaker)))
                flagged[pair] = flagged.get(pair, False) or score >= threshold
        speakers = len({p.speaker for p in prints})
        print(f"\n{name}: {speakers} speakers, {len(prints)} voiceprints")
        for same, what in ((False, "different speakers"), (True, "same speaker")):
            got = scores[same]
            hits = [s for s in got if s[0] >= threshold]
            print(f"  {what:18s}: {len(hits)} of {len(got)} pairs at/above the threshold, "
                  f"{interval(len(hits), len(got))}")  # fmt: skip
            if got:
                edge = max(got) if not same else min(got)
                word = "highest" if not same else "lowest"
                print(f"    {word} score {edge[0]:.3f} ({edge[1]} / {edge[2]})")
            if not same:
                protocol = [x for x in got if "+" not in x[1] + x[2]]
                above = sum(x[0] >= threshold for x in protocol)
                print(f"    the protocol's models alone: {above} of {len(protocol)} pairs")
                print(f"    speaker pairs with a warning for any of their voiceprints: "
                      f"{sum(flagged.values())} of {len(flagged)}")  # fmt: skip
                for s, x, y in sorted(hits, reverse=True)[:5]:
                    print(f"    {x} / {y}: {s:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
