"""voxgate bench: speed and memory of the speaker-embedding models on one CPU core.

Each system runs in a fresh subprocess pinned to one core with one inference thread, so load
time and resident memory are its own. Reported per system: model load time, median and 90th
percentile milliseconds to embed one utterance (default 3 s), the time finish() takes after
a stream has been fed the same audio (the latency left once the speaker stops), the windows
the network ran on, and the peak resident memory of the process. Upstream Resemblyzer
(PyTorch) is added when it is importable, and ratios are taken against it from the same run;
it is also timed at its lowest window rate, so that a ratio at the same number of windows is
printed beside the one at upstream's defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voxgate.commands.common import (
    add_config_option,
    add_parser,
    ascii_int,
    ascii_seconds,
    config_from_args,
)

if TYPE_CHECKING:
    import numpy as np  # imported at run time only by the worker

EXAMPLES = """\
voxgate bench                                   shipped models (+ PyTorch Resemblyzer if importable)
voxgate bench -n 50 --seconds 5                 50 runs on 5 s of audio
voxgate bench --model my/campp.yaml --no-torch  a dropped-in model only
voxgate bench --audio speech.wav --cpu 1        your own audio, pinned to core 1
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub,
        "bench",
        help="measure speaker-embedding speed and memory on one core",
        description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
        examples=EXAMPLES,
    )
    add_config_option(p)
    p.add_argument(
        "--model",
        action="append",
        type=Path,
        metavar="CARD",
        help="model card or model file (repeatable); default: every shipped card",
    )
    p.add_argument(
        "-n", "--runs", type=ascii_int, default=30, help="timed runs (default: %(default)s)"
    )
    p.add_argument(
        "--seconds",
        type=ascii_seconds,
        default=3.0,
        help="utterance length, at most 120 (default: 3)",
    )
    p.add_argument(
        "--audio",
        type=Path,
        help="WAV/FLAC to time instead of synthetic audio (its first --seconds)",
    )
    p.add_argument(
        "--cpu", type=ascii_int, default=None, help="core to pin to (default: last core)"
    )
    p.add_argument("--no-torch", action="store_true", help="skip upstream PyTorch Resemblyzer")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


# --- worker (runs in the subprocess) -----------------------------------------------------------


def synthetic_speech(seconds: float, seed: int = 0) -> np.ndarray:
    """Deterministic speech-like audio: a gliding harmonic voice with syllable-rate bursts
    and pauses. Speed does not depend on what is said, only on how long it is."""
    import numpy as np

    sr = 16000
    n = int(sr * seconds)
    t = np.arange(n) / sr
    rng = np.random.default_rng(seed)
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voice = sum(np.sin(k * phase) / k for k in range(1, 20))
    envelope = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 0.5
    x = 0.2 * voice * envelope + 0.01 * rng.standard_normal(n)
    return np.clip(np.round(x / np.abs(x).max() * 0.5 * 32767), -32768, 32767).astype(np.int16)


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn: Callable[[], object], runs: int) -> list[float]:
    out: list[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    if spec.get("cpu") is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {spec["cpu"]})
    if spec.get("audio"):
        # 16 kHz int16 samples the parent read and converted: reading another rate here
        # imported scipy's resampler, and its 60-70 MB counted as the model's peak RSS.
        pcm = np.load(spec["audio"])[: int(16000 * spec["seconds"])]
    else:
        pcm = synthetic_speech(spec["seconds"])
    runs = spec["runs"]
    result: dict[str, Any] = {"system": spec["system"], "seconds": pcm.size / 16000}
    t0 = time.perf_counter()
    if spec["system"] == "torch":
        import torch

        torch.set_num_threads(1)
        from resemblyzer import VoiceEncoder, preprocess_wav

        encoder = VoiceEncoder("cpu", verbose=False)
        wav = pcm.astype(np.float32) / 32768
        result["load_ms"] = (time.perf_counter() - t0) * 1000
        result["name"] = "resemblyzer-torch (upstream)"
        result["runtime"] = f"torch {torch.__version__}"
        encoder.embed_utterance(preprocess_wav(wav, 16000))
        # The same work as embed() here: volume normalisation and silence trim, then the
        # network (upstream's README recipe). embed_utterance alone is reported beside it.
        times = _timed(lambda: encoder.embed_utterance(preprocess_wav(wav, 16000)), runs)
        result["embed_only_ms"] = float(
            np.median(_timed(lambda: encoder.embed_utterance(wav), runs))
        )
        # Upstream's windows are 50 % apart (rate 1.3 a second); at its lowest rate, 0.625,
        # they lie end to end as on the shipped cards: the same number of windows as ours.
        trimmed = preprocess_wav(wav, 16000)
        result["windows"] = len(encoder.compute_partial_slices(trimmed.size, 1.3, 0.75)[0])
        result["end_to_end_ms"] = float(
            np.median(
                _timed(
                    lambda: encoder.embed_utterance(preprocess_wav(wav, 16000), rate=0.625), runs
                )
            )
        )
        result["end_to_end_windows"] = len(
            encoder.compute_partial_slices(trimmed.size, 0.625, 0.75)[0]
        )
        result["finish_ms"] = None
    else:
        from voxgate.embedding import load_embedder
        from voxgate.service.malloc import tune_malloc

        tune_malloc()  # the daemon's allocator settings: they change the speed (see there)
        e = load_embedder(Path(spec["system"]) if spec["system"] != "default" else None, 1)
        result["load_ms"] = (time.perf_counter() - t0) * 1000
        result["name"] = e.model_id
        result["runtime"] = e.runtime.name
        e.embed(pcm)
        whole = e.card.windowing.type == "whole"  # one network run over the whole utterance
        result["windows"] = 1 if whole else e.network_runs(e.speech_of(pcm).size)
        times = _timed(lambda: e.embed(pcm), runs)
        finish = []
        for _ in range(max(3, runs // 3)):
            s = e.stream()
            for i in range(0, pcm.size, 480):  # 30 ms microphone frames
                s.push(pcm[i : i + 480])
            t1 = time.perf_counter()
            s.finish()
            finish.append((time.perf_counter() - t1) * 1000)
        result["finish_ms"] = float(np.median(finish))
    result["median_ms"] = float(np.median(times))
    result["p90_ms"] = float(np.percentile(times, 90))
    result["peak_rss_mb"] = _peak_rss_mb()
    return result


# --- parent ------------------------------------------------------------------------------------


def _shipped_cards() -> list[Path]:
    from voxgate.embedding import default_card_path

    folder = default_card_path().parent
    default = default_card_path()
    return [default, *sorted(p for p in folder.glob("*.yaml") if p != default)]


def _runtime_missing(card: Path) -> str | None:
    """Why a shipped card cannot run on this install: LiteRT is an optional extra, like torch
    for the upstream column, so its card is skipped with a note rather than a failed row."""
    from voxgate.embedding import load_card

    if not load_card(card).model.file.endswith(".tflite"):
        return None
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return "LiteRT not installed (pip install 'voxgate[litert]')"
    return None


UPSTREAM_MODULES = ("torch", "librosa", "resemblyzer")


def _torch_missing() -> list[str]:
    """The modules upstream Resemblyzer needs that are not installed."""
    import importlib.util

    return [m for m in UPSTREAM_MODULES if importlib.util.find_spec(m) is None]


WORKER_TIMEOUT_S = 900.0  # per model; a worker past it is killed and its row says so


def _run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ)
    # One thread everywhere: BLAS pools in numpy/torch would otherwise use every core.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    daemon_dir = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = daemon_dir + os.pathsep + env.get("PYTHONPATH", "")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "voxgate.commands.bench", json.dumps(spec)],
            capture_output=True,
            text=True,
            env=env,
            timeout=WORKER_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:  # killed by run(); the other models still get a row
        return {
            "system": spec["system"],
            "error": f"no result within {WORKER_TIMEOUT_S:g} s (fewer --runs?)",
        }
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    if proc.returncode != 0:
        if last.startswith('{"error": '):  # the worker's own account (see __main__ below)
            return {"system": spec["system"], **json.loads(last)}
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"system": spec["system"], "error": tail[0]}
    return json.loads(last)


def _fmt(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args) if getattr(args, "config", None) else None
    if getattr(args, "config", None) and cfg is None:
        return 2
    from voxgate.audio.file import MAX_TAKE_S

    # Longer than a take is refused like a long --audio file (1e9 s: 116 TiB per worker).
    if args.runs < 1 or not 0 < args.seconds <= MAX_TAKE_S:
        print(f"voxgate bench: --runs must be >= 1 and --seconds in (0, {MAX_TAKE_S:g}]",
              file=sys.stderr)  # fmt: skip
        return 2
    audio = None
    if args.audio:
        # Read and converted once here, not once per model in each worker (see worker).
        from voxgate.audio import AudioError
        from voxgate.audio.file import read_audio

        try:
            audio = read_audio(args.audio, max_s=MAX_TAKE_S)
            if audio.size == 0:
                raise AudioError(f"{args.audio}: no audio samples")
        except AudioError as exc:
            print(f"voxgate bench: {exc}", file=sys.stderr)
            return 2
        if audio.size > 16000 * args.seconds:  # the workers time its first --seconds only
            print(f"(--audio: timing its first {args.seconds:g} s of {audio.size / 16000:.1f} s; "
                  "--seconds sets how much)", file=sys.stderr)  # fmt: skip
    cpu = args.cpu
    if hasattr(os, "sched_getaffinity"):
        cores = os.sched_getaffinity(0)
        if cpu is None:
            cpu = max(cores)
        elif cpu not in cores:  # else every worker fails alone with "Invalid argument"
            usable = ", ".join(str(c) for c in sorted(cores))
            print(f"voxgate bench: --cpu {cpu}: not one of this process's cores ({usable})",
                  file=sys.stderr)  # fmt: skip
            return 2
    systems: list[str] = [str(p) for p in (args.model or [])]
    if not systems:
        if cfg is not None and cfg.speaker.model is not None:
            systems = [str(cfg.speaker.model)]
        else:
            for card in _shipped_cards():
                if why := _runtime_missing(card):
                    print(f"({card.name}: {why}: skipped)", file=sys.stderr)
                else:
                    systems.append(str(card))
    no_torch = "--no-torch"  # why the table has no ratio to upstream, if it has none
    if not args.no_torch:
        missing = _torch_missing()
        if not missing:
            systems.append("torch")
            no_torch = "its run failed: see its row"
        else:
            no_torch = (
                f"no {', '.join(missing)}; pip install 'voxgate[upstream]' && "
                "pip install --no-deps resemblyzer==0.1.4, see docs/models.md"
            )
            print(f"(upstream PyTorch Resemblyzer skipped: {no_torch})", file=sys.stderr)
    results = []
    with tempfile.TemporaryDirectory(prefix="voxgate-bench-") as tmp:
        samples = None
        if audio is not None:
            import numpy as np

            samples = str(Path(tmp) / "audio.npy")
            np.save(samples, audio)
        for i, system in enumerate(systems, 1):
            print(f"[{i}/{len(systems)}] {system} ...", file=sys.stderr, flush=True)
            spec = {
                "system": system,
                "runs": args.runs,
                "seconds": args.seconds,
                "audio": samples,
                "cpu": cpu,
            }
            results.append(_run_worker(spec))
    torch_ms = next(
        (r["median_ms"] for r in results if r["system"] == "torch" and "error" not in r), None
    )
    torch_rss = next(
        (r["peak_rss_mb"] for r in results if r["system"] == "torch" and "error" not in r), None
    )
    for r in results:
        if "error" not in r and torch_ms:
            r["speedup_vs_torch"] = torch_ms / r["median_ms"]
            r["rss_ratio_vs_torch"] = r["peak_rss_mb"] / torch_rss
    failed = 1 if any("error" in r for r in results) else 0
    if args.json:
        print(json.dumps(results, indent=2))
        return failed
    # What was timed: with every row failed, --seconds was printed even for a 0.3 s --audio.
    timed = args.seconds if audio is None else min(args.seconds, audio.size / 16000)
    seconds = next((r["seconds"] for r in results if "seconds" in r), timed)
    print(
        f"speaker embedding, {seconds:.1f} s utterance, 1 thread pinned to core {cpu}, "
        f"median of {args.runs} runs"
    )
    head = (
        f"{'model':34s} {'runtime':18s} {'load ms':>8s} {'ms/utt':>7s} {'p90':>6s} "
        f"{'windows':>7s} {'finish':>7s} {'RSS MB':>7s} {'x torch':>8s}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        if "error" in r:
            print(f"{r['system']:34s} failed: {r['error']}")
            continue
        speed = r.get("speedup_vs_torch")
        print(
            f"{r['name'][:34]:34s} {r['runtime'][:18]:18s} {r['load_ms']:8.0f} "
            f"{r['median_ms']:7.1f} {r['p90_ms']:6.1f} {r.get('windows', '-'):>7} "
            f"{_fmt(r['finish_ms']):>7s} "
            f"{r['peak_rss_mb']:7.0f} {_fmt(speed, '.2f'):>8s}"
        )
    print("windows = network runs per utterance (1: the whole utterance in one run)")
    print("finish = time left after the last audio of a stream (windows run while speaking)")
    print("RSS MB = the process's peak resident memory, model loaded and used (VmHWM)")
    if torch_ms:
        print("x torch = upstream's ms/utt / this row's: how many times faster than upstream")
    else:  # said on stderr before the runs too, but the table may be read without it
        print(f"x torch = -: no upstream Resemblyzer (torch) figures ({no_torch})")
    for r in results:
        if r.get("embed_only_ms") is not None:
            print(
                f"upstream = preprocess_wav + embed_utterance (level and silence trim, as ours); "
                f"embed_utterance alone (mel + network, untrimmed) {r['embed_only_ms']:.1f} ms"
            )
        if r.get("end_to_end_ms") is not None:
            # The same work as ours: a speed ratio of the code, not of the windowing.
            same = [
                f"{o['name']} {r['end_to_end_ms'] / o['median_ms']:.2f}x"
                for o in results
                if "error" not in o and o is not r and o.get("windows") == r["end_to_end_windows"]
            ]
            print(
                f"upstream with windows end to end (rate 0.625, {r['end_to_end_windows']} "
                f"windows) {r['end_to_end_ms']:.1f} ms"
                + (f"; at the same windows: {', '.join(same)}" if same else "")
            )
    return failed


if __name__ == "__main__":
    try:
        print(json.dumps(worker(json.loads(sys.argv[1]))))
    except Exception as exc:
        # The whole message on one line: its last line alone (all the parent could read from
        # a traceback) was e.g. ONNX Runtime's 'Please fix either the inputs/outputs or the
        # model.', without the file or the shape.
        print(json.dumps({"error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"}))
        sys.exit(1)
