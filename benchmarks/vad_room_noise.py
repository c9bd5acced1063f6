"""How long after the end of speech the endpointer ends an utterance, in room noise.

Each vcc2018_eval sentence (peak -10 dBFS) sits between 3 s before and 6 s after of white
noise at each --levels dBFS, in two layouts:
  room:   noise throughout, as a microphone in a room hears it;
  sudden: digital silence before and during the speech, the noise only after it (what a
          synthetic test stream with a noisy gap gives; webrtcvad has had no noise to adapt
          to, and takes seconds to call it non-speech).
Prints the median delay from the end of the sentence to the end of its utterance, how many
sentences ran on to `vad.max_utterance_ms` or never ended, and the utterances that started in
the first 3 s (before the speech: noise taken for speech).

    PYTHONPATH=daemon python benchmarks/vad_room_noise.py [--data ../shared/data] [--items 10]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

import numpy as np

from voxgate.audio.file import read_audio
from voxgate.config.audio import VadConfig
from voxgate.vad import Endpointer, SpeechEnded, SpeechStarted

RATE, FRAME, BEFORE_S, AFTER_S = 16000, 480, 3.0, 6.0


def events(pcm: np.ndarray, mode: int) -> list[tuple[str, float]]:
    ep, out = Endpointer(VadConfig(aggressiveness=mode)), []
    for i in range(0, len(pcm) - FRAME + 1, FRAME):
        for e in ep.feed(pcm[i : i + FRAME]):
            if isinstance(e, SpeechStarted | SpeechEnded):
                kind = "start" if isinstance(e, SpeechStarted) else "end"
                out.append((kind, (i + FRAME) / RATE))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--items", type=int, default=10)
    ap.add_argument("--mode", type=int, default=2, help="webrtcvad mode (default 2, as shipped)")
    ap.add_argument("--levels", type=float, nargs="+", default=[-70, -64, -58, -50, -40])
    args = ap.parse_args()
    folder = args.data / "vcc2018_eval"
    if not (folder / "manifest.csv").is_file():
        print(f"vad_room_noise.py: {folder}/manifest.csv not found (--data)", file=sys.stderr)
        return 1
    with open(folder / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))[: args.items]
    speech = []
    for row in rows:
        x = read_audio(folder / row["path"]).astype(np.float64)
        speech.append(x / max(np.abs(x).max(), 1.0) * 0.316 * 32767)
    rng = np.random.default_rng(0)
    print(f"{len(speech)} sentences, webrtcvad mode {args.mode}")
    print(
        f"{'noise dBFS':>10} {'layout':>7} {'end delay p50':>14} {'ran on':>7} {'early starts':>13}"
    )
    for level in args.levels:
        for layout in ("room", "sudden"):
            delays, ran_on, early = [], 0, 0
            for sp in speech:
                before, after = int(BEFORE_S * RATE), int(AFTER_S * RATE)
                x = np.concatenate([np.zeros(before), sp, np.zeros(after)])
                noise = rng.normal(0, 32767 * 10 ** (level / 20), len(x))
                if layout == "sudden":
                    noise[: before + len(sp)] = 0
                pcm = np.clip(x + noise, -32768, 32767).astype(np.int16)
                ev = events(pcm, args.mode)
                early += sum(1 for kind, t in ev if kind == "start" and t < BEFORE_S)
                stop = (before + len(sp)) / RATE
                ends = [t - stop for kind, t in ev if kind == "end" and t > stop - 0.3]
                if ends and ends[0] < 2.0:
                    delays.append(ends[0])
                else:
                    ran_on += 1
            p50 = f"{statistics.median(delays):.2f} s" if delays else "-"
            print(f"{level:>10g} {layout:>7} {p50:>14} {ran_on:>7} {early:>13}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
