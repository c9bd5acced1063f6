"""Back-end variants on cached embeddings, for information (docs/speaker-verification.md).

    PYTHONPATH=daemon python benchmarks/speaker_eval.py --out eval-out      # fills the caches
    PYTHONPATH=daemon python benchmarks/speaker_variants.py --out eval-out [--kind int8]

Prints EER (%) per set for several scoring variants, from the embedding caches that
`voxgate eval` wrote. Nothing here feeds back into the shipped settings.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from voxgate.cohort import chunk, for_model, model_sha256
from voxgate.embedding import load_embedder
from voxgate.evaluation import eer, load_recording, read_set
from voxgate.scoring import asnorm_stats
from voxgate.voiceprints import l2_normalize

REPO = Path(__file__).resolve().parent.parent
SETS = ["vcc2018_eval", "fsdd", "speechcommands_v001_sample"]


def cached(out: Path, name: str, kind: str) -> dict[str, np.ndarray]:
    path = next((out / f"{name}-{kind}").glob("embeddings-*.npz"))
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        return dict(zip(meta["recordings"], data["emb"], strict=True))


def cohort_pieces(data: Path, embedder: object) -> tuple[np.ndarray, np.ndarray]:
    """Chunk embeddings of the cohort speakers (for the LDA variant)."""
    es = read_set(data / "resemblyzer_ls")
    trial_spk = {es.speaker(r) for recs in es.enroll.values() for r in recs}
    x, y = [], []
    for path, spk in es.speaker_of.items():
        if spk in trial_spk:
            continue
        for piece in chunk(load_recording(es.root, path)):
            x.append(embedder.embed(piece))  # type: ignore[attr-defined]
            y.append(spk)
    return np.stack(x), np.array(y)


def lda(x: np.ndarray, y: np.ndarray, dims: int) -> Callable[[np.ndarray], np.ndarray]:
    from scipy.linalg import eigh

    mu = x.mean(0)
    xc = x - mu
    sw = np.zeros((x.shape[1],) * 2)
    sb = np.zeros_like(sw)
    for s in np.unique(y):
        part = xc[y == s]
        m = part.mean(0)
        sw += (part - m).T @ (part - m)
        sb += len(part) * np.outer(m, m)
    sw += 1e-3 * np.trace(sw) / len(sw) * np.eye(len(sw))
    _, vecs = eigh(sb, sw)
    proj = vecs[:, ::-1][:, :dims]
    return lambda v: l2_normalize((v - mu) @ proj)


def run(
    data: Path,
    name: str,
    emb: dict[str, np.ndarray],
    cohort: np.ndarray,
    transform: Callable[[np.ndarray], np.ndarray] | None,
    norm: bool,
    top_k: int,
    with_users: bool = False,
) -> float:
    es = read_set(data / name)
    f = transform or (lambda v: v)
    coh = l2_normalize(np.stack([f(c) for c in cohort]))
    means = {m: l2_normalize(np.mean([f(emb[r]) for r in rs], 0)) for m, rs in es.enroll.items()}
    model_spk = {m: es.speaker(rs[0]) for m, rs in es.enroll.items()}
    scores, target = [], []
    for m, r, t in es.trials:
        e, x = means[m], f(emb[r])
        raw = float(e @ x)
        if norm:
            c = coh
            if with_users:  # other enrolled users join the cohort (never the test speaker)
                others = [means[o] for o in means if o != m and model_spk[o] != es.speaker(r)]
                c = np.concatenate([coh, np.stack(others)]) if others else coh
            em, esd = asnorm_stats((c @ e)[None], top_k)
            tm, tsd = asnorm_stats((c @ x)[None], top_k)
            raw = 0.5 * ((raw - em[0]) / esd[0] + (raw - tm[0]) / tsd[0])
        scores.append(raw)
        target.append(t)
    s, tg = np.array(scores), np.array(target)
    return 100 * eer(s[tg == 1], s[tg == 0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=Path("eval-out"))
    ap.add_argument("--kind", choices=["int8", "float"], default="int8")
    args = ap.parse_args()
    embedder = load_embedder(REPO / "daemon" / "voxgate" / "models" / f"ge2e-{args.kind}.yaml")
    cohort = for_model(embedder.model_id, None, model_sha256(embedder)).embeddings
    caches = {s: cached(args.out, s, args.kind) for s in SETS}
    x, y = cohort_pieces(args.data, embedder)
    centre = x.mean(0)
    variants: list[tuple[str, Callable | None, bool, int, bool]] = [
        ("raw cosine", None, False, 0, False),
        ("AS-norm top-k 100 (shipped)", None, True, 100, False),
        ("S-norm (all 251 cohort scores)", None, True, 251, False),
        ("AS-norm, cohort + other enrolled users", None, True, 100, True),
        ("cosine after subtracting the cohort mean", lambda v: l2_normalize(v - centre), False,
         0, False),
        ("LDA 128 dims from cohort pieces, cosine", lda(x, y, 128), False, 0, False),
    ]  # fmt: skip
    print(f"| variant ({args.kind}) | " + " | ".join(SETS) + " |")
    print("|---|" + "---|" * len(SETS))
    for label, transform, norm, k, users in variants:
        eers = [run(args.data, s, caches[s], cohort, transform, norm, k, users) for s in SETS]
        print(f"| {label} | " + " | ".join(f"{e:.2f}" for e in eers) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
