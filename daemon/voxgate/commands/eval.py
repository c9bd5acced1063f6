"""voxgate eval SET_DIR: speaker-verification accuracy on a protocol folder; cohort building."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from voxgate.commands.common import add_config_option, add_parser, ascii_int, config_from_args
from voxgate.commands.speaker_common import CommandError, fail, load_cohort, load_embedder

TOP_K = 100


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub,
        "eval",
        help="measure EER, minDCF, FMR/FNMR and a DET curve on a protocol folder",
        description="SET_DIR holds manifest.csv, enroll.csv and trials.csv (a path of files "
        "joined by ';' is one recording with 0.2 s gaps). Scores every trial with the "
        "upstream recipe (mean embedding, cosine) and with voxgate's back end (enrollment "
        "checks, cohort-centred cosine, threshold from speaker.target_fmr, quality gate), and "
        "writes "
        "report.json, scores.csv, det.png and an embedding cache to --out. "
        "With --build-cohort, instead builds the normalization cohort and its threshold "
        "calibration from the set's speakers that have no trials (the model's cohort files "
        "already in DIR are replaced only with --replace). Exit status: 0 done, "
        "1 an error (the message says what), 2 a usage error, 130 interrupted (Ctrl-C; the "
        "embeddings made so far are kept in --out, and a rerun with it embeds only the rest).",
        examples="""
        voxgate eval ../shared/data/fsdd --out eval-out/fsdd
        voxgate eval ../shared/data/vcc2018_eval --model models/shipped/ge2e-float.yaml
        voxgate eval ../shared/data/resemblyzer_ls --build-cohort my-cohort
        voxgate eval ../shared/data/resemblyzer_ls --build-cohort models/cohort --replace
        """,
    )
    p.add_argument("set_dir", metavar="SET_DIR", type=Path, help="protocol folder")
    p.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        help="output folder (default: eval-<SET_DIR's name> in the current folder)",
    )
    p.add_argument("--model", metavar="FILE", type=Path, help="speaker model (default: config)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--build-cohort", metavar="DIR", type=Path, help="build cohort + calibration into DIR"
    )
    p.add_argument(
        "--replace",
        action="store_true",
        help="with --build-cohort: replace the model's cohort files already in DIR",
    )
    p.add_argument(
        "--top-k",
        type=ascii_int,
        help=f"with --build-cohort: cohort top-k (default: {TOP_K})",
    )
    add_config_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Silently ignored, they let a user believe a cohort was replaced or built with top-k.
    lone = [f for f, on in (("--replace", args.replace), ("--top-k", args.top_k is not None)) if on]
    if lone and not args.build_cohort:
        print(f"voxgate eval: {' and '.join(lone)} only with --build-cohort DIR", file=sys.stderr)
        return 2
    cfg = config_from_args(args)
    if cfg is None:
        return 1
    from voxgate.evaluation import EvalError, build_cohort, cohort_files, evaluate, format_report

    try:
        embedder = load_embedder(cfg, args.model)
        if args.build_cohort:
            npz, meta = cohort_files(args.build_cohort, embedder.model_id)
            replaced = [str(p) for p in (npz, meta) if p.exists()]
            c = build_cohort(
                args.set_dir,
                embedder,
                args.build_cohort,
                TOP_K if args.top_k is None else args.top_k,
                model_arg=str(args.model) if args.model else None,
                replace=args.replace,
            )
            print(f"cohort for {c.model_id}: {len(c.embeddings)} speakers, "
                  f"{c.info['calibration_trials']} impostor calibration trials")  # fmt: skip
            for fmr, thr in c.calibration:
                print(f"  FMR {fmr:<7g} threshold {thr:.3f}")
            if replaced:  # --replace: said, since a config elsewhere may use the old one
                print(f"replaced {' and '.join(replaced)}")
            print(f"written to {npz}; to score with it, set in the device config:")
            # Absolute: a relative path in the config is taken from the daemon's folder.
            print(f"  speaker.cohort: {npz.resolve()}")
            return 0
        cohort = load_cohort(cfg, embedder)
        out = args.out or Path(f"eval-{args.set_dir.resolve().name}")
        report = evaluate(args.set_dir, embedder, cfg, cohort, out)
    except (CommandError, EvalError) as exc:
        return fail(str(exc))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
