"""Speaker-verification table for docs/speaker-verification.md: every protocol set in
../shared/data, float and int8 models, upstream recipe vs voxgate back end.

    PYTHONPATH=daemon python benchmarks/speaker_eval.py [--data ../shared/data] [--out eval-out]

Each (set, model) run is the same as `voxgate eval SET --model CARD --out OUT/SET-KIND`, so a
row can be rerun alone; embeddings are cached in OUT and reused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from voxgate.cohort import for_model, model_sha256
from voxgate.config import VoxgateConfig
from voxgate.embedding import ModelError, load_embedder
from voxgate.evaluation import EvalError, evaluate

REPO = Path(__file__).resolve().parent.parent
SETS = ["vcc2018_eval", "fsdd", "speechcommands_v001_sample", "resemblyzer_ls"]
UPSTREAM = {"vcc2018_eval": 3.39, "fsdd": 2.06, "speechcommands_v001_sample": 1.20,
            "resemblyzer_ls": 0.00}  # fmt: skip
MODELS = {
    "float": "ge2e-float.yaml",
    "int8": "ge2e-int8.yaml",
    "fp16-litert": "ge2e-fp16-litert.yaml",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=Path("eval-out"))
    ap.add_argument("--sets", nargs="+", default=SETS)
    ap.add_argument("--models", nargs="+", default=["float", "int8"], choices=sorted(MODELS))
    args = ap.parse_args()
    if not (args.data / "fsdd").is_dir():
        print(f"{args.data}: no evaluation data here", file=sys.stderr)
        return 1
    cfg = VoxgateConfig()
    rows = []
    for kind in args.models:
        card = MODELS[kind]
        try:
            embedder = load_embedder(REPO / "daemon" / "voxgate" / "models" / card)
        except ModelError as exc:  # e.g. fp16-litert without the 'litert' extra
            print(f"speaker_eval.py: {exc}", file=sys.stderr)
            return 1
        cohort = for_model(embedder.model_id, None, model_sha256(embedder))
        for name in args.sets:
            try:
                rep = evaluate(args.data / name, embedder, cfg, cohort, args.out / f"{name}-{kind}")
            except EvalError as exc:  # a set or --out that cannot be used: say which
                print(f"speaker_eval.py: {exc}", file=sys.stderr)
                return 1
            rows.append((name, kind, rep))
    print(
        "| set | model | upstream ref. EER | cosine EER (95 % CI) | back end EER (95 % CI) "
        "| back-end minDCF | FMR / FNMR at threshold | retry |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, kind, rep in rows:
        c, b = rep["systems"]["cosine"], rep["systems"]["backend"]

        def eer(s: dict) -> str:
            lo, hi = s["eer_ci95_percent"]
            return f"{s['eer_percent']:.2f} ({lo:.2f}-{hi:.2f})"

        print(
            f"| {name} | {kind} | {UPSTREAM.get(name, float('nan')):.2f} | {eer(c)} | {eer(b)} "
            f"| {b['min_dcf']:.3f} | {b['fmr_percent']:.2f} % / {b['fnmr_percent']:.2f} % "
            f"| {b['retry_rate_percent']:.1f} % |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
