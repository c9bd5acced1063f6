"""What an input at another rate than 16 kHz costs the door (docs/service.md, Benchmarks):
the streamed resampler's CPU per second of audio, in this process, and the peak RSS of
`voxgate run` on the same 30 s of audio written at 16 kHz and at the other rates. Also the
CPU of the DC removal every source does at 16 kHz, whatever the input rate.

    PYTHONPATH=daemon python benchmarks/resample_cost.py [--rates 44100 48000] [--seconds 30]

The audio is noise with tones (no speech is needed: the resampler does the same work), read
as the file source reads it, 30 ms at a time; the daemon runs with challenge, MQTT and
metrics off, so its RSS is the speaker stage, the store and the audio path.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from voxgate.audio.convert import DcBlocker, StreamResampler, float_to_int16

REPO = Path(__file__).resolve().parent.parent


def audio(rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(rate)
    tones = 0.2 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 3100 * t)
    return (tones + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def stream_cpu_ms_per_s(rate: int, seconds: float) -> float:
    x = audio(rate, seconds)
    block = rate * 30 // 1000
    r = StreamResampler(rate)
    start = time.process_time()
    for i in range(0, len(x), block):
        r.process(x[i : i + block])
    return (time.process_time() - start) / seconds * 1000


def dc_removal_cpu_ms_per_s(seconds: float) -> float:
    x = float_to_int16(audio(16000, seconds)) + np.int16(40)  # an offset to remove
    block = 16000 * 30 // 1000
    blocker = DcBlocker()
    start = time.process_time()
    for i in range(0, len(x), block):
        blocker.process(x[i : i + block])
    return (time.process_time() - start) / seconds * 1000


def daemon_peak_rss_mb(rate: int, seconds: float, work: Path) -> float:
    """Peak RSS of one `voxgate run` child on the file (ru_maxrss of the waited child)."""
    wav = work / f"{rate}.wav"
    sf.write(wav, audio(rate, seconds), rate, subtype="PCM_16")
    key = work / "voiceprint.key"
    if not key.exists():
        key.write_bytes(os.urandom(32))
        key.chmod(0o600)
    cfg = work / f"{rate}.yaml"
    cfg.write_text(
        f"data_dir: {work / f'data-{rate}'}\n"
        f"audio: {{source: file, path: {wav}}}\n"
        "challenge: {mode: 'off'}\nmqtt: {enabled: false}\nmetrics: {enabled: false}\n"
        f"speaker: {{key_file: {key}}}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "daemon")}
    child = subprocess.Popen(
        [sys.executable, "-m", "voxgate", "run", "-c", str(cfg)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"resample_cost.py: voxgate run on {wav} failed ({status})")
    return usage.ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", nargs="+", type=int, default=[44100, 48000])
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}; {args.seconds:g} s of audio per row")
    with tempfile.TemporaryDirectory(prefix="voxgate-resample-") as tmp:
        work = Path(tmp)
        base = daemon_peak_rss_mb(16000, args.seconds, work)
        print(f"16000 Hz: voxgate run peak RSS {base:.1f} MB (no resampling)")
        dc = dc_removal_cpu_ms_per_s(args.seconds)
        print(f"16000 Hz: DC removal {dc:.2f} ms CPU per s of audio (every source, any rate)")
        for rate in args.rates:
            cpu = stream_cpu_ms_per_s(rate, args.seconds)
            rss = daemon_peak_rss_mb(rate, args.seconds, work)
            print(f"{rate} Hz: resampler {cpu:.2f} ms CPU per s of audio; voxgate run peak "
                  f"RSS {rss:.1f} MB ({rss - base:+.1f} MB)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
