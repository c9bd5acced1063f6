"""Where one embed() of the shipped model spends its time, step by step (docs/models.md).

    PYTHONPATH=daemon python benchmarks/embed_breakdown.py [--runs 300] [--cpu 0] [--card CARD]

The steps of SpeakerEmbedder.embed() are run one after the other, as embed() runs them, on
the synthetic 3 s utterance `voxgate bench` uses, each timed on its own; medians over the
runs, one thread pinned to one core. The network is also timed alone on random input, to
see whether the steps before it slow it down (caches).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np

from voxgate.commands.bench import synthetic_speech
from voxgate.embedding import load_embedder
from voxgate.embedding.embedder import _normalise
from voxgate.features import to_float

STEPS = ("silence trim", "window starts", "mel front end", "level gains", "stack", "network")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--cpu", type=int, default=0, help="core to pin to (default 0)")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--card", type=Path, help="model card (default: the shipped default)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    emb = load_embedder(args.card, 1)
    if emb.card.windowing.type != "sliding":
        print("embed_breakdown: only sliding-window cards are broken down", file=sys.stderr)
        return 2
    pcm = synthetic_speech(args.seconds)
    n = emb.card.windowing.frames
    times: dict[str, list[float]] = {k: [] for k in (*STEPS, "the rest", "embed() total")}

    def one() -> dict[str, float]:
        marks = [time.perf_counter()]
        speech = emb.speech_of(pcm)
        marks.append(time.perf_counter())
        starts = emb.window_starts(speech.size)
        audio = to_float(speech)
        marks.append(time.perf_counter())
        frames = emb.frontend.frames(audio, n_frames=starts[-1] + n)
        frames = emb._fill_short(frames, speech.size)
        marks.append(time.perf_counter())
        gains = emb._gains(audio, starts)
        marks.append(time.perf_counter())
        batch = np.stack([frames[s : s + n] * g for s, g in zip(starts, gains, strict=True)])
        marks.append(time.perf_counter())
        out = emb.runtime.run(batch)
        marks.append(time.perf_counter())
        out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        _normalise(out.mean(axis=0))
        marks.append(time.perf_counter())
        ms = [(b - a) * 1000 for a, b in pairwise(marks)]
        return {**dict(zip(STEPS, ms, strict=False)), "the rest": ms[-1]}

    for _ in range(20):  # warm-up
        one()
    for _ in range(args.runs):
        for k, v in one().items():
            times[k].append(v)
        t0 = time.perf_counter()
        emb.embed(pcm)
        times["embed() total"].append((time.perf_counter() - t0) * 1000)
    rng = np.random.default_rng(0)
    batch = rng.random((3, n, emb.frontend.n_bins), dtype=np.float32)
    alone = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        emb.runtime.run(batch)
        alone.append((time.perf_counter() - t0) * 1000)
    print(f"{emb.model_id}, {args.seconds:g} s utterance, core {args.cpu}, median of {args.runs}")
    for k, v in times.items():
        print(f"  {k:<16} {float(np.median(v)):7.2f} ms")
    print(f"  {'network alone':<16} {float(np.median(alone)):7.2f} ms (3 windows, random input)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
