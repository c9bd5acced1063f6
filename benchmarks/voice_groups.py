"""The cohort's two voice groups, and why the threshold is calibrated within them
(docs/speaker-verification.md, "Threshold from a target false-match rate").

    PYTHONPATH=daemon python benchmarks/voice_groups.py --data ../shared/data [--out eval-out]

Prints the sizes of the shipped cohort's voice groups (`cohort.voice_groups`), the group each
labelled speaker of vcc2018_eval (SF/TF women, SM/TM men) and fsdd (six men) falls in, and,
with `--out` a folder `benchmarks/speaker_eval.py` filled, the back end's false-match rate at
its threshold (and at each of `--thresholds`) split into impostors of the claimed user's gender
and of the other one.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from voxgate import cohort as cohortmod
from voxgate.embedding import load_embedder
from voxgate.evaluation import load_recording, read_set
from voxgate.voiceprints import l2_normalize

REPO = Path(__file__).resolve().parent.parent
# What each set's README says of its speakers; VCC 2018 names carry it (VCC2SF1: source female).
GENDER: dict[str, Callable[[str], str]] = {
    "vcc2018_eval": lambda spk: spk[5],
    "fsdd": lambda spk: "M",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, help="speaker_eval.py's --out, for the FMR split")
    ap.add_argument("--kind", default="int8", choices=["int8", "float", "fp16-litert"])
    ap.add_argument(
        "--thresholds", type=float, nargs="*", default=[], help="more thresholds for the split"
    )
    args = ap.parse_args()
    if not (args.data / "vcc2018_eval" / "manifest.csv").exists():
        print(f"no protocol sets under {args.data}", file=sys.stderr)
        return 2
    embedder = load_embedder(REPO / "daemon" / "voxgate" / "models" / f"ge2e-{args.kind}.yaml")
    cohort = cohortmod.load(cohortmod.default_dir() / (cohortmod.slug(embedder.model_id) + ".npz"))
    assert cohort.center is not None
    group = cohortmod.voice_groups(cohort.embeddings, cohort.center)
    print(f"cohort {embedder.model_id}: voice groups of {np.bincount(group).tolist()} speakers")
    cents = l2_normalize(
        np.stack(
            [l2_normalize(cohort.embeddings[group == k] - cohort.center).mean(0) for k in (0, 1)]
        )
    )
    for name, gender in GENDER.items():
        es = read_set(args.data / name)
        by_group: dict[int, list[str]] = {0: [], 1: []}
        for model, recs in sorted(es.enroll.items()):
            takes = [embedder.embed(load_recording(es.root, r)) for r in recs]
            emb = l2_normalize(np.mean(takes, 0) - cohort.center)
            by_group[int(np.argmax(cents @ emb))].append(f"{model}({gender(model)})")
        for k in (0, 1):
            print(f"  {name}, group {k}: {' '.join(by_group[k]) or '-'}")
        if args.out:
            split_fmr(args.out / f"{name}-{args.kind}", gender, es.speaker, args.thresholds)
    return 0


def split_fmr(
    folder: Path, gender: Callable[[str], str], speaker: Callable[[str], str], more: list[float]
) -> None:
    """FMR at the run's threshold (and `more`) among impostors of the claimed user's gender
    and of the other."""
    report, scores = folder / "report.json", folder / "scores.csv"
    if not (report.exists() and scores.exists()):
        print(f"  ({folder}: no speaker_eval.py run there)")
        return
    thr = json.loads(report.read_text())["systems"]["backend"]["threshold"]
    same: list[float] = []
    other: list[float] = []
    with scores.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["target"] == "1" or row["backend"] == "":
                continue
            kind = same if gender(row["model"]) == gender(speaker(row["path"])) else other
            kind.append(float(row["backend"]))
    for t in [thr, *more]:
        for label, s in (("same gender", same), ("other gender", other)):
            if s:
                hits = sum(x >= t for x in s)
                print(f"    FMR at {t:.4f}, {label}: {100 * hits / len(s):.2f} % ({hits}/{len(s)})")


if __name__ == "__main__":
    raise SystemExit(main())
