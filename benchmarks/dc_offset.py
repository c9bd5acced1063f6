"""A microphone with a DC offset: what a constant added to every sample does to the gate
and to the scores, through the audio boundary's DC removal (audio/convert.py, DcBlocker).

Cheap USB and I2S MEMS microphones often deliver their silence a few dozen LSB away from
zero. Each test recording of a protocol set gets a constant offset (--offsets, as a fraction
of full scale; 0.002 is -54 dBFS, 66 LSB), saturated at int16 full scale; enrollment stays
clean. Every row is `voxgate eval` on the protocol with those recordings
(evaluation.evaluate: enrollment checks, the shipped int8 model and cohort, Scorer.verify),
every trial scored whatever the gate says. The files are read as the door reads audio, so
the DC removal takes the offset out again; the rows show how exactly. With --remove, each
offset recording is also scored after subtracting its own whole mean first (what no causal
filter can do), for comparison. The retry and cosine columns read each modified recording
back through the audio boundary (audio.file.read_audio), as the scored trials do.

Printed per set and offset: the share of test recordings the shipped gate retries, genuine
FNMR and impostor FMR at the shipped threshold (speaker.target_fmr), the EER, and the
median cosine of each test recording's embedding to its unmodified one.

    PYTHONPATH=daemon python benchmarks/dc_offset.py [--data DIR] [--sets SET ...]
        [--offsets F ...] [--remove]
    PYTHONPATH=daemon python benchmarks/dc_offset.py --file-means   # the sets' own offsets

--every-file scores each set as it is and with every file's own whole mean removed first,
enrollment takes and tests alike: whether the causal DC removal leaves anything of a set's
own offsets that the whole-mean removal would not (a door's users share one microphone, so
an offset cannot tell them apart there, while in a protocol set one speaker's recording
setup could).

--file-means prints, per set, the mean (LSB) of every file in manifest.csv: how many files
sit 16 and 66 LSB or more from zero, the largest, and the speakers whose files' median
offset is largest.

Skips (exit 0, with a message) when the data is not there.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from voxgate.audio.base import SAMPLE_RATE
from voxgate.audio.file import read_audio
from voxgate.cohort import for_model, model_sha256
from voxgate.config import VoxgateConfig
from voxgate.embedding import load_embedder
from voxgate.evaluation import evaluate, load_recording, read_set
from voxgate.quality import assess

try:
    from benchmarks.clip_gate import gated_now
    from benchmarks.noise_gate import noisy_protocol, rate
except ImportError:  # run as a script: benchmarks/ itself is on the path
    from clip_gate import gated_now
    from noise_gate import noisy_protocol, rate

REPO = Path(__file__).resolve().parent.parent
SETS = ["fsdd", "vcc2018_eval", "speechcommands_v001_sample"]
OFFSETS = [0.0, 0.0005, 0.001, 0.002, 0.005]


def offset(pcm: np.ndarray, fraction: float) -> np.ndarray:
    """`pcm` plus a constant `fraction` of full scale, saturated at int16."""
    shifted = pcm.astype(np.float64) + fraction * 32768.0
    return np.clip(np.round(shifted), -32768, 32767).astype(np.int16)


def mean_removed(pcm: np.ndarray) -> np.ndarray:
    centred = pcm.astype(np.float64) - float(np.mean(pcm, dtype=np.float64))
    return np.clip(np.round(centred), -32768, 32767).astype(np.int16)


def raw_mean(path: Path) -> float:
    """A file's mean in LSB as stored: read_audio would remove it (the audio boundary's DC
    removal)."""
    data = sf.read(path, dtype="int16", always_2d=True)[0]
    return float(np.mean(data, dtype=np.float64))


def file_means(data: Path, sets: list[str]) -> None:
    for name in sets:
        es = read_set(data / name, need_trials=False)
        by: dict[str, list[float]] = {}
        for path, speaker in es.speaker_of.items():
            by.setdefault(speaker, []).append(raw_mean(es.root / path))
        means = np.abs([m for v in by.values() for m in v])
        top = sorted(by, key=lambda sp: -float(np.median(np.abs(by[sp]))))[:3]
        print(
            f"{name}: {len(means)} files, median {np.median(means):.1f} LSB, >= 16 LSB "
            f"{int((means >= 16).sum())}, >= 66 LSB {int((means >= 66).sum())}, largest "
            f"{means.max():.0f}; by speaker (median, files): "
            + ", ".join(f"{sp} {np.median(np.abs(by[sp])):.0f} ({len(by[sp])})" for sp in top)
        )


def every_file(name: str, args: argparse.Namespace, embedder: object, work: Path) -> None:
    cfg = VoxgateConfig()
    cohort = for_model(embedder.model_id, None, model_sha256(embedder))  # type: ignore[attr-defined]
    es = read_set(args.data / name)
    dst = work / f"{name}-every-file"
    for rel in es.speaker_of:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        pcm = mean_removed(read_audio(es.root / rel))
        sf.write(dst / rel, pcm, SAMPLE_RATE, subtype="PCM_16")
    for table in ("manifest.csv", "enroll.csv", "trials.csv"):
        (dst / table).write_bytes((es.root / table).read_bytes())
    for label, root in (("as it is", es.root), ("every file's mean removed", dst)):
        b = evaluate(root, embedder, cfg, cohort, work / f"out-{name}-{label[:5]}", progress=False)
        s = b["systems"]["backend"]
        print(
            f"{name:28s} {label:26s} EER {s['eer_percent']:5.2f}  minDCF {s['min_dcf']:.3f}  "
            f"FMR {s['fmr_percent']:5.2f} %  FNMR {s['fnmr_percent']:5.2f} %  "
            f"retry {s['retry_rate_percent']:4.1f} %",
            flush=True,
        )


def run(name: str, args: argparse.Namespace, embedder: object, work: Path) -> None:
    cfg = VoxgateConfig()
    cohort = for_model(embedder.model_id, None, model_sha256(embedder))  # type: ignore[attr-defined]
    threshold = cohort.threshold_for(cfg.speaker.target_fmr)
    es = read_set(args.data / name)
    tests = list(dict.fromkeys(r for _, r, _ in es.trials))
    target = np.array([t for _, _, t in es.trials])
    clean = [load_recording(es.root, r) for r in tests]
    base = [embedder.embed(pcm) for pcm in clean]  # type: ignore[attr-defined]
    variants = [(f, False) for f in args.offsets]
    if args.remove:
        variants += [(f, True) for f in args.offsets if f]
    for fraction, remove in variants:
        pcms = [offset(pcm, fraction) for pcm in clean]
        if remove:
            pcms = [mean_removed(pcm) for pcm in pcms]
        label = f"dc{fraction:g}{'-removed' if remove else ''}"
        root = es.root
        if fraction or remove:
            root = work / f"{name}-{label}"
            (root / "dc").mkdir(parents=True)
            files = {r: f"dc/{i}.flac" for i, r in enumerate(tests)}
            for r, pcm in zip(tests, pcms, strict=True):
                sf.write(root / files[r], pcm, SAMPLE_RATE, subtype="PCM_16")
            noisy_protocol(es, root, files)
            # The gate and the cosines get what the scored trials get: the file as the audio
            # boundary reads it (with its DC removal, where there is one).
            pcms = [read_audio(root / files[r]) for r in tests]
        gated = np.mean([gated_now(assess(pcm, cfg.vad), cfg) for pcm in pcms])
        cosines = [float(b @ embedder.embed(p)) for b, p in zip(base, pcms, strict=True)]  # type: ignore[attr-defined]
        out = work / f"out-{name}-{label}"
        report = evaluate(root, embedder, cfg, cohort, out, progress=False)
        with open(out / "scores.csv", newline="", encoding="utf-8") as f:
            scores = np.array([float(row["backend"]) for row in csv.DictReader(f)])
        fnmr, fmr = rate(scores < threshold, target == 1), rate(scores >= threshold, target == 0)
        dbfs = f"{20 * np.log10(fraction):.0f} dBFS" if fraction else "none"
        print(
            f"{name:28s} {fraction:7g} {dbfs:>9s} {'yes' if remove else 'no':>7s} "
            f"{100 * gated:6.1f} % {fnmr:>18s} {fmr:>18s} "
            f"{report['systems']['backend']['eer_percent']:6.2f} "
            f"{np.median(cosines):7.4f} {min(cosines):7.4f}",
            flush=True,
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--sets", nargs="+", default=SETS)
    ap.add_argument("--offsets", nargs="+", type=float, default=OFFSETS)
    ap.add_argument("--remove", action="store_true", help="also score with the mean removed")
    ap.add_argument("--file-means", action="store_true", help="the sets' own offsets only")
    ap.add_argument(
        "--every-file", action="store_true", help="each set with every file's mean removed"
    )
    args = ap.parse_args()
    missing = [s for s in args.sets if not (args.data / s / "trials.csv").is_file()]
    if missing:
        print(f"skipped: no protocol for {', '.join(missing)} in {args.data}")
        return 0
    if args.file_means:
        file_means(args.data, args.sets)
        return 0
    embedder = load_embedder()
    if args.every_file:
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.sets:
                every_file(name, args, embedder, Path(tmp))
        return 0
    print(
        f"{'set':28s} {'offset':>7s} {'level':>9s} {'removed':>7s} {'retry':>8s} "
        f"{'FNMR at threshold':>18s} {'FMR at threshold':>18s} {'EER %':>6s} "
        f"{'cos med':>7s} {'cos min':>7s}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets:
            run(name, args, embedder, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
