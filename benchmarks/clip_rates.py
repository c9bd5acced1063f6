"""Clipping read through a 44.1 or 48 kHz input: does the quality gate see as much of it as at
16 kHz? The audio boundary (audio/convert.py) resamples to 16 kHz, rounds to int16 and
removes DC; the gate (quality.assess: Quality.clipped, the share of samples in runs of >= 3
samples at full scale) reads what comes out.

Each of --files speech files per set (evenly through its manifest.csv, read as 16 kHz) is
resampled to each --rates rate (scipy.signal.resample_poly; 16000: as it is), given a DC
offset (--offsets, LSB) and made louder by a gain (--gains), then rounded and saturated at
int16 full scale, as a hot microphone with an offset clips. It is written as a 16-bit WAV at
that rate and read back through audio.file.read_audio, as the door reads a file.

Printed per set, rate, offset and gain: the clipped fraction read (median and mean over the
files), how many files read above speaker.max_clipped (the gate retries them), and how many
read above it at 16 kHz (same offset and gain) but not at this rate: takes the gate lets
through only because of the input rate. Gain 1 is the clean speech: it must read 0.

    PYTHONPATH=daemon python benchmarks/clip_rates.py [--data DIR] [--sets SET ...]
        [--files N] [--rates HZ ...] [--offsets LSB ...] [--gains G ...]

Skips (exit 0, with a message) when the data is not there.
"""

from __future__ import annotations

import csv
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from _stats import set_parser, sets_status
from scipy.signal import resample_poly

from voxgate.audio.base import SAMPLE_RATE
from voxgate.audio.file import read_audio
from voxgate.config import VoxgateConfig
from voxgate.quality import assess

SETS = ["fsdd", "vcc2018_eval"]
RATES = [16000, 44100, 48000]
OFFSETS = [0, 100, 300, 1000]
GAINS = [1.0, 2.0, 4.0, 8.0]


def speech(root: Path, n: int) -> list[np.ndarray]:
    """n files evenly through the set's manifest, as 16 kHz int16."""
    with open(root / "manifest.csv", newline="", encoding="utf-8") as f:
        paths = [row["path"] for row in csv.DictReader(f)]
    picked = np.linspace(0, len(paths) - 1, min(n, len(paths))).round().astype(int)
    return [read_audio(root / paths[i]) for i in picked]


def at_rate(pcm: np.ndarray, rate: int) -> np.ndarray:
    """16 kHz speech as the same speech sampled at `rate` (float, int16 scale)."""
    x = pcm.astype(np.float64)
    if rate == SAMPLE_RATE:
        return x
    g = math.gcd(rate, SAMPLE_RATE)
    return np.asarray(resample_poly(x, rate // g, SAMPLE_RATE // g))


def hot(x: np.ndarray, gain: float, offset: float) -> np.ndarray:
    """A microphone `gain` times too hot with a DC `offset`: clipped at int16 full scale."""
    return np.clip(np.rint(x * gain + offset), -32768, 32767).astype(np.int16)


def main() -> int:
    ap = set_parser(__doc__, SETS)
    ap.add_argument("--files", type=int, default=40, help="speech files per set (default 40)")
    ap.add_argument("--rates", nargs="+", type=int, default=RATES)
    ap.add_argument("--offsets", nargs="+", type=float, default=OFFSETS)
    ap.add_argument("--gains", nargs="+", type=float, default=GAINS)
    args = ap.parse_args()
    if SAMPLE_RATE not in args.rates:
        ap.error(f"--rates must include {SAMPLE_RATE} (what the other rates are compared with)")
    if any(not 8000 <= r <= 192000 for r in args.rates):
        ap.error("--rates: 8000-192000 Hz")
    if args.files < 1 or any(g <= 0 for g in args.gains):
        ap.error("--files and --gains must be positive")
    status = sets_status("clip_rates.py", args.data, args.sets, need="manifest.csv")
    if status is not None:
        return status
    cfg = VoxgateConfig()
    level = cfg.speaker.max_clipped
    print(f"Clipped fraction read through read_audio (Quality.clipped); gate level {level:.2%}\n")
    print("| set | rate | offset | gain | clipped, median | clipped, mean | retried | "
          "retried at 16 kHz, not here |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "take.wav"
        for name in args.sets:
            clean = speech(args.data / name, args.files)
            ref: dict[tuple[float, float], np.ndarray] = {}
            for rate in sorted(args.rates, key=lambda r: r != SAMPLE_RATE):  # 16 kHz first
                sources = [at_rate(pcm, rate) for pcm in clean]
                for offset in args.offsets:
                    for gain in args.gains:
                        read = []
                        for x in sources:
                            sf.write(wav, hot(x, gain, offset), rate, subtype="PCM_16")
                            read.append(assess(read_audio(wav), cfg.vad).clipped)
                        c = np.array(read)
                        over = c > level
                        base = ref.setdefault((offset, gain), over)
                        print(
                            f"| {name} | {rate} | {offset:g} | x{gain:g} | "
                            f"{np.median(c):.2%} | {c.mean():.2%} | {over.sum()}/{len(c)} | "
                            f"{(base & ~over).sum()} |",
                            flush=True,
                        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
