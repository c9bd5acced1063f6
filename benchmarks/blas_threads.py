"""Whole-process cost of `voxgate enroll --from` and `voxgate eval` with numpy's OpenBLAS on
its own default thread count (one per usable CPU) and on one thread, run alternately.

    PYTHONPATH=daemon python benchmarks/blas_threads.py [--repeat 3] [--cpus 0,1]

First, in a bare child per arm: the CPU one matrix product of the replay check's size
(300 x 257 by 257 x 40, float64) costs when 1 s of nothing follows it, i.e. with the time
OpenBLAS's other threads spin after it (median of 5).

Each run is a fresh `python -m voxgate ...` child pinned to --cpus (default: every CPU this
process may use), with OPENBLAS_NUM_THREADS set explicitly in both arms, so it compares the
same two settings whatever voxgate's own default is (voxgate/blas.py). Printed per command
and arm: CPU (user + system, all threads, from wait4), wall time, peak RSS (ru_maxrss),
median and range over --repeat runs. The commands:
- enroll: 8 recordings of one vcc2018_eval speaker (28 s) from files, into a fresh store
  (quality checks, near-duplicate check, embeddings);
- eval: `voxgate eval` on fsdd with its embedding cache filled by a first, uncounted run
  (so the figures are the back end: enrollment checks, cohort scoring, the report).
The door itself (a verify per utterance in `voxgate run`) is benchmarks/bench_latency.py:
run it with OPENBLAS_NUM_THREADS=N and =1 and --cpus.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "daemon"))

from voxgate.audio.file import read_audio  # noqa: E402

# What OpenBLAS reads for its thread count: cleared, so only the arm's value counts.
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")


def run(argv: list[str], threads: int, cpus: set[int]) -> tuple[float, float, float]:
    """CPU s, wall s and peak RSS MB of one `python -m voxgate` child."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    env["PYTHONPATH"] = str(REPO / "daemon")
    env["OPENBLAS_NUM_THREADS"] = str(threads)
    started = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-m", "voxgate", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    )
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        assert child.stderr is not None
        raise SystemExit(f"voxgate {' '.join(argv)} failed:\n{child.stderr.read().decode()}")
    return usage.ru_utime + usage.ru_stime, wall, usage.ru_maxrss / 1024


SPIN = """
import time, numpy as np
a, b = np.random.rand(300, 257), np.random.rand(257, 40)
a @ b
time.sleep(0.5)
cpu = []
for _ in range(5):
    t = time.process_time()
    a @ b
    time.sleep(1.0)
    cpu.append(time.process_time() - t)
print(sorted(cpu)[2] * 1000)
"""


def spin_ms(threads: int, cpus: set[int]) -> float:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    env["OPENBLAS_NUM_THREADS"] = str(threads)
    out = subprocess.run(
        [sys.executable, "-c", SPIN],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    ).stdout
    return float(out)


def takes(data: Path, work: Path, n: int) -> list[str]:
    """The first n recordings of vcc2018_eval's first speaker (about 4 s each), as WAV files:
    enrollment needs 20 s of speech by default."""
    root = data / "vcc2018_eval"
    with open(root / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    speaker = rows[0]["speaker"]
    out = []
    for i, row in enumerate([r for r in rows if r["speaker"] == speaker][:n]):
        path = work / f"take{i}.wav"
        sf.write(path, read_audio(root / row["path"]), 16000)
        out.append(str(path))
    return out


def spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


Runs = dict[tuple[str, str], list[tuple[float, float, float]]]


def measure(
    args: argparse.Namespace, work: Path, cpus: set[int], arms: dict[str, int]
) -> tuple[Runs, list[float]]:
    key = work / "voiceprint.key"
    run(["users", "init-key", str(key)], 1, cpus)
    files = takes(args.data, work, 8)
    cache = work / "eval-fsdd"
    eval_argv = ["eval", str(args.data / "fsdd"), "--out", str(cache)]
    run(eval_argv, 1, cpus)  # fills the embedding cache
    loads = [os.getloadavg()[0]]
    got: Runs = {}
    for rep in range(args.repeat):
        for i, (arm, threads) in enumerate(arms.items()):
            cfg = work / f"enroll-{rep}-{i}.yaml"
            cfg.write_text(f"data_dir: {work / cfg.stem}\nspeaker: {{key_file: {key}}}\n")
            enroll = ["enroll", "alice", "--from", *files, "-c", str(cfg)]
            for name, argv in (
                ("enroll --from (8 takes)", enroll),
                ("eval fsdd (cached)", eval_argv),
            ):
                got.setdefault((name, arm), []).append(run(argv, threads, cpus))
            loads.append(os.getloadavg()[0])
    return got, loads


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cpus", help="comma-separated CPUs for the children (default: all usable)")
    args = ap.parse_args()
    cpus = {int(c) for c in args.cpus.split(",")} if args.cpus else os.sched_getaffinity(0)
    if not (args.data / "fsdd").is_dir():
        print(f"blas_threads.py: no data at {args.data}", file=sys.stderr)
        return 2
    arms = {f"{len(cpus)} threads (OpenBLAS default)": len(cpus), "1 thread": 1}
    if len(cpus) == 1:  # OpenBLAS starts no more threads than CPUs: nothing to compare
        arms = {"1 thread (OpenBLAS default)": 1}
    spin = {arm: spin_ms(threads, cpus) for arm, threads in arms.items()}
    with tempfile.TemporaryDirectory(prefix="voxgate-blas-") as tmp:
        got, loads = measure(args, Path(tmp), cpus, arms)
    print(
        f"blas_threads.py: CPUs {','.join(map(str, sorted(cpus)))} of {os.cpu_count()}; "
        f"{args.repeat} runs per row, alternated; load average {min(loads):.1f}-{max(loads):.1f}"
    )
    for arm, ms in spin.items():
        print(f"one product, then 1 s idle, {arm}: {ms:.1f} ms CPU")
    print(f"{'command':24s} {'OpenBLAS':28s} {'CPU s':>18s} {'wall s':>18s} {'peak RSS MB':>20s}")
    for (name, arm), rows in got.items():
        cpu, wall, rss = zip(*rows, strict=True)
        print(
            f"{name:24s} {arm:28s} {spread(list(cpu), '.2f'):>18s} "
            f"{spread(list(wall), '.2f'):>18s} {spread(list(rss), '.1f'):>20s}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
