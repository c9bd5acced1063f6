"""Soak the daemon loop: N minutes of mixed speech, silence and noise from ../shared/data.

    python benchmarks/soak.py                 # 60 minutes
    python benchmarks/soak.py --minutes 5 --sample-s 20

Real recordings are looped through the real loop (VAD, capture queue, states, policy,
lockout in SQLite, audit log with fsync, metrics endpoint) as fast as it processes them.
Stages: the real ones when this build has them (--stages real), else the simple stand-ins
from tests/support (--stages standin; not biometrics, but real computation on real audio).
RSS, threads and open fds are sampled and printed; the exit code is 1 when RSS grew more
than --max-growth-mb between the first sample after warm-up and the last.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "support"))

from voxgate.audio.base import AudioSource, frame_samples  # noqa: E402
from voxgate.audio.file import read_audio  # noqa: E402
from voxgate.config import VoxgateConfig  # noqa: E402
from voxgate.service.loop import Daemon  # noqa: E402
from voxgate.service.notify import Notifier  # noqa: E402

if TYPE_CHECKING:
    from voxgate.service.stages import Stages

SR = 16000


def rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


class MixSource(AudioSource):
    """An endless programme: pause, a spoken sentence (wake), pause, a 4-digit answer
    (one FSDD speaker, 0.2 s gaps), pause, sometimes background noise. Files are decoded
    when played, never cached (a cache would look like a leak)."""

    def __init__(self, data: Path, seed: int = 1) -> None:
        self.data = data
        self.rng = random.Random(seed)
        self.sentences = [data / "vcc2018_eval" / r["path"] for r in rows(data / "vcc2018_eval")]
        digits = rows(data / "fsdd")
        self.digits: dict[str, list[Path]] = {}
        for r in digits:
            self.digits.setdefault(r["speaker"], []).append(data / "fsdd" / r["path"])
        self.noise = [data / "noise" / r["path"] for r in rows(data / "noise")]
        self.seconds = 0.0
        self._closed = False

    def _silence(self, lo: float, hi: float) -> np.ndarray:
        return np.zeros(int(self.rng.uniform(lo, hi) * SR), dtype=np.int16)

    def _answer(self) -> np.ndarray:
        speaker = self.rng.choice(sorted(self.digits))
        parts: list[np.ndarray] = []
        for path in self.rng.sample(self.digits[speaker], 4):
            parts += [read_audio(path), np.zeros(int(0.2 * SR), dtype=np.int16)]
        return np.concatenate(parts)

    def _noise(self) -> np.ndarray:
        pcm = read_audio(self.rng.choice(self.noise))
        start = self.rng.randrange(max(1, len(pcm) - 3 * SR))
        return (pcm[start : start + 3 * SR] * 0.3).astype(np.int16)

    def _programme(self) -> Iterator[np.ndarray]:
        while True:
            yield self._silence(0.5, 2.0)
            yield read_audio(self.rng.choice(self.sentences))
            yield self._silence(0.8, 1.5)
            yield self._answer()
            yield self._silence(1.0, 2.5)
            if self.rng.random() < 0.4:
                yield self._noise()

    def frames(self, frame_ms: int = 30) -> Iterator[np.ndarray]:
        n = frame_samples(frame_ms)
        for block in self._programme():
            if self._closed:
                return
            block = block[: len(block) // n * n]
            self.seconds += len(block) / SR
            yield from block.reshape(-1, n)

    def close(self) -> None:
        self._closed = True


def proc_status() -> dict[str, int]:
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "Threads"):
                out[key] = int(value.split()[0])
    out["fds"] = len(os.listdir("/proc/self/fd"))
    return out


def build(
    args: argparse.Namespace, cfg: VoxgateConfig, source: MixSource
) -> Callable[[VoxgateConfig], Stages]:
    if args.stages == "real":
        from voxgate.service.stages import build_stages

        stages = build_stages(cfg)
        stages.source.close()
        stages.source = source
        return lambda c: stages
    from service_standins import MelEmbedder, RecordingLink, standin_stages

    # Enroll two FSDD speakers from their first 20 recordings, so some attempts are granted.
    emb = MelEmbedder()
    prints = {}
    for spk in sorted(source.digits)[:2]:
        takes = np.concatenate([read_audio(p) for p in source.digits[spk][:20]])
        prints[spk] = emb.embed(takes)
    stages = standin_stages(source, prints, RecordingLink(keep=1000), threshold=0.97)
    return lambda c: stages


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--sample-s", type=float, default=60.0, help="sampling interval")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--stages", choices=["auto", "real", "standin"], default="auto")
    ap.add_argument("--max-growth-mb", type=float, default=5.0)
    ap.add_argument("--log-level", default="error", help="daemon log level (default error)")
    args = ap.parse_args()
    if not (args.data / "fsdd" / "manifest.csv").exists():
        print(f"soak: no evaluation audio at {args.data} (pass --data)", file=sys.stderr)
        return 2
    if args.stages == "auto":
        try:
            import voxgate.embedding
            import voxgate.mqtt.client  # noqa: F401

            args.stages = "real"
        except ImportError:
            args.stages = "standin"
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    work = Path(tempfile.mkdtemp(prefix="voxgate-soak-"))
    source = MixSource(args.data)
    settings: dict = {
        "data_dir": str(work),
        "audio": {"source": "file", "path": str(source.sentences[0])},
        "metrics": {"port": 0},
        "lockout": {"device_max_failures": 20, "initial_s": 1, "max_s": 2},
    }
    if args.stages == "real":
        from bench_service import real_extras  # the keys the real stages need, in `work`

        settings.update(real_extras(work, with_api_fleet=False))
    settings["challenge"] = {**settings.get("challenge", {}), "timeout_s": 120}
    cfg = VoxgateConfig.model_validate(settings)
    daemon = Daemon(cfg, stage_factory=build(args, cfg, source), notifier=Notifier({}))
    samples: list[tuple[float, dict[str, int], float, int]] = []

    def sampler() -> None:
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        print(f"soak: {args.minutes:g} min, stages={args.stages}, state in {work}", flush=True)
        head = ("t_min", "audio_min", "decisions", "RSS_MB", "threads", "fds")
        print("{:>6} {:>9} {:>9} {:>7} {:>7} {:>4}".format(*head))
        while True:
            now = time.monotonic()
            st = proc_status()
            audited = daemon.audit.seq if daemon.audit else 0
            samples.append((now - t0, st, source.seconds, audited))
            print(
                f"{(now - t0) / 60:6.1f} {source.seconds / 60:9.1f} {len_decisions(work):9d} "
                f"{st['VmRSS'] / 1024:7.1f} {st['Threads']:7d} {st['fds']:4d}",
                flush=True,
            )
            if now >= end:
                daemon.request_stop("soak over")
                return
            time.sleep(min(args.sample_s, max(0.0, end - now)))

    threading.Thread(target=sampler, daemon=True).start()
    code = daemon.run()
    if len(samples) < 2:
        print("soak: too short to compare samples")
        return code
    base = samples[1] if len(samples) > 2 else samples[0]  # skip warm-up
    last = samples[-1]
    growth = (last[1]["VmRSS"] - base[1]["VmRSS"]) / 1024
    print(
        f"soak result: {last[2] / 60:.1f} min of audio in {last[0] / 60:.1f} min; "
        f"RSS {base[1]['VmRSS'] / 1024:.1f} -> {last[1]['VmRSS'] / 1024:.1f} MB "
        f"({growth:+.1f} MB from t={base[0] / 60:.1f} min); threads {base[1]['Threads']} -> "
        f"{last[1]['Threads']}; fds {base[1]['fds']} -> {last[1]['fds']}; "
        f"audit lines {last[3]}; daemon exit {code}"
    )
    return 1 if growth > args.max_growth_mb or code else 0


def len_decisions(work: Path) -> int:
    try:
        with open(work / "audit.jsonl", "rb") as f:
            return sum(1 for line in f if b'"event":"decision"' in line)
    except OSError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
