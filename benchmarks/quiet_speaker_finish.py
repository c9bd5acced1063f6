"""Time left after the last audio of a streamed attempt, for a speaker at the recording's
level and for one quiet throughout.

A speaker whose audio stays below the trim's quiet level (trim.QUIET_DB under the card's
level) has the trim's first stretch decided at the end of the utterance, so no window runs
while they speak and all of them run at finish(). This streams each recording in 30 ms
frames, as the door does, and prints the median / p90 / max of finish() in ms per gain.

    PYTHONPATH=daemon python benchmarks/quiet_speaker_finish.py --data ../shared/data \\
        [--set vcc2018_eval] [--items 40] [--gains 0 -40] [--cpu 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from voxgate.embedding import load_embedder
from voxgate.embedding.errors import TooShort
from voxgate.evaluation import load_recording, read_set

FRAME = 480  # 30 ms at 16 kHz, the door's frame


def finish_ms(pcm: np.ndarray, embedder: object) -> float:
    stream = embedder.stream()  # type: ignore[attr-defined]
    for i in range(0, len(pcm), FRAME):
        stream.push(pcm[i : i + FRAME])
    t = time.perf_counter()
    stream.finish()
    return (time.perf_counter() - t) * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="folder holding the sets")
    ap.add_argument("--set", default="vcc2018_eval")
    ap.add_argument("--items", type=int, default=40, help="first N recordings of the manifest")
    ap.add_argument("--gains", type=float, nargs="+", default=[0.0, -40.0], help="dB")
    ap.add_argument("--cpu", type=int, default=None, help="pin to this core")
    args = ap.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    root = args.data / args.set
    if not root.is_dir():
        print(f"quiet_speaker_finish: no set at {root}", file=sys.stderr)
        return 2
    paths = list(read_set(root, need_trials=False).speaker_of)[: args.items]
    clips = [load_recording(root, p).astype(np.float64) for p in paths]
    embedder = load_embedder()
    median_s = np.median([len(c) for c in clips]) / 16000
    print(f"{args.set}: {len(clips)} recordings, median {median_s:.1f} s")
    for gain in args.gains:
        scale = 10 ** (gain / 20)
        ms, levels, short = [], [], 0
        for c in clips:
            pcm = np.clip(np.round(c * scale), -32768, 32767).astype(np.int16)
            try:
                ms.append(finish_ms(pcm, embedder))
            except TooShort:  # the door answers these with "retry"; nothing to time
                short += 1
                continue
            levels.append(10 * np.log10(np.mean((pcm / 32768.0) ** 2) + 1e-12))
        if not ms:
            print(f"gain {gain:+.0f} dB: every recording too short to embed")
            continue
        print(
            f"gain {gain:+.0f} dB (median level {np.median(levels):.1f} dBFS): finish ms "
            f"median {np.median(ms):.1f}, p90 {np.percentile(ms, 90):.1f}, max {max(ms):.1f}"
            f" ({len(ms)} timed, {short} too short to embed)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
