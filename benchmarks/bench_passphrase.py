"""Passphrase check of the phonemes engine on real voices: the 20 non-digit words of the
Speech Commands sample (../shared/data), each clip scored as the passphrase it is (genuine)
and as each of the other 19 words (wrong phrase).

The threshold is set on half of the speakers (at most --target-fa wrong phrases accepted,
the rule of bench_challenge.py) and reported on the other half, then the halves swap; the
rule on all the data gives the shipped `stt.phonemes_phrase_threshold`. One word is the
hardest case: a longer phrase carries more evidence per attempt.

Run:  PYTHONPATH=daemon python benchmarks/bench_passphrase.py      (about 30 s)
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
from bench_challenge import DATA, PAD, SC_DIGITS, load, pick_threshold

from voxgate.config.stt import SttConfig
from voxgate.stt import load_recognizer
from voxgate.stt.phoneme_backend import _PhraseStream


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--target-fa", type=float, default=0.005)
    args = ap.parse_args()
    folder = args.data / "speechcommands_v001_sample"
    if not (folder / "manifest.csv").exists():
        print(f"no evaluation data at {args.data}", file=sys.stderr)
        return 2
    with open(folder / "manifest.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["text"] not in SC_DIGITS]
    words = sorted({r["text"] for r in rows})
    engine = load_recognizer(SttConfig(backend="phonemes")).engine
    # The engine's own passphrase scoring, on one decode per clip (the daemon decodes each
    # answer once too; streaming each word's check would decode every clip 20 times).
    phrases = {w: _PhraseStream(engine, (w,)) for w in words}  # type: ignore[arg-type]
    trials = []
    for n, row in enumerate(rows, 1):
        pcm = np.concatenate([PAD, load(folder / row["path"]), PAD])
        logp = engine.log_probs(pcm.astype(np.float32) / 32768.0)  # type: ignore[attr-defined]
        scores = {w: phrases[w]._score(logp)[0] for w in words}
        others = [scores[w] for w in words if w != row["text"]]
        trials.append((row["speaker"], scores[row["text"]], others))
        if n % 20 == 0 or n == len(rows):
            print(f"{n}/{len(rows)} clips", file=sys.stderr, flush=True)
    speakers = sorted({t[0] for t in trials})
    halves = [set(speakers[0::2]), set(speakers[1::2])]
    genuine = wrong = n_wrong = 0
    thresholds = []
    for calib, report in ((halves[0], halves[1]), (halves[1], halves[0])):
        cal = [t for t in trials if t[0] in calib]
        thr = pick_threshold([t[1] for t in cal], [x for t in cal for x in t[2]], args.target_fa)
        thresholds.append(thr)
        rep = [t for t in trials if t[0] in report]
        genuine += sum(t[1] >= thr for t in rep)
        wrong += sum(x >= thr for t in rep for x in t[2])
        n_wrong += sum(len(t[2]) for t in rep)
    shipped = SttConfig().phonemes_phrase_threshold
    report = {
        "clips": len(trials),
        "words": len(words),
        "thresholds": thresholds,
        "held_out": {
            "genuine_accept": genuine / len(trials),
            "wrong_phrase_accept": wrong / n_wrong,
            "wrong_phrase_accepted": wrong,
            "wrong_phrase_trials": n_wrong,
        },
        "all_data_threshold": pick_threshold(
            [t[1] for t in trials], [x for t in trials for x in t[2]], args.target_fa
        ),
        "at_shipped_threshold": {
            "threshold": shipped,
            "genuine_accept": float(np.mean([t[1] >= shipped for t in trials])),
            "wrong_phrase_accepted": sum(x >= shipped for t in trials for x in t[2]),
        },
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
