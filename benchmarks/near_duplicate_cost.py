"""CPU cost of enrollment's near-duplicate check (enrollment.altered_copy_of, as check_takes
runs it over the usable takes), beside the cost of embedding the same takes, for N takes of
L seconds of real speech; and the check's decisions against the check as it was before it
was made cheaper (REFERENCE, kept here verbatim), which must be identical.

Takes: recordings of ../shared/data (vcc2018_eval and resemblyzer_ls, shuffled with --seed)
joined with 0.2 s of silence and cut to L seconds, no recording in two takes. A case
"NxL+K" appends K altered copies of takes 1..K (resampled through 8 kHz, OGG Vorbis,
44.1 kHz + gain -3 dB + 30 ms cut, white noise 40 dB below: each written to a file and read
back as `enroll --from` reads it), which the check must name as duplicates.

Printed per case: the usable takes (the quality checks passed), the check's CPU
(time.process_time, all threads), the reference's, the embedding's, the duplicates found
(take -> same_as) and whether the two checks decided the same (exit 1 if not). The check
and the reference alternate --repeat times (interleaved A/B; the machine's load moves both).
The CPU counts every thread: the mel projection's matrix product runs on OpenBLAS, whose
other threads keep spinning after each call. The `voxgate` command runs OpenBLAS on one
thread (voxgate/blas.py), but this script imports the modules itself: run it with
OPENBLAS_NUM_THREADS=1 to see what `voxgate enroll` spends.

    PYTHONPATH=daemon python benchmarks/near_duplicate_cost.py [--cases 20x120,5x5,8x20+4]
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from voxgate.audio.file import read_audio
from voxgate.config.speaker import SpeakerConfig
from voxgate.enrollment import NEAR_DUPLICATE, altered_copy_of, take_problem
from voxgate.quality import assess
from voxgate.replay import FAR_PROMISING, LOUD_DB, MAX_SHIFT, SPEC, SUB_HOP, similarity
from voxgate.stt.mfcc import MfccSpec, _mel_matrix, n_frames

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
POOL_SETS = ("vcc2018_eval", "resemblyzer_ls")
GAP_S = 0.2
Fp = tuple[np.ndarray, np.ndarray]


# --- REFERENCE: the check before it was made cheaper (main at f287847), verbatim -------------
# (replay.similarity, which that change left as it was, is called as it is.)


def ref_log_mel(pcm: np.ndarray, spec: MfccSpec) -> np.ndarray:
    arr = np.asarray(pcm)
    x = arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        x /= 32768.0
    count = n_frames(len(x), spec)
    if count == 0:
        return np.zeros((0, spec.n_mels), dtype=np.float32)
    idx = np.arange(spec.win)[None, :] + spec.step * np.arange(count)[:, None]
    if spec.tf_style:
        window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(spec.win) / spec.win)
    else:
        window = np.hanning(spec.win + 2)[1:-1]
    frames = x[idx] * window.astype(np.float32)
    mag = np.abs(np.fft.rfft(frames, n=spec.n_fft, axis=1)).astype(np.float32)
    spectrum = mag if spec.tf_style else mag**2
    return np.log(np.maximum(spectrum @ _mel_matrix(spec), 1e-12 if spec.tf_style else 1e-10))


def ref_fingerprint(pcm: np.ndarray) -> Fp:
    lm = ref_log_mel(np.asarray(pcm), SPEC).astype(np.float64)
    if len(lm) < 2:
        return np.zeros(0, dtype=np.uint32), np.zeros(0, dtype=bool)
    energy = np.log(np.exp(lm).sum(1) + 1e-10)
    loud = energy > energy.max() - np.log(10) * LOUD_DB / 10
    idx = np.flatnonzero(loud)
    lo, hi = max(0, idx[0] - 1), idx[-1] + 1
    lm, loud = lm[lo:hi], loud[lo + 1 : hi]
    band = lm[:, :-1] - lm[:, 1:]
    bits = (band[1:] - band[:-1]) > 0
    weights = (1 << np.arange(32, dtype=np.uint64)).astype(np.uint64)
    return (bits.astype(np.uint64) @ weights).astype(np.uint32), loud


def ref_far_offsets(a: Fp, b: Fp, k: int = 2) -> list[int]:
    la, lb = a[1].astype(np.float32), b[1].astype(np.float32)
    if not len(la) or not len(lb):
        return []
    corr = np.correlate(lb, la, mode="full")
    found: list[int] = []
    for j in np.argsort(corr, kind="stable")[::-1]:
        if corr[j] <= 0:
            break
        lag = int(j) - (len(la) - 1)
        if all(abs(lag - x) > MAX_SHIFT for x in (0, *found)):
            found.append(lag)
            if len(found) == k:
                break
    return found


def ref_best_similarity(views: list[Fp], other: Fp) -> float:
    best = max(similarity(v, other) for v in views)
    for o in ref_far_offsets(views[0], other, k=1):
        far = similarity(views[0], other, offset=o)
        if far >= FAR_PROMISING:
            far = max(far, *(similarity(v, other, offset=o) for v in views[1:]))
        best = max(best, far)
    return best


def ref_altered_copy_of(
    pcm: np.ndarray, prints: list[tuple[int, Fp]], level: float = NEAR_DUPLICATE
) -> tuple[int, Fp]:
    views = [ref_fingerprint(pcm[k:]) for k in (SUB_HOP if prints else SUB_HOP[:1])]
    near = next((j for j, fp in prints if ref_best_similarity(views, fp) >= level), 0)
    return near, views[0]


# --- the check as check_takes runs it ----------------------------------------------------------

Check = Callable[[np.ndarray, list[tuple[int, Fp]], float], tuple[int, Fp]]


def duplicates(
    takes: list[tuple[int, np.ndarray]], check: Check, level: float = NEAR_DUPLICATE
) -> dict[int, int]:
    """take number -> the earlier take it is an altered copy of, over usable takes in order
    (at enrollment's level, or another: the tests try several)."""
    prints: list[tuple[int, Fp]] = []
    found: dict[int, int] = {}
    for i, pcm in takes:
        near, fp = check(pcm, prints, level)
        if near:
            found[i] = near
        else:
            prints.append((i, fp))
    return found


# --- takes ------------------------------------------------------------------------------------


def pool(data: Path, seed: int) -> list[Path]:
    paths = []
    for name in POOL_SETS:
        with open(data / name / "manifest.csv", newline="") as f:
            paths += [data / name / r["path"] for r in csv.DictReader(f)]
    random.Random(seed).shuffle(paths)
    return paths


def make_takes(paths: list[Path], n: int, seconds: float) -> list[np.ndarray]:
    """n takes of `seconds` each, no recording in two takes (they take from `paths`)."""
    gap = np.zeros(int(GAP_S * 16000), np.int16)
    out = []
    for _ in range(n):
        parts: list[np.ndarray] = []
        have = 0
        while have < seconds * 16000:
            if not paths:
                raise SystemExit("not enough distinct recordings for these takes")
            pcm = read_audio(paths.pop())
            parts += [pcm, gap]
            have += len(pcm) + len(gap)
        out.append(np.concatenate(parts)[: int(seconds * 16000)])
    return out


def _via(x: np.ndarray, rate: int, name: str, tmp: Path, **kw: Any) -> np.ndarray:
    sf.write(str(tmp / name), np.clip(x, -1.0, 1.0), rate, **kw)
    return read_audio(tmp / name)


def altered(pcm: np.ndarray, kind: int, tmp: Path) -> np.ndarray:
    """The same recording changed on its way to the enrollment (four kinds, by kind % 4)."""
    x = pcm / 32768.0
    kind %= 4
    if kind == 0:
        return _via(resample_poly(x, 1, 2), 8000, "a.wav", tmp)
    if kind == 1:
        return _via(x, 16000, "b.ogg", tmp, format="OGG", subtype="VORBIS")
    if kind == 2:
        return _via(resample_poly(x[480:] * 0.7, 441, 160), 44100, "c.wav", tmp)
    rng = np.random.default_rng(kind)
    rms = float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))
    return (pcm + rng.normal(0, rms / 100, len(pcm))).clip(-32768, 32767).astype(np.int16)


def parse_case(text: str) -> tuple[int, float, int]:
    main, _, copies = text.partition("+")
    n, _, seconds = main.partition("x")
    return int(n), float(seconds), int(copies or 0)


def cpu(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    started = time.process_time()
    out = fn(*args)
    return time.process_time() - started, out


def load_text() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def embed_all(embedder: Any, takes: list[np.ndarray]) -> None:
    for pcm in takes:
        embedder.embed(pcm)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--cases", default="20x120,5x5,8x20+4", help="NxL[+K], comma-separated")
    ap.add_argument("--repeat", type=int, default=1, help="check/reference runs, alternated")
    ap.add_argument("--no-reference", action="store_true", help="skip the reference check")
    ap.add_argument("--no-embedding", action="store_true", help="skip timing the embedding")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if not all((args.data / name / "manifest.csv").exists() for name in POOL_SETS):
        print(f"no data at {args.data}: skipped", file=sys.stderr)
        return 0
    embedder = None
    if not args.no_embedding:
        from voxgate.embedding import load_embedder

        embedder = load_embedder()
    cfg = SpeakerConfig()
    blas = os.environ.get("OPENBLAS_NUM_THREADS", "not set")
    print(
        f"{load_text()}; {os.cpu_count()} CPUs; OPENBLAS_NUM_THREADS {blas}; seed {args.seed}; "
        "CPU = time.process_time()"
    )
    same_everywhere = True
    with tempfile.TemporaryDirectory() as t:
        paths = pool(args.data, args.seed)
        # Warm up (imports, FFT plans) so the first case is not charged for them.
        warm = [(i, pcm) for i, pcm in enumerate(make_takes(paths, 2, 3.0), 1)]
        duplicates(warm, altered_copy_of)
        duplicates(warm, ref_altered_copy_of)
        for case in args.cases.split(","):
            n, seconds, copies = parse_case(case)
            takes = make_takes(paths, n, seconds)
            takes += [altered(takes[k], k, Path(t)) for k in range(copies)]
            usable = [
                (i, pcm) for i, pcm in enumerate(takes, 1) if take_problem(assess(pcm), cfg) is None
            ]
            fast: list[float] = []
            ref: list[float] = []
            found: dict[int, int] = {}
            expected: dict[int, int] | None = None
            for _ in range(args.repeat):
                spent, found = cpu(duplicates, usable, altered_copy_of)
                fast.append(spent)
                if not args.no_reference:
                    spent, expected = cpu(duplicates, usable, ref_altered_copy_of)
                    ref.append(spent)
            print(
                f"\n{n} takes x {seconds:g} s + {copies} altered copies: {len(usable)} usable; "
                f"duplicates (take: same_as) {found}"
            )
            print(f"  check CPU      {' '.join(f'{s:6.2f}' for s in fast)} s")
            if expected is not None:
                same = expected == found
                same_everywhere &= same
                print(f"  reference CPU  {' '.join(f'{s:6.2f}' for s in ref)} s")
                print(f"  same decisions as the reference: {'yes' if same else f'NO: {expected}'}")
            if embedder is not None:
                kept = [pcm for i, pcm in usable if i not in found]
                spent, _ = cpu(embed_all, embedder, kept)
                print(f"  embedding CPU  {spent:6.2f} s ({len(kept)} takes)")
    print(f"\nafter: {load_text()}")
    return 0 if same_everywhere else 1


if __name__ == "__main__":
    sys.exit(main())
