"""What the quality gate's pauses hold in each protocol set's own test recordings: why a set
the model scores well can read near speaker.min_snr_db.

For each test recording, the frames the gate measures its noise in (quality._snr_db: 30 ms
frames the VAD calls non-speech, digital silence left out) are described by
- the gate's SNR estimate (quality.assess) and whether it was measured in pauses;
- how steady they are: the spread (standard deviation) of their power in dB;
- where their power lies: the share below 150 Hz (hum, rumble, handling);
- the SNR the same estimate gives above 150 Hz (speech and pause frames high-passed by a
  4th-order Butterworth filter), where the model's mel bands hold nearly all the speech.
Printed per set: medians over its test recordings (10th to 90th percentile for the SNRs).

    PYTHONPATH=daemon python benchmarks/pause_noise.py [--data DIR] [--sets SET ...]

Skips (exit 0, with a message) when the data is not there.
"""

from __future__ import annotations

import sys

import numpy as np
from _stats import set_parser, sets_status
from scipy.signal import butter, sosfilt

from voxgate.audio.base import SAMPLE_RATE
from voxgate.config.audio import VadConfig
from voxgate.evaluation import load_recording, read_set
from voxgate.quality import FRAME_MS, assess
from voxgate.vad import Endpointer

SETS = ["vcc2018_eval", "fsdd", "speechcommands_v001_sample", "resemblyzer_ls"]
SPLIT_HZ = 150.0


def describe(pcm: np.ndarray, vad_cfg: VadConfig) -> tuple[float, bool, float, float, float]:
    """(gate SNR, from pauses, pause power spread dB, share of pause power below SPLIT_HZ,
    SNR above SPLIT_HZ) of one recording; NaN where it has no pauses or no speech."""
    q = assess(pcm, vad_cfg)
    ep = Endpointer(vad_cfg, FRAME_MS)
    n = ep.frame_len
    frames = pcm[: len(pcm) // n * n].reshape(-1, n)
    speech = np.array([ep.is_speech(f) for f in frames])
    pauses = ~speech & np.any(frames != 0, axis=1)
    if pauses.sum() < 2 or speech.sum() == 0:
        return q.snr_db, q.snr_from_pauses, np.nan, np.nan, np.nan
    sos = butter(4, SPLIT_HZ, "highpass", fs=SAMPLE_RATE, output="sos")
    high = sosfilt(sos, pcm.astype(np.float64))[: len(frames) * n].reshape(-1, n)
    power = (frames.astype(np.float64) ** 2).mean(axis=1) + 1.0
    power_high = (high**2).mean(axis=1) + 1.0
    noise_high = np.median(power_high[pauses])
    low_share = 1 - power_high[pauses].sum() / power[pauses].sum()
    snr_high = 10 * np.log10(max(power_high[speech].mean() - noise_high, 1e-3) / noise_high)
    spread = float(np.std(10 * np.log10(power[pauses])))
    return q.snr_db, q.snr_from_pauses, spread, float(low_share), float(snr_high)


def pct(x: np.ndarray) -> str:
    lo, mid, hi = np.nanpercentile(x, [10, 50, 90])
    return f"{mid:.1f} ({lo:.1f} to {hi:.1f})"


def main() -> int:
    ap = set_parser(__doc__, SETS)
    args = ap.parse_args()
    status = sets_status("pause_noise.py", args.data, args.sets)
    if status is not None:
        return status
    vad_cfg = VadConfig()
    print(
        "| set | test recordings | gate SNR (dB) | from pauses | pause power spread (dB) "
        f"| pause power below {SPLIT_HZ:g} Hz | SNR above {SPLIT_HZ:g} Hz (dB) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in args.sets:
        es = read_set(args.data / name)
        tests = list(dict.fromkeys(r for _, r, _ in es.trials))
        rows = np.array(
            [describe(load_recording(es.root, r), vad_cfg) for r in tests], dtype=np.float64
        )
        print(
            f"| {name} | {len(tests)} | {pct(rows[:, 0])} | {100 * rows[:, 1].mean():.0f} % "
            f"| {np.nanmedian(rows[:, 2]):.1f} | {100 * np.nanmedian(rows[:, 3]):.0f} % "
            f"| {pct(rows[:, 4])} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
