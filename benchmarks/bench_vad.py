"""VAD agreement on real recordings padded with known silence.

Each recording from ../shared/data is placed between PAD_S seconds of padding (digital
silence, or recorded background noise at a low level). Ground truth per 30 ms frame:
padding is non-speech; inside the recording, frames whose energy is within 30 dB of the
recording's loudest frame are speech (the recordings' own pauses are left out of both).

Prints, per set: padding frames called speech (false alarms), active frames called speech
(hits), and the share of active frames that end up inside an utterance the endpointer
emits (what later stages get to see).

    python benchmarks/bench_vad.py [--per-set 40] [--noise-db -45]
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxgate.audio.file import read_audio
from voxgate.config.audio import VadConfig
from voxgate.vad import Endpointer, segment

SETS = ["fsdd", "speechcommands_v001_sample", "vcc2018_eval", "resemblyzer_ls"]
PAD_S = 1.0
FRAME = 480


@dataclass
class Agreement:
    recordings: int = 0
    pad_frames: int = 0
    pad_false_alarms: int = 0
    active_frames: int = 0
    active_hits: int = 0
    covered_frames: int = 0

    @property
    def false_alarm_rate(self) -> float:
        return self.pad_false_alarms / max(1, self.pad_frames)

    @property
    def hit_rate(self) -> float:
        return self.active_hits / max(1, self.active_frames)

    @property
    def covered_rate(self) -> float:
        return self.covered_frames / max(1, self.active_frames)


def active_frames(pcm: np.ndarray) -> np.ndarray:
    n = len(pcm) // FRAME
    energy = (pcm[: n * FRAME].astype(np.float64).reshape(n, FRAME) ** 2).mean(axis=1)
    db = 10 * np.log10(energy + 1e-9)
    return db > db.max() - 30


def measure(paths: list[Path], noise: np.ndarray | None, cfg: VadConfig) -> Agreement:
    a = Agreement()
    pad_len = int(PAD_S * 16000) // FRAME * FRAME
    for path in paths:
        rec = read_audio(path)
        rec = rec[: len(rec) // FRAME * FRAME]
        pad = np.zeros(pad_len, dtype=np.int16) if noise is None else noise[:pad_len]
        pcm = np.concatenate([pad, rec, pad])
        ep = Endpointer(cfg, 30)
        frames = pcm.reshape(-1, FRAME)
        decisions = np.array([ep.is_speech(f) for f in frames])
        p = pad_len // FRAME
        truth = active_frames(rec)
        a.recordings += 1
        a.pad_frames += 2 * p
        a.pad_false_alarms += int(decisions[:p].sum() + decisions[-p:].sum())
        a.active_frames += int(truth.sum())
        a.active_hits += int(decisions[p : p + len(truth)][truth].sum())
        inside = np.zeros(len(frames), dtype=bool)
        for u in segment(pcm, cfg):
            inside[round(u.start_s / 0.03) : round(u.end_s / 0.03)] = True
        a.covered_frames += int(inside[p : p + len(truth)][truth].sum())
    return a


def pick(data: Path, name: str, n: int) -> list[Path]:
    with open(data / name / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    step = max(1, len(rows) // n)  # spread over speakers, deterministic
    return [data / name / r["path"] for r in rows[::step][:n]]


def noise_pad(data: Path, level_db: float) -> np.ndarray:
    noise = read_audio(data / "noise" / "running_tap.flac")[: 16000 * 2].astype(np.float64)
    rms = np.sqrt((noise**2).mean())
    return (noise / rms * 32768 * 10 ** (level_db / 20)).astype(np.int16)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data"
    )
    ap.add_argument("--per-set", type=int, default=40)
    ap.add_argument("--noise-db", type=float, default=-45.0, help="noise padding level, dBFS RMS")
    ap.add_argument("--aggressiveness", type=int, default=VadConfig().aggressiveness)
    args = ap.parse_args()
    if not (args.data / "fsdd").exists():
        print(f"no evaluation data at {args.data}", file=sys.stderr)
        return 1
    cfg = VadConfig(aggressiveness=args.aggressiveness)
    print(f"webrtcvad aggressiveness {cfg.aggressiveness}, 30 ms frames, {PAD_S} s padding")
    print(
        f"{'set':<28} {'padding':<14} {'n':>4} {'false alarm':>12} {'speech hit':>11} "
        f"{'in utterance':>13}"
    )
    for name in SETS:
        paths = pick(args.data, name, args.per_set)
        for label, noise in (
            ("silence", None),
            (f"tap {args.noise_db:g} dB", noise_pad(args.data, args.noise_db)),
        ):
            a = measure(paths, noise, cfg)
            print(
                f"{name:<28} {label:<14} {a.recordings:>4} {a.false_alarm_rate:>11.1%} "
                f"{a.hit_rate:>11.1%} {a.covered_rate:>13.1%}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
