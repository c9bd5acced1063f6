"""How far two `voxgate eval` runs of the same sets are apart: another machine, another CPU
architecture, another onnxruntime release. Reads what each run left in its --out folder
(the embedding cache, scores.csv, report.json) and prints, per set:

- the cosine between the two embeddings of each recording (minimum, 1st percentile, median),
  and whether both runs embedded the same recordings;
- the largest difference in the quality readings the gate uses (net speech, SNR);
- the largest difference of a trial's back-end score, and how many trials land on the other
  side of the threshold;
- EER, minDCF, FMR/FNMR and retry rate of each run side by side.

    PYTHONPATH=daemon python benchmarks/compare_eval_runs.py RUN_A RUN_B

RUN_A and RUN_B each hold one folder per set (as written by
`voxgate eval ../shared/data/SET --out RUN_A/SET`), or are themselves such a folder.
docs/arm64.md has the runs it compared (x86 against emulated ARM).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
from _stats import pct


def load_cache(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, dict[str, float]]]:
    """Embeddings and quality readings by recording, from the run's embedding cache."""
    files = sorted(folder.glob("embeddings-*.npz"))
    if len(files) != 1:
        raise ValueError(f"{folder}: expected one embeddings-*.npz, found {len(files)}")
    with np.load(files[0], allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        embs = dict(zip(meta["recordings"], data["emb"], strict=True))
    return embs, dict(zip(meta["recordings"], meta["quality"], strict=True))


def load_scores(folder: Path) -> dict[tuple[str, str], float]:
    with open(folder / "scores.csv", newline="") as f:
        return {(r["model"], r["path"]): float(r["backend"] or "nan") for r in csv.DictReader(f)}


def embedding_rows(a: Path, b: Path) -> list[str]:
    ea, qa = load_cache(a)
    eb, qb = load_cache(b)
    both = sorted(set(ea) & set(eb))
    cos, only_one = [], 0
    for r in both:
        x, y = ea[r], eb[r]
        if np.all(np.isfinite(x)) and np.all(np.isfinite(y)):
            cos.append(float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y))))
        elif np.all(np.isfinite(x)) != np.all(np.isfinite(y)):
            only_one += 1  # one run embedded it and the other did not
    dq = {
        k: max((abs(qa[r][k] - qb[r][k]) for r in both if k in qa[r]), default=0.0)
        for k in ("speech_s", "snr_db")
        if any(k in q for q in qa.values())
    }
    rows = [
        f"  recordings     {len(both)} in both runs, {len(set(ea) ^ set(eb))} in one only, "
        f"{only_one} embedded by one run only",
        f"  cosine A-B     min {min(cos):.6f}  p1 {pct(cos, 1):.6f}  median {pct(cos, 50):.6f}",
    ]
    rows += [f"  max |diff|     {k} {v:.4g}" for k, v in dq.items()]
    return rows


def score_rows(a: Path, b: Path, threshold: float) -> list[str]:
    sa, sb = load_scores(a), load_scores(b)
    keys = sorted(set(sa) & set(sb))
    pairs = [(sa[k], sb[k]) for k in keys if np.isfinite(sa[k]) and np.isfinite(sb[k])]
    diff = max((abs(x - y) for x, y in pairs), default=0.0)
    flips = sum((x >= threshold) != (y >= threshold) for x, y in pairs)
    gated = sum(np.isfinite(sa[k]) != np.isfinite(sb[k]) for k in keys)
    return [
        f"  trials         {len(keys)}; back-end score max |diff| {diff:.6f}; "
        f"{flips} on the other side of {threshold:.4f}; {gated} gated in one run only"
    ]


def figure_rows(ra: dict, rb: dict) -> list[str]:
    rows = []
    for system in ("cosine", "backend"):
        a, b = ra["systems"][system], rb["systems"][system]
        for key in ("eer_percent", "min_dcf", "fmr_percent", "fnmr_percent", "retry_rate_percent"):
            if key in a:
                rows.append(f"  {system:8s} {key:20s} {a[key]:>8} {b.get(key, '-'):>8}")
    return rows


def compare(a: Path, b: Path) -> list[str]:
    ra = json.loads((a / "report.json").read_text())
    rb = json.loads((b / "report.json").read_text())
    rows = [f"{ra['set']}  ({ra['model_id']} / {rb['model_id']})"]
    rows += embedding_rows(a, b)
    rows += score_rows(a, b, ra["systems"]["backend"]["threshold"])
    rows.append(f"  {'':8s} {'':20s} {'A':>8} {'B':>8}")
    return rows + figure_rows(ra, rb)


def set_pairs(run_a: Path, run_b: Path) -> list[tuple[Path, Path]]:
    for run in (run_a, run_b):
        if not run.is_dir():
            raise ValueError(f"{run}: no such folder")
    if (run_a / "report.json").exists():
        return [(run_a, run_b)]
    names = sorted(p.name for p in run_a.iterdir() if (run_b / p.name / "report.json").exists())
    if not names:
        raise ValueError(f"no set folder with a report.json is in both {run_a} and {run_b}")
    return [(run_a / n, run_b / n) for n in names]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run_a", type=Path)
    ap.add_argument("run_b", type=Path)
    args = ap.parse_args()
    try:
        rows = [f"A: {args.run_a}", f"B: {args.run_b}"]
        for a, b in set_pairs(args.run_a, args.run_b):
            rows += compare(a, b)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # a folder of something else
        print(f"compare_eval_runs.py: {exc}", file=sys.stderr)
        return 1
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
