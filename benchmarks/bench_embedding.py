"""Speaker-verification accuracy of embedding models on ../shared/data (EER, minDCF).

    PYTHONPATH=daemon python benchmarks/bench_embedding.py                      # shipped int8
    PYTHONPATH=daemon python benchmarks/bench_embedding.py --torch \
        --model daemon/voxgate/models/ge2e-int8.yaml --model daemon/voxgate/models/ge2e-float.yaml

Protocol (../shared/README.md): each item is one recording (`;`-joined files with 0.2 s of
silence between them), embedded as one stream; a speaker model is the normalised mean of its
enrollment takes' embeddings; the score is the cosine; EER and minDCF (P_target 0.01,
C_miss = C_fa = 1) per set, never pooled. `--torch` adds upstream Resemblyzer (PyTorch,
`preprocess_wav` + `embed_utterance`) when it is importable. This is the embedding alone; the
full decision path (VAD, score normalisation, thresholds) is `voxgate eval`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
SETS = ("vcc2018_eval", "fsdd", "speechcommands_v001_sample", "resemblyzer_ls")
GAP_S = 0.2


def load_item(set_dir: Path, item: str, gain: float = 1.0) -> np.ndarray:
    from voxgate.audio.file import read_audio

    gap = np.zeros(int(16000 * GAP_S), np.int16)
    parts: list[np.ndarray] = []
    for i, rel in enumerate(item.split(";")):
        if i:
            parts.append(gap)
        parts.append(read_audio(set_dir / rel))
    pcm = np.concatenate(parts)
    if gain != 1.0:
        pcm = np.clip(np.round(pcm * gain), -32768, 32767).astype(np.int16)
    return pcm


def eer_and_mindcf(
    scores: np.ndarray, labels: np.ndarray, p_target: float = 0.01
) -> tuple[float, float]:
    order = np.argsort(scores)[::-1]
    labels = labels[order].astype(bool)
    n_t, n_n = labels.sum(), (~labels).sum()
    # Threshold just below each score in turn: accept everything above.
    fa = np.concatenate([[0], np.cumsum(~labels)]) / n_n
    miss = 1.0 - np.concatenate([[0], np.cumsum(labels)]) / n_t
    i = int(np.argmin(np.abs(miss - fa)))
    eer = float((miss[i] + fa[i]) / 2)
    dcf = p_target * miss + (1 - p_target) * fa
    mindcf = float(dcf.min() / min(p_target, 1 - p_target))
    return eer, mindcf


def evaluate(
    set_dir: Path, embed: Callable[[np.ndarray], np.ndarray], gain: float = 1.0
) -> tuple[float, float, int]:
    from voxgate.embedding import EmbeddingError
    from voxgate.evaluation import read_set

    cache: dict[str, np.ndarray] = {}

    def vec(item: str) -> np.ndarray:
        if item not in cache:
            try:
                cache[item] = embed(load_item(set_dir, item, gain))
            except EmbeddingError as exc:  # too short: name the recording
                raise EmbeddingError(f"{set_dir / item}: {exc}") from None
        return cache[item]

    es = read_set(set_dir)  # the protocol checked as `voxgate eval` checks it (EvalError)
    means = {}
    for name, recs in es.enroll.items():
        m = np.mean([vec(r) for r in recs], axis=0)
        means[name] = m / np.linalg.norm(m)
    scores, labels = [], []
    for model, rec, target in es.trials:
        scores.append(float(means[model] @ vec(rec)))
        labels.append(target)
    eer, mindcf = eer_and_mindcf(np.asarray(scores), np.asarray(labels))
    return eer, mindcf, len(scores)


def vad_first(embed: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    from voxgate.vad import segment

    def run(pcm: np.ndarray) -> np.ndarray:
        utterances = segment(pcm)
        speech = np.concatenate([u.pcm for u in utterances]) if utterances else pcm
        return embed(speech if speech.size >= 8000 else pcm)

    return run


def torch_embedder() -> Callable[[np.ndarray], np.ndarray] | None:
    try:
        from resemblyzer import VoiceEncoder, preprocess_wav
    except Exception as exc:  # torch/librosa missing: upstream is an optional comparison
        print(
            f"upstream Resemblyzer not importable ({exc.__class__.__name__}: {exc})",
            file=sys.stderr,
        )
        return None
    encoder = VoiceEncoder("cpu", verbose=False)
    return lambda pcm: encoder.embed_utterance(preprocess_wav(pcm.astype(np.float32) / 32768))


def parity(args: argparse.Namespace, systems: list) -> int:
    from voxgate.embedding import load_embedder
    from voxgate.evaluation import read_set

    ref = load_embedder(args.parity)
    print(f"cosine to {ref.model_id}, utterance embeddings")
    print(f"{'system':36s} {'set':28s} {'min':>7s} {'median':>7s} {'items':>6s}")
    for set_name in args.set or SETS:
        # read_set: a missing or malformed manifest is an EvalError naming it, not a traceback
        items = list(read_set(args.data / set_name, need_trials=False).speaker_of)[::10]
        audio = [load_item(args.data / set_name, it, 10 ** (args.gain_db / 20)) for it in items]
        audio = [pcm for pcm in audio if pcm.size >= 8000]  # shorter single words: skipped
        if not audio:
            continue
        ref_vecs = [ref.embed(pcm) for pcm in audio]
        for name, embed in systems:
            cos = [float(r @ embed(pcm)) for r, pcm in zip(ref_vecs, audio, strict=True)]
            print(
                f"{name:36s} {set_name:28s} {min(cos):7.4f} {np.median(cos):7.4f} {len(cos):6d}",
                flush=True,
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    from voxgate.embedding import load_embedder

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model", action="append", type=Path, help="model card (repeat); default: shipped"
    )
    ap.add_argument("--torch", action="store_true", help="also upstream Resemblyzer (PyTorch)")
    ap.add_argument("--set", action="append", choices=SETS, help="evaluation set (repeat)")
    ap.add_argument("--data", type=Path, default=SHARED, help="shared data folder")
    ap.add_argument(
        "--parity",
        type=Path,
        metavar="CARD",
        help="instead of EER: cosine of each model's embeddings to this reference model's, "
        "over every 10th item of each set's manifest",
    )
    ap.add_argument(
        "--gain-db", type=float, default=0.0, help="scale every item (e.g. -20: a quiet microphone)"
    )
    ap.add_argument(
        "--vad",
        action="store_true",
        help="embed only what voxgate's endpointer keeps (utterances joined), as the daemon does",
    )
    args = ap.parse_args(argv)
    if not (args.data / "fsdd" / "manifest.csv").exists():
        print(f"{args.data}: evaluation data not found", file=sys.stderr)
        return 2
    systems: list[tuple[str, Callable[[np.ndarray], np.ndarray]]] = []

    for card in args.model or [None]:
        e = load_embedder(card)
        systems.append(
            (
                e.model_id + (" +vad" if args.vad else ""),
                vad_first(e.embed) if args.vad else e.embed,
            )
        )
    if args.torch and (up := torch_embedder()) is not None:
        systems.append(("resemblyzer-torch (upstream)", up))
    if args.parity:
        return parity(args, systems)
    print(f"{'system':36s} {'set':28s} {'EER %':>7s} {'minDCF':>7s} {'trials':>7s} {'time s':>7s}")
    for name, embed in systems:
        for set_name in args.set or SETS:
            t0 = time.perf_counter()
            eer, mindcf, n = evaluate(args.data / set_name, embed, 10 ** (args.gain_db / 20))
            took = time.perf_counter() - t0
            print(
                f"{name:36s} {set_name:28s} {100 * eer:7.2f} {mindcf:7.3f} {n:7d} {took:7.1f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    from voxgate.audio import AudioError
    from voxgate.embedding import EmbeddingError, ModelError
    from voxgate.evaluation import EvalError

    try:
        sys.exit(main())
    except (AudioError, EmbeddingError, ModelError, EvalError) as exc:  # say which card/file
        print(f"bench_embedding.py: {exc}", file=sys.stderr)
        sys.exit(1)
