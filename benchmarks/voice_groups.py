"""Calibrating the threshold within voice groups, shipped since 2026-11-28, against every
impostor, as before (docs/speaker-verification.md, "Calibrating within voice groups").

    PYTHONPATH=daemon python benchmarks/speaker_eval.py --data ../shared/data --out eval-out
    PYTHONPATH=daemon python benchmarks/voice_groups.py --data ../shared/data --out eval-out

The calibration before 2026-11-28 counted every other cohort speaker as an impostor, half of
them of the other gender; the shipped one counts only those of the model's own voice group.
This prints:
- the two voice groups `cohort.voice_groups` finds among the shipped cohort's speakers, and
  the group of each labelled speaker of vcc2018_eval (SF/TF women, SM/TM men) and fsdd (six
  men);
- the threshold for each `--fmr` calibrated with every impostor and within voice groups (the
  cohort's pieces embedded again, cut as `--build-cohort` cuts them; about 20 s);
- with `--out` (a folder `benchmarks/speaker_eval.py` filled), per protocol set, FMR and FNMR
  of the back end's scores at both thresholds, the FMR split into impostors of the claimed
  user's gender and of the other one where the set names genders, and at the thresholds
  calibrated within groups the speaker pairs those false matches come from.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from speaker_variants import cohort_embeddings

from voxgate import cohort as cohortmod
from voxgate.embedding import load_embedder
from voxgate.evaluation import load_recording, read_set
from voxgate.voiceprints import l2_normalize

REPO = Path(__file__).resolve().parent.parent
SETS = ["vcc2018_eval", "fsdd", "speechcommands_v001_sample"]
# What each set says of its speakers: VCC 2018 names carry it (VCC2SF1: source, female);
# fsdd's six speakers are men (its README).
GENDER: dict[str, Callable[[str], str]] = {"vcc2018_eval": lambda s: s[5], "fsdd": lambda s: "M"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, help="speaker_eval.py's --out, for the per-set figures")
    ap.add_argument("--fmr", type=float, nargs="*", default=[0.001, 0.0001])
    args = ap.parse_args()
    need = ["resemblyzer_ls", *GENDER]
    missing = [n for n in need if not (args.data / n / "manifest.csv").is_file()]
    missing += [
        n for n in GENDER if n not in missing and not (args.data / n / "enroll.csv").is_file()
    ]
    if missing:
        print(f"voice_groups.py: not in {args.data}: {', '.join(missing)}", file=sys.stderr)
        return 2
    embedder = load_embedder(REPO / "daemon" / "voxgate" / "models" / "ge2e-int8.yaml")
    shipped = cohortmod.load(cohortmod.default_dir() / (cohortmod.slug(embedder.model_id) + ".npz"))
    assert shipped.center is not None
    group = cohortmod.voice_groups(shipped.embeddings, shipped.center)
    print(f"{embedder.model_id}: cohort voice groups of {np.bincount(group).tolist()} speakers")
    cents = l2_normalize(
        np.stack(
            [l2_normalize(shipped.embeddings[group == k] - shipped.center).mean(0) for k in (0, 1)]
        )
    )
    for name, gender in GENDER.items():
        es = read_set(args.data / name)
        by_group: dict[int, list[str]] = {0: [], 1: []}
        for model, recs in sorted(es.enroll.items()):
            takes = [embedder.embed(load_recording(es.root, r)) for r in recs]
            emb = l2_normalize(np.mean(takes, 0) - shipped.center)
            by_group[int(np.argmax(cents @ emb))].append(f"{model}({gender(model)})")
        for k in (0, 1):
            print(f"  {name}, group {k}: {' '.join(by_group[k]) or '-'}")

    pieces, _ = cohort_embeddings(args.data, embedder)
    pooled = cohortmod.build_centered(embedder.model_id, pieces, within_voice_groups=False)
    grouped = cohortmod.build_centered(embedder.model_id, pieces)
    print(
        f"calibration: {pooled.info['calibration_trials']} impostor trials with every impostor, "
        f"{grouped.info['calibration_trials']} within voice groups "
        f"(groups of {grouped.info['voice_groups']})"
    )
    thresholds = []
    for f in args.fmr:
        pair = (pooled.threshold_for(f), grouped.threshold_for(f))
        thresholds.append(pair)
        print(
            f"  FMR {f:g}: threshold {pair[0]:.4f} with every impostor, "
            f"{pair[1]:.4f} within groups (shipped)"
        )
    if args.out:
        for name in SETS:
            per_set(args.out / f"{name}-int8", args.data / name, GENDER.get(name), thresholds)
    return 0


def per_set(
    folder: Path,
    set_dir: Path,
    gender: Callable[[str], str] | None,
    thresholds: list[tuple[float, float]],
) -> None:
    """FMR / FNMR of the back end's scores (scores.csv) at each threshold."""
    if not (folder / "scores.csv").exists():
        print(f"  ({folder}: no speaker_eval.py run there)")
        return
    es = read_set(set_dir)
    tar: list[float] = []
    same: list[float] = []
    other: list[float] = []
    pairs: list[tuple[float, str]] = []  # impostor score, "claimed/test" speakers
    with (folder / "scores.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            # An unscored trial (no voiceprint or embedding) is a no match, as eval counts it.
            s = float(row["backend"]) if row["backend"] else -np.inf
            if row["target"] == "1":
                tar.append(s)
                continue
            owner = es.speaker(es.enroll[row["model"]][0])
            pairs.append((s, "/".join(sorted((owner, es.speaker(row["path"]))))))
            if gender is None or gender(row["model"]) == gender(es.speaker(row["path"])):
                same.append(s)
            else:
                other.append(s)
    print(f"  {set_dir.name}:")
    for pair in thresholds:
        for label, t in zip(("all impostors", "within groups"), pair, strict=True):
            fnmr = 100 * np.mean(np.array(tar) < t)
            fmr = 100 * np.mean(np.array(same + other) >= t)
            line = f"    {label} {t:.4f}: FMR {fmr:.2f} %, FNMR {fnmr:.2f} %"
            if gender is not None and other:
                n_same, n_other = (
                    int(np.sum(np.array(same) >= t)),
                    int(np.sum(np.array(other) >= t)),
                )
                line += f" (same gender {n_same}/{len(same)}, other {n_other}/{len(other)})"
            print(line)
        # Who passes the within-groups threshold: a few look-alike pairs, or everyone?
        by_pair = Counter(p for s, p in pairs if s >= pair[1])
        print(f"      false matches at {pair[1]:.4f} by speaker pair: " + (
            ", ".join(f"{p} {n}" for p, n in by_pair.most_common()) or "none"))  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
