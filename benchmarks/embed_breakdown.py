"""Where one embed() of the shipped model spends its time, step by step (docs/models.md).

    PYTHONPATH=daemon python benchmarks/embed_breakdown.py [--runs 300] [--cpu 0] [--card CARD]
        [--nodes]

The steps of SpeakerEmbedder.embed() are run one after the other, as embed() runs them, on
the synthetic utterance `voxgate bench` uses (3 s by default), each timed on its own; medians
over the runs, one thread pinned to one core, the daemon's allocator settings. The network
is also timed alone on random input of the same shape, to see whether the steps before it
slow it down (caches). The script checks once that its steps give embed()'s embedding.

--nodes (ONNX models): also the network's time per graph node, from ONNX Runtime's own
profiler on the same windows, and one core's float peak (a 1024 x 1024 float32 matrix
product in numpy) to compare the float layer's rate with.
"""

from __future__ import annotations

import os

# Before numpy loads its BLAS: one thread, like the daemon's inference.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from itertools import pairwise  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from voxgate.commands.bench import synthetic_speech  # noqa: E402
from voxgate.embedding import EmbeddingError, ModelError, load_embedder  # noqa: E402
from voxgate.embedding.embedder import _MAX_BATCH, _normalise  # noqa: E402
from voxgate.features import to_float  # noqa: E402
from voxgate.service.malloc import tune_malloc  # noqa: E402

STEPS = ("silence trim", "to float, starts", "mel front end", "level gains", "network", "mean")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--cpu", type=int, default=0, help="core to pin to (default 0)")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--card", type=Path, help="model card (default: the shipped default)")
    ap.add_argument("--nodes", action="store_true", help="time each ONNX graph node too")
    args = ap.parse_args()
    if args.runs < 1:
        print("embed_breakdown.py: --runs must be >= 1", file=sys.stderr)
        return 2
    if hasattr(os, "sched_setaffinity"):
        if args.cpu not in os.sched_getaffinity(0):
            cores = ", ".join(str(c) for c in sorted(os.sched_getaffinity(0)))
            print(f"embed_breakdown.py: --cpu {args.cpu}: not one of ours ({cores})",
                  file=sys.stderr)  # fmt: skip
            return 2
        os.sched_setaffinity(0, {args.cpu})
    tune_malloc()
    try:
        emb = load_embedder(args.card, 1)
    except ModelError as exc:
        print(f"embed_breakdown.py: {exc}", file=sys.stderr)
        return 1
    if emb.card.windowing.type != "sliding":
        print("embed_breakdown: only sliding-window cards are broken down", file=sys.stderr)
        return 2
    pcm = synthetic_speech(args.seconds)
    n = emb.card.windowing.frames

    def steps() -> tuple[np.ndarray, list[float]]:
        marks = [time.perf_counter()]
        speech = emb.speech_of(pcm)
        marks.append(time.perf_counter())
        starts = emb.window_starts(speech.size)
        audio = to_float(speech)
        marks.append(time.perf_counter())
        frames = emb.frontend.frames(audio, n_frames=starts[-1] + n)
        frames = emb._fill_short(frames, speech.size)
        marks.append(time.perf_counter())
        gains = emb._gains(audio, starts, from_int16=speech.dtype == np.int16)
        marks.append(time.perf_counter())
        per_window = emb._run_windows(frames, starts, gains)
        marks.append(time.perf_counter())
        out = _normalise(per_window.mean(axis=0))
        marks.append(time.perf_counter())
        return out, [(b - a) * 1000 for a, b in pairwise(marks)]

    try:
        same = np.array_equal(steps()[0], emb.embed(pcm))
    except EmbeddingError as exc:  # e.g. --seconds below the card's minimum
        print(f"embed_breakdown.py: --seconds {args.seconds:g}: {exc}", file=sys.stderr)
        return 2
    if not same:
        print("embed_breakdown: these steps no longer match embed(); update the script")
        return 1
    for _ in range(20):  # warm-up
        steps()
    times: dict[str, list[float]] = {k: [] for k in (*STEPS, "embed() total")}
    for _ in range(args.runs):
        for k, v in zip(STEPS, steps()[1], strict=True):
            times[k].append(v)
        t0 = time.perf_counter()
        emb.embed(pcm)
        times["embed() total"].append((time.perf_counter() - t0) * 1000)
    windows = len(emb.window_starts(emb.speech_of(pcm).size))
    rng = np.random.default_rng(0)
    batches = [  # the batch sizes embed() uses
        rng.random((min(_MAX_BATCH, windows - i), n, emb.frontend.n_bins), dtype=np.float32)
        for i in range(0, windows, _MAX_BATCH)
    ]
    alone = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        for batch in batches:
            emb.runtime.run(batch)
        alone.append((time.perf_counter() - t0) * 1000)
    print(
        f"{emb.model_id}, {args.seconds:g} s utterance ({windows} windows), "
        f"core {args.cpu}, median of {args.runs}"
    )
    for k, v in times.items():
        print(f"  {k:<17} {float(np.median(v)):7.2f} ms")
    print(f"  {'network alone':<17} {float(np.median(alone)):7.2f} ms (random input)")
    if args.nodes:
        speech = emb.speech_of(pcm)
        audio = to_float(speech)
        starts = emb.window_starts(speech.size)
        frames = emb._fill_short(emb.frontend.frames(audio, starts[-1] + n), speech.size)
        gains = emb._gains(audio, starts, from_int16=speech.dtype == np.int16)
        real = np.stack([frames[s : s + n] * g for s, g in zip(starts, gains, strict=True)])
        return _nodes(emb.card.model_path, real[:_MAX_BATCH], args.runs)
    return 0


def _nodes(model: Path, batch: np.ndarray, runs: int) -> int:
    """Median time per graph node over `runs` calls, from ONNX Runtime's profiler."""
    if model.suffix != ".onnx":
        print(f"  --nodes: {model.name} is not an ONNX model", file=sys.stderr)
        return 2
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.enable_cpu_mem_arena = False  # as the daemon runs it (embedding/onnx_backend.py)
    with tempfile.TemporaryDirectory() as tmp:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "nodes")
        session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        x = np.ascontiguousarray(batch, np.float32)
        for _ in range(runs):
            session.run(None, {name: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    per_node: dict[tuple[str, str], list[float]] = defaultdict(list)
    for ev in events:
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            key = (ev["name"].removesuffix("_kernel_time"), ev["args"].get("op_name", "?"))
            per_node[key].append(ev["dur"] / 1000)
    medians = sorted(((float(np.median(v)), k) for k, v in per_node.items()), reverse=True)
    print(f"  per node ({x.shape[0]} windows a call, median of {runs} calls):")
    for ms, (node, op) in medians:
        if ms >= 0.01:
            print(f"    {node:<22} {op:<22} {ms:7.3f} ms")
    print(f"    {'(the other nodes)':<45} {sum(m for m, _ in medians if m < 0.01):7.3f} ms")
    a = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)
    best = min(_timed_matmul(a) for _ in range(20))
    rate = 1024**3 / best / 1e9
    print(f"  float peak: numpy 1024 x 1024 float32 product {rate:.1f} G multiply-adds/s")
    return 0


def _timed_matmul(a: np.ndarray) -> float:
    t0 = time.perf_counter()
    a @ a
    return time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main())
