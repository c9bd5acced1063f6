"""embed() of two checkouts, timed turn about on one core, so both see the same load.

    git archive 04c1822 daemon | tar -x -C /tmp/old
    python benchmarks/embed_ab.py /tmp/old/daemon daemon [--rounds 40] [--per-turn 10] [--cpu 0]
        [--front-end | --stream]

On a shared machine the load changes from one minute to the next, and two benchmark runs made
one after the other differ by more than a small change makes. Here two worker processes (one
per checkout's `daemon/` folder, each pinned to the same core, one inference thread, the
daemon's allocator settings) embed the same synthetic 3 s utterance `voxgate bench` uses, a
few times each in turn, A then B then B then A...; printed per checkout: the median wall time
and CPU time of one embed() over all turns, and the median over rounds of B's time / A's.
With --front-end only embed()'s steps before the network are timed; with --stream a whole
stream (30 ms pushes, then finish()), as the daemon embeds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

WORKER = """
import json, os, sys, time
for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(v, "1")
os.sched_setaffinity(0, {int(sys.argv[1])})
from voxgate.service.malloc import tune_malloc
tune_malloc()
from voxgate.commands.bench import synthetic_speech
from voxgate.embedding import load_embedder
emb = load_embedder(None, 1)
pcm = synthetic_speech(float(sys.argv[2]))
for _ in range(20):
    emb.embed(pcm)
print(json.dumps({"ready": emb.model_id}), flush=True)
def front_end():
    # embed()'s steps up to the network: trim, mel, level gains
    from voxgate.features import to_float
    speech = emb.speech_of(pcm)
    starts = emb.window_starts(speech.size)
    audio = to_float(speech)
    emb.frontend.frames(audio, n_frames=starts[-1] + emb.card.windowing.frames)
    if "from_int16" in emb._gains.__code__.co_varnames:  # since the front end's speed-up
        emb._gains(audio, starts, from_int16=speech.dtype == np.int16)
    else:
        emb._gains(audio, starts)
def streamed():
    # what the daemon does: 30 ms pushes while the person speaks, then finish()
    stream = emb.stream()
    for i in range(0, pcm.size, 480):
        stream.push(pcm[i : i + 480])
    stream.finish()
import numpy as np
step = {"front": front_end, "stream": streamed}.get(sys.argv[3], lambda: emb.embed(pcm))
for line in sys.stdin:
    wall, cpu = [], []
    for _ in range(int(line)):
        t0, c0 = time.perf_counter(), time.thread_time()
        step()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    print(json.dumps({"wall": wall, "cpu": cpu}), flush=True)
"""


def median(values: list[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def start(daemon: Path, cpu: int, seconds: float, what: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(daemon.resolve()))
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(cpu), str(seconds), what],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path, help="first checkout's daemon/ folder (e.g. the old code)")
    ap.add_argument("b", type=Path, help="second checkout's daemon/ folder")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--per-turn", type=int, default=10, help="embed() calls per turn")
    ap.add_argument("--cpu", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=3.0)
    what = ap.add_mutually_exclusive_group()
    what.add_argument(
        "--front-end", action="store_true", help="time embed()'s steps before the network only"
    )
    what.add_argument(
        "--stream", action="store_true", help="time a whole stream: 30 ms pushes and finish()"
    )
    args = ap.parse_args()
    for d in (args.a, args.b):
        if not (d / "voxgate" / "__init__.py").is_file():
            print(f"embed_ab.py: {d}: no voxgate package in it", file=sys.stderr)
            return 2
    if args.rounds < 1 or args.per_turn < 1:
        print("embed_ab.py: --rounds and --per-turn must be >= 1", file=sys.stderr)
        return 2
    what = "front" if args.front_end else "stream" if args.stream else "embed"
    workers = [start(d, args.cpu, args.seconds, what) for d in (args.a, args.b)]
    try:
        for w in workers:
            assert w.stdout is not None
            if not w.stdout.readline():
                print("embed_ab.py: a worker failed to start (see above)", file=sys.stderr)
                return 1
        wall: list[list[float]] = [[], []]
        cpu: list[list[float]] = [[], []]
        ratios = []
        for r in range(args.rounds):
            turn = {}
            for i in (0, 1) if r % 2 == 0 else (1, 0):
                w = workers[i]
                assert w.stdin is not None and w.stdout is not None
                w.stdin.write(f"{args.per_turn}\n")
                w.stdin.flush()
                got = json.loads(w.stdout.readline())
                wall[i] += got["wall"]
                cpu[i] += got["cpu"]
                turn[i] = median(got["wall"])
            ratios.append(turn[1] / turn[0])
    finally:
        for w in workers:
            w.kill()
            w.wait()
    print(
        f"{ {'front': 'front end', 'stream': 'stream'}.get(what, 'embed()') } of "
        f"{args.seconds:g} s, core {args.cpu}, "
        f"{args.rounds} rounds x "
        f"{args.per_turn} calls each, turn about"
    )
    for name, d, wl, cp in zip("AB", (args.a, args.b), wall, cpu, strict=True):
        print(
            f"  {name} {d!s:<36} wall {median(wl) * 1000:6.2f} ms "
            f"(p10 {sorted(wl)[len(wl) // 10] * 1000:.2f})  cpu {median(cp) * 1000:6.2f} ms"
        )
    rs = sorted(ratios)
    print(
        f"  B / A per round: median {median(rs):.3f} "
        f"(middle half {rs[len(rs) // 4]:.3f}-{rs[3 * len(rs) // 4]:.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
