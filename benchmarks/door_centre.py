"""Centre the scores on the door's own enrolled users instead of the cohort: measured, not
adopted (docs/speaker-verification.md, "Back-end variants").

    PYTHONPATH=daemon python benchmarks/speaker_eval.py --data ../shared/data --out eval-out
    PYTHONPATH=daemon python benchmarks/door_centre.py --data ../shared/data --out eval-out

A door's enrolled voiceprints were recorded through its own microphone, so their mean looks
like the channel-matched centre the LibriSpeech cohort cannot give. From the int8 embedding
caches, every protocol take enrolled (no enrollment checks), the centred cosine is scored
with the centre taken as:
  cohort          the shipped cohort's centre (the shipped back end)
  door, closed    the mean of the other enrolled users' voiceprints (weight --weight, the
                  rest the cohort's): in these protocols every impostor is an enrolled user
  door, open      the same without the test speaker's own voiceprint: a stranger at the door,
                  whom no voiceprint describes
The gap between "closed" and "open" is what the impostors' own voiceprints in the centre
are worth, which a door cannot count on: its strangers are not enrolled.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from voxgate import cohort as cohortmod
from voxgate.evaluation import EvalSet, eer, read_set
from voxgate.voiceprints import l2_normalize

REPO = Path(__file__).resolve().parent.parent
SETS = ["vcc2018_eval", "fsdd", "speechcommands_v001_sample"]
Centre = Callable[[str, str], np.ndarray]  # (claimed model, test speaker) -> centre


def cached(folder: Path) -> dict[str, np.ndarray]:
    path = next(folder.glob("embeddings-*.npz"))
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        return dict(zip(meta["recordings"], data["emb"], strict=True))


def row(
    es: EvalSet, emb: dict[str, np.ndarray], center: np.ndarray, weights: list[float]
) -> list[float]:
    """EER % with the cohort's centre, then per weight the door's centre, closed and open."""
    vps = {
        m: l2_normalize(np.mean([emb[r] for r in recs if r in emb], 0))
        for m, recs in es.enroll.items()
        if any(r in emb for r in recs)
    }
    owner = {m: es.speaker(es.enroll[m][0]) for m in vps}

    def score(centre_of: Centre) -> float:
        tar, non = [], []
        for model, rec, target in es.trials:
            if model not in vps or rec not in emb:
                continue
            c = centre_of(model, es.speaker(rec))
            s = float(cohortmod.centered_cosine(emb[rec], vps[model], c)[0])
            (tar if target else non).append(s)
        return 100 * eer(np.array(tar), np.array(non))

    def door(w: float, open_set: bool) -> Centre:
        def centre(model: str, test_speaker: str) -> np.ndarray:
            others = [
                vps[m] for m in vps if m != model and not (open_set and owner[m] == test_speaker)
            ]
            return (1 - w) * center + w * np.mean(others, 0)

        return centre

    cells = [score(lambda model, spk: center)]
    for w in weights:
        cells += [score(door(w, False)), score(door(w, True))]
    return cells


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=Path("eval-out"), help="speaker_eval.py's --out")
    ap.add_argument("--weight", type=float, nargs="*", default=[0.5, 1.0])
    args = ap.parse_args()
    cohort = cohortmod.load(cohortmod.default_dir() / "ge2e-resemblyzer-0.1.4--int8.npz")
    assert cohort.center is not None
    # The embedding cache, not just the folder: an interrupted speaker_eval.py leaves the
    # folder without it.
    missing = [n for n in SETS if not any((args.out / f"{n}-int8").glob("embeddings-*.npz"))]
    if missing:
        print(
            f"door_centre.py: no {', '.join(missing)} run in {args.out}: run "
            f"benchmarks/speaker_eval.py --out {args.out} first",
            file=sys.stderr,
        )
        return 2
    if no_set := [n for n in SETS if not (args.data / n / "trials.csv").is_file()]:
        print(f"door_centre.py: not in {args.data}: {', '.join(no_set)}", file=sys.stderr)
        return 2
    print("EER % of the centred cosine, by where the centre comes from")
    print(
        "| set | cohort | "
        + " | ".join(f"door {w:g}, closed | door {w:g}, open" for w in args.weight)
        + " |"
    )
    print("|---" * (2 + 2 * len(args.weight)) + "|")
    for name in SETS:
        folder = args.out / f"{name}-int8"
        cells = row(read_set(args.data / name), cached(folder), cohort.center, args.weight)
        print(f"| {name} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
