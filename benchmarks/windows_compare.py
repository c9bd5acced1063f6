"""What changing a card's window spacing does to the embeddings of the protocol sets.

For each set: how many recordings get other windows at all (below 2.4 s of speech, 50 %
overlap and windows end to end cut the same two windows), how close the two embeddings of a
recording are, and how far a voiceprint enrolled with the old spacing scores from one
re-enrolled with the new, against the same new attempts (centred cosine with the shipped
cohort's centre, the door's score).

    PYTHONPATH=daemon python benchmarks/windows_compare.py --data ../shared/data --old-hop 80
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from voxgate.cohort import CohortError, centered_cosine, for_model, model_sha256
from voxgate.embedding import ModelError, default_card_path, load_card, load_embedder
from voxgate.evaluation import EvalError, load_recording, read_set
from voxgate.voiceprints import mean_embedding

SETS = ("vcc2018_eval", "fsdd", "speechcommands_v001_sample", "resemblyzer_ls")


def card_with_hop(card: Path, hop: int, folder: Path) -> Path:
    """A copy of `card` whose windows start every `hop` frames, beside a link to its model."""
    model = load_card(card).model.file
    (folder / model).symlink_to(card.parent / model)
    text = card.read_text()
    shipped = f"  hop: {load_card(card).windowing.hop}\n"
    if shipped not in text:
        raise ValueError(f"{card}: its windowing block names no hop")
    out = folder / card.name
    out.write_text(text.replace(shipped, f"  hop: {hop}\n"))
    return out


def main() -> int:
    try:
        return run()
    except (CohortError, EvalError, ModelError, OSError, ValueError) as exc:
        print(f"windows_compare.py: {exc}", file=sys.stderr)
        return 1


def run() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--old-hop", type=int, default=80, help="the spacing compared with the card's")
    ap.add_argument("--model", type=Path, default=default_card_path(), help="card (default: int8)")
    ap.add_argument("--set", dest="sets", action="append", choices=SETS)
    args = ap.parse_args()
    new = load_embedder(args.model)
    center = for_model(new.model_id, None, model_sha256(new)).center
    if center is None:
        raise CohortError(f"the cohort of {new.model_id} has no centre (an AS-norm cohort)")
    with tempfile.TemporaryDirectory() as tmp:
        old = load_embedder(card_with_hop(args.model, args.old_hop, Path(tmp)))
        print(f"{new.model_id}: windows every {new.card.windowing.hop} frames against "
              f"{args.old_hop}")  # fmt: skip
        for name in args.sets or SETS:
            root = args.data / name
            if not root.is_dir():
                print(f"{name}: not in {args.data}, skipped")
                continue
            es = read_set(root)
            recs = sorted({p for ps in es.enroll.values() for p in ps} | {t[1] for t in es.trials})
            emb_new, emb_old, changed = {}, {}, 0
            for i, rec in enumerate(recs, 1):
                if i % 50 == 0 or i == len(recs):
                    print(f"  {name}: {i}/{len(recs)}", file=sys.stderr, flush=True)
                pcm = load_recording(root, rec)
                emb_new[rec] = new.embed(pcm)
                n = new.speech_of(pcm).size  # what the windows are cut from
                other = old.window_starts(n) != new.window_starts(n)
                changed += other
                emb_old[rec] = old.embed(pcm) if other else emb_new[rec]
            cos = np.array([float(emb_new[r] @ emb_old[r]) for r in recs])
            shift = []
            for model, rec, _ in es.trials:
                takes = es.enroll[model]
                was = mean_embedding(np.stack([emb_old[t] for t in takes]))
                now = mean_embedding(np.stack([emb_new[t] for t in takes]))
                attempt = emb_new[rec]
                shift.append(
                    float(centered_cosine(was, attempt, center)[0])
                    - float(centered_cosine(now, attempt, center)[0])
                )
            d = np.abs(np.array(shift))
            print(
                f"{name}: {changed}/{len(recs)} recordings get other windows; cosine old/new "
                f"min {cos.min():.4f} mean {cos.mean():.4f}; score of an old voiceprint minus "
                f"a re-enrolled one over {d.size} trials: |max| {d.max():.3f}, p99 "
                f"{np.quantile(d, 0.99):.3f}, mean {np.mean(shift):+.4f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
