"""The quality gate and a quiet microphone: does turning the audio down change what the gate
says about it?

An SNR is a ratio, so a recording made quieter as a whole should read the same SNR and the
same net speech. webrtcvad, which labels speech and pauses for the gate, misses quiet
speech: a quiet microphone's words counted as pause noise (too noisy) and as missing speech
(too little speech), and enrollment takes were refused for it. Since 2026-11-27 the gate's
VAD hears each recording raised to quality.HEAR_DBFS (-30 dBFS, raise only; the powers it
compares stay the recording's own). This prints both, per set and gain:

- "before": `quality.assess(..., hear_dbfs=None)`, the VAD on the recording as it is;
- "now": the shipped `quality.assess`.

Every test recording of the protocol (each trial's test side, once) is scaled by --gains dB
in int16 and gated as `voxgate eval` gates it (a file: `quality.gate_reasons` with the
shipped speaker levels); every enrollment take is checked as enrollment checks it
(`enrollment.take_problem`). Printed: recordings retried as too noisy and as too little
speech, takes rejected, and the median SNR estimate. With --door, each test recording is
put in a quiet room first (1.5 s of pink noise before and after it, 45 dB below its speech;
../shared/data/noise), the whole scaled by the gain, and the endpointer's utterance with the
most speech (vad.segment, the `vad:` defaults, on the audio as it is, as the daemon's
endpointer hears it) gated as the door gates it (live), and last, over all gains, the share
of utterances retried by the recording's speech level (Quality.speech_dbfs of the turned-down
recording, as `voxgate enroll` shows a take's; 5 dB bins): where quality.QUIET_SPEECH_DBFS
comes from.

    PYTHONPATH=daemon python benchmarks/quiet_gate.py [--data DIR] [--sets SET ...]
        [--gains DB ...] [--door]

Skips (exit 0, with a message) when the data is not there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from voxgate.audio.file import read_audio
from voxgate.config.audio import VadConfig
from voxgate.config.speaker import SpeakerConfig
from voxgate.enrollment import take_problem
from voxgate.evaluation import load_recording, read_set
from voxgate.quality import assess, gate_reasons
from voxgate.vad import segment

REPO = Path(__file__).resolve().parent.parent
SETS = ["fsdd", "vcc2018_eval", "speechcommands_v001_sample", "resemblyzer_ls"]
ROOM_S = 1.5
ROOM_BELOW_DB = 45.0


def scaled(pcm: np.ndarray, gain_db: float) -> np.ndarray:
    y = np.round(pcm.astype(np.float64) * 10 ** (gain_db / 20))
    return np.clip(y, -32768, 32767).astype(np.int16)


def in_room(pcm: np.ndarray, noise: np.ndarray, offset: int) -> np.ndarray:
    """`pcm` with ROOM_S of `noise` before and after, the noise ROOM_BELOW_DB below the
    recording's loudest tenth of 30 ms frames (its speech) throughout."""
    x = pcm.astype(np.float64)
    n = len(x) // 480 * 480
    frames = (x[:n].reshape(-1, 480) ** 2).mean(axis=1) if n else np.array([1.0])
    speech = float(np.percentile(frames, 90)) or 1.0
    pad = int(ROOM_S * 16000)
    total = len(x) + 2 * pad
    piece = np.resize(np.roll(noise, -offset), total)
    piece = piece / np.sqrt((piece**2).mean()) * np.sqrt(speech) * 10 ** (-ROOM_BELOW_DB / 20)
    out = piece.copy()
    out[pad : pad + len(x)] += x
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)


def door_utterance(pcm: np.ndarray, vad: VadConfig) -> np.ndarray:
    found = segment(pcm, vad)
    return max(found, key=lambda u: u.speech_s).pcm if found else pcm


def run_set(name: str, args: argparse.Namespace, noise: np.ndarray | None) -> None:
    es = read_set(args.data / name)
    s = SpeakerConfig()
    vad = VadConfig()
    levels = (s.min_speech_s, s.min_snr_db, s.min_snr_db_no_pauses)
    tests = sorted({r for _, r, _ in es.trials})
    takes = sorted({r for recs in es.enroll.values() for r in recs})
    audio = {r: load_recording(es.root, r) for r in tests + takes}
    print(f"{name}: {len(tests)} test recordings, {len(takes)} enrollment takes", flush=True)
    by_level: list[tuple[float, bool]] = []  # --door, now: (speech level, retried)
    for gain in args.gains:
        cells = []
        for hear in (None, "now"):
            kw = {} if hear else {"hear_dbfs": None}
            noisy = little = 0
            snrs = []
            for i, r in enumerate(tests):
                if noise is None:
                    q = assess(scaled(audio[r], gain), vad, **kw)
                else:
                    room = scaled(in_room(audio[r], noise, 7919 * i), gain)
                    q = assess(door_utterance(room, vad), vad, live=True, **kw)
                why = gate_reasons(q, *levels, max_clipped=s.max_clipped)
                noisy += "too_noisy" in why
                little += "too_little_speech" in why
                if noise is not None and hear:
                    level = assess(scaled(audio[r], gain), vad).speech_dbfs
                    by_level.append((-99.0 if level is None else level, bool(why)))
                snrs.append(q.snr_db)
            rejected = sum(
                take_problem(assess(scaled(audio[r], gain), vad, **kw), s) is not None
                for r in takes
            )
            cells.append((noisy, little, rejected, float(np.median(snrs))))
        (n0, l0, r0, m0), (n1, l1, r1, m1) = cells
        print(
            f"  {gain:+4.0f} dB  too noisy {n0:3d} -> {n1:3d}   too little speech {l0:3d} -> "
            f"{l1:3d}   takes rejected {r0:3d} -> {r1:3d}   median SNR {m0:5.1f} -> {m1:5.1f} dB",
            flush=True,
        )
    if by_level:
        levels = np.array([lv for lv, _ in by_level])
        retried = np.array([r for _, r in by_level])
        print("  retried at the door by speech level (all gains):")
        for top in range(-10, -65, -5):
            inside = (levels <= top) & (levels > top - 5)
            if inside.sum():
                share = 100 * retried[inside].mean()
                print(f"    {top - 5:4d} to {top:4d} dBFS  {share:5.1f} % of {inside.sum()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--sets", nargs="+", default=SETS)
    ap.add_argument("--gains", nargs="+", type=float, default=[0, -10, -20, -30, -40])
    ap.add_argument("--door", action="store_true", help="a quiet room and the endpointer")
    args = ap.parse_args()
    missing = [s for s in args.sets if not (args.data / s / "trials.csv").is_file()]
    if missing:
        print(f"skipped: no protocol data for {', '.join(missing)} under {args.data}")
        return 0
    noise = None
    if args.door:
        path = args.data / "noise" / "pink_noise.flac"
        if not path.is_file():
            print(f"skipped: {path} is not there")
            return 0
        noise = read_audio(path).astype(np.float64)
    print("before -> now: the gate's VAD on the recording as it is -> raised to -30 dBFS")
    for name in args.sets:
        run_set(name, args, noise)
    return 0


if __name__ == "__main__":
    sys.exit(main())
