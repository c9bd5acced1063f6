"""Near-duplicate enrollment takes: can a check tell a recording altered slightly from a
second genuine take of the same person?

enrollment.check_takes rejects a take whose samples are byte-identical to an earlier one
(`duplicate`). The same recording resampled, re-encoded, trimmed or with a little noise has
other samples. This script compares, on the real speech in ../shared/data:

  (a) genuine pairs: two different recordings of one speaker. Per set: every pair of one
      model's enrollment takes (enroll.csv), each enrollment take against each target trial
      recording of its model (trials.csv), and for fsdd, where each speaker says each digit
      ~20 times, "same digits": each enrollment take against --rebuilds other recordings
      of the same four digits by the same speaker from other files (same person, same
      microphone, same words: the hardest legitimate case);
  (b) altered copies: each enrollment take against itself altered (ALTERATIONS), written to
      a file and read back with the product's reader (voxgate.audio.file.read_audio, which
      resamples any rate to 16 kHz as `enroll --from` does).

Checks, each a similarity (higher = more alike):
  embedding: cosine of the shipped speaker model's embeddings (`embedder.embed`, the call
             check_takes makes; unit vectors, as check_takes stores them);
  replay:    the replay detector's fingerprint similarity (replay.best_similarity with its
             2.5 ms sub-hop views; 1 - bit error rate of log-mel difference signs, +-300 ms
             and the loud-rhythm offset; unrelated audio ~0.5);
  spectrum:  Pearson correlation of band-mean-removed log-mel (200-3800 Hz, so an 8 kHz
             copy keeps its bands) over frames loud in both, at the lag where the two loud
             envelopes line up best (+- 1 frame around it), at least 80 % of the shorter
             take's loud frames overlapping; gain and a fixed channel colouring drop out.

Also printed, outside the separation figures: two edits beyond "altered slightly" (white
noise 20 dB below the speech, played 1 % faster), to show where the checks stop.

Printed per set: genuine max / p99 / p95, per alteration min / p1 / p5 and how many copies
the quality checks (take_problem) would still accept; then, per check, the level midway
between the highest genuine pair and the lowest altered copy on the TUNING sets (fsdd,
vcc2018_eval) and how it does on the CHECK sets (speechcommands_v001_sample, resemblyzer_ls).

    PYTHONPATH=daemon python benchmarks/near_duplicate_takes.py [--rebuilds 5]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import random
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from voxgate.audio.file import read_audio
from voxgate.config.speaker import SpeakerConfig
from voxgate.enrollment import take_problem
from voxgate.evaluation import load_recording
from voxgate.quality import assess
from voxgate.replay import SUB_HOP, best_similarity, fingerprint
from voxgate.stt.mfcc import MfccSpec, log_mel
from voxgate.voiceprints import l2_normalize

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SETS = ("fsdd", "vcc2018_eval", "speechcommands_v001_sample", "resemblyzer_ls")
TUNING = ("fsdd", "vcc2018_eval")
CHECKS = ("embedding", "replay", "spectrum")
SPEC = MfccSpec(win_ms=32.0, step_ms=10.0, n_mels=30, f_min=200.0, f_max=3800.0)
LOUD_DB = 30.0
Pcm = np.ndarray


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [{k: v.strip() for k, v in r.items()} for r in csv.DictReader(f)]


# --- alterations: each returns the 16 kHz int16 take as enrollment would read it -------------


def via_file(x: np.ndarray, rate: int, fmt: str, subtype: str | None, tmp: Path) -> Pcm:
    path = tmp / f"take.{fmt.lower()}"
    sf.write(str(path), np.clip(x, -1.0, 1.0), rate, format=fmt, subtype=subtype)
    return read_audio(path)


def f32(pcm: Pcm) -> np.ndarray:
    return pcm.astype(np.float64) / 32768.0


def resampled(rate: int) -> Callable[[Pcm, Path, np.random.Generator], Pcm]:
    def alter(pcm: Pcm, tmp: Path, rng: np.random.Generator) -> Pcm:
        from math import gcd

        g = gcd(rate, 16000)
        return via_file(resample_poly(f32(pcm), rate // g, 16000 // g), rate, "WAV", None, tmp)

    return alter


def gain(db: float) -> Callable[[Pcm, Path, np.random.Generator], Pcm]:
    def alter(pcm: Pcm, tmp: Path, rng: np.random.Generator) -> Pcm:
        return np.clip(np.round(pcm * 10 ** (db / 20)), -32768, 32767).astype(np.int16)

    return alter


def coded(fmt: str, subtype: str) -> Callable[[Pcm, Path, np.random.Generator], Pcm]:
    def alter(pcm: Pcm, tmp: Path, rng: np.random.Generator) -> Pcm:
        return via_file(f32(pcm), 16000, fmt, subtype, tmp)

    return alter


def shifted(ms: float) -> Callable[[Pcm, Path, np.random.Generator], Pcm]:
    """ms > 0: that much silence put before the take; ms < 0: that much cut off its start."""

    def alter(pcm: Pcm, tmp: Path, rng: np.random.Generator) -> Pcm:
        n = int(abs(ms) * 16)
        return np.concatenate([np.zeros(n, np.int16), pcm]) if ms > 0 else pcm[n:]

    return alter


def cut_end(ms: float) -> Callable[[Pcm, Path, np.random.Generator], Pcm]:
    def alter(pcm: Pcm, tmp: Path, rng: np.random.Generator) -> Pcm:
        return pcm[: len(pcm) - int(ms * 16)]

    return alter


def speech_rms(pcm: Pcm) -> float:
    x = pcm.astype(np.float64)
    frames = x[: len(x) // 160 * 160].reshape(-1, 160)
    power = (frames**2).mean(axis=1)
    loud = power > power.max() * 10 ** (-LOUD_DB / 10)
    return float(np.sqrt(power[loud].mean()))


def noisy(snr_db: float, noise: np.ndarray | None = None) -> Callable[..., Pcm]:
    """Noise at snr_db below the take's speech level (white, or a real recording)."""

    def alter(pcm: Pcm, tmp: Path, rng: np.random.Generator) -> Pcm:
        if noise is None:
            n = rng.standard_normal(len(pcm))
        else:
            start = int(rng.integers(0, len(noise) - len(pcm)))
            n = noise[start : start + len(pcm)].astype(np.float64)
            n /= np.sqrt((n**2).mean()) + 1e-9
        n *= speech_rms(pcm) * 10 ** (-snr_db / 20)
        return np.clip(np.round(pcm + n), -32768, 32767).astype(np.int16)

    return alter


def dithered(pcm: Pcm, tmp: Path, rng: np.random.Generator) -> Pcm:
    """Gain 0.9 and requantised with TPDF dither (+-1 LSB), as an editor's export does."""
    x = pcm * 0.9 + rng.uniform(-0.5, 0.5, len(pcm)) + rng.uniform(-0.5, 0.5, len(pcm))
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def re_exported(pcm: Pcm, tmp: Path, rng: np.random.Generator) -> Pcm:
    """Several at once: 44.1 kHz, gain -3 dB, 13 ms cut, MP3."""
    x = resample_poly(f32(pcm[13 * 16 :]) * 10 ** (-3 / 20), 441, 160)
    return via_file(x, 44100, "MP3", "MPEG_LAYER_III", tmp)


def alterations(noise_dir: Path) -> dict[str, Callable[[Pcm, Path, np.random.Generator], Pcm]]:
    tap = read_audio(noise_dir / "running_tap.flac") if noise_dir.exists() else None
    out: dict[str, Callable[[Pcm, Path, np.random.Generator], Pcm]] = {
        "resample 8k": resampled(8000),
        "resample 44.1k": resampled(44100),
        "resample 22.05k": resampled(22050),
        "gain -6 dB": gain(-6),
        "gain +6 dB": gain(6),
        "ogg vorbis": coded("OGG", "VORBIS"),
        "ogg opus": coded("OGG", "OPUS"),
        "mp3": coded("MP3", "MPEG_LAYER_III"),
        "trim 5 ms": shifted(-5),
        "trim 50 ms": shifted(-50),
        "pad 10 ms": shifted(10),
        "pad 200 ms": shifted(200),
        "cut end 50 ms": cut_end(50),
        "white noise 40 dB": noisy(40),
        "white noise 30 dB": noisy(30),
        "dither, gain 0.9": dithered,
        "44.1k+gain+trim+mp3": re_exported,
    }
    if tap is not None:
        out["tap noise 30 dB"] = noisy(30, tap)
    return out


def faster(pcm: Pcm, tmp: Path, rng: np.random.Generator) -> Pcm:
    """Played 1 % faster (and higher): resampled by 100/101, kept at 16 kHz."""
    return np.clip(np.round(resample_poly(pcm.astype(np.float64), 100, 101)), -32768, 32767).astype(
        np.int16
    )


# Edits beyond "the same recording, altered slightly": printed, not in the separation figures.
BEYOND: dict[str, Callable[[Pcm, Path, np.random.Generator], Pcm]] = {
    "white noise 20 dB": noisy(20),
    "1 % faster": faster,
}


# --- the checks -------------------------------------------------------------------------------


CPU = {"fingerprint": 0.0, "takes": 0.0, "compare": 0.0, "pairs": 0.0}  # replay check cost


class Take:
    """A take's features for every check, computed once."""

    def __init__(self, pcm: Pcm, embedder: Any, cfg: SpeakerConfig) -> None:
        self.ok = take_problem(assess(pcm), cfg) is None
        try:
            self.emb: np.ndarray | None = l2_normalize(embedder.embed(pcm))
        except Exception:
            self.emb = None
        started = time.process_time()
        self.views = [fingerprint(pcm[k:]) for k in SUB_HOP]
        CPU["fingerprint"] += time.process_time() - started
        CPU["takes"] += 1
        lm = log_mel(pcm, SPEC).astype(np.float64)
        energy = np.log(np.exp(lm).sum(1) + 1e-10)
        self.loud = energy > energy.max() - np.log(10) * LOUD_DB / 10
        self.lm = lm - lm[self.loud].mean(axis=0) if self.loud.any() else lm


def spectrum_similarity(a: Take, b: Take) -> float:
    la, lb = a.loud.astype(np.float64), b.loud.astype(np.float64)
    if min(la.sum(), lb.sum()) < 20:
        return 0.0
    need = 0.8 * min(la.sum(), lb.sum())
    corr = np.correlate(lb - lb.mean(), la - la.mean(), mode="full")
    lag0 = int(np.argmax(corr)) - (len(la) - 1)  # frame i of a against i + lag of b
    best = 0.0
    for lag in (lag0 - 1, lag0, lag0 + 1):
        ia = np.arange(len(la))
        ib = ia + lag
        keep = (ib >= 0) & (ib < len(lb))
        ia, ib = ia[keep], ib[keep]
        both = a.loud[ia] & b.loud[ib]
        if both.sum() < need:
            continue
        x, y = a.lm[ia[both]].ravel(), b.lm[ib[both]].ravel()
        best = max(best, float(np.corrcoef(x, y)[0, 1]))
    return best


def similarities(a: Take, b: Take) -> dict[str, float | None]:
    emb = float(a.emb @ b.emb) if a.emb is not None and b.emb is not None else None
    started = time.process_time()
    replay = best_similarity(b.views, a.views[0])
    CPU["compare"] += time.process_time() - started
    CPU["pairs"] += 1
    return {
        "embedding": emb,
        "replay": replay,
        "spectrum": spectrum_similarity(a, b),
    }


# --- the sets ---------------------------------------------------------------------------------


def genuine_pairs(
    name: str, root: Path, rebuilds: int, rng: random.Random
) -> tuple[list[str], dict[str, list[tuple[str, str]]]]:
    """The enrollment takes, and genuine pairs of recordings by kind."""
    enroll = rows(root / "enroll.csv")
    by_model: dict[str, list[str]] = defaultdict(list)
    for r in enroll:
        by_model[r["model"]].append(r["path"])
    pairs: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for paths in by_model.values():
        pairs["enroll takes"] += list(itertools.combinations(paths, 2))
    for r in rows(root / "trials.csv"):
        if r["target"] == "1":
            for p in by_model[r["model"]]:
                if set(p.split(";")) & set(r["path"].split(";")):
                    continue  # shares a file: not a second recording
                pairs["take vs trial"].append((p, r["path"]))
    if name == "fsdd" and rebuilds:
        files: dict[tuple[str, str], list[str]] = defaultdict(list)
        for r in rows(root / "manifest.csv"):
            files[(r["speaker"], r["text"])].append(r["path"])
        for model, paths in by_model.items():
            for take in paths:
                used = set(take.split(";"))
                digits = [Path(p).name.split("_")[1] for p in take.split(";")]
                for _ in range(rebuilds):
                    parts = []
                    for d in digits:
                        choice = [p for p in files[(model, d)] if p not in used]
                        pick = rng.choice(choice)
                        used.add(pick)
                        parts.append(pick)
                    pairs["same digits"].append((take, ";".join(parts)))
    return [r["path"] for r in enroll], pairs


def stats(v: list[float], high: bool) -> str:
    """The tail that matters: the top of genuine pairs (high), the bottom of altered copies."""
    if not v:
        return "n=0"
    a = np.array(v)
    edge, end, p1, p5 = ("max", a.max(), 99, 95) if high else ("min", a.min(), 1, 5)
    return (
        f"n={len(a):4d} {edge}={end:.3f} p{p1}={np.percentile(a, p1):.3f} "
        f"p{p5}={np.percentile(a, p5):.3f} median={np.median(a):.3f}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--rebuilds", type=int, default=5, help="fsdd same-digit rebuilds per take")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if not args.data.exists():
        print(f"no data at {args.data}", file=sys.stderr)
        return 2
    from voxgate.embedding import load_embedder

    embedder = load_embedder()
    cfg = SpeakerConfig()
    alters = alterations(args.data / "noise")
    print(f"model {embedder.model_id}; {len(alters)} alterations; seed {args.seed}")
    # per set: genuine values per check (all kinds), altered values per check (all kinds)
    genuine: dict[str, dict[str, list[float]]] = {}
    altered: dict[str, dict[str, list[float]]] = {}
    lowest: dict[str, dict[str, tuple[float, str]]] = defaultdict(dict)  # check -> (min, how)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        for name in SETS:
            root = args.data / name
            rng = random.Random(args.seed)
            nrng = np.random.default_rng(args.seed)
            takes, pairs = genuine_pairs(name, root, args.rebuilds, rng)
            cache: dict[str, Take] = {}

            def take(rec: str, root: Path = root, cache: dict[str, Take] = cache) -> Take:
                if rec not in cache:
                    cache[rec] = Take(load_recording(root, rec), embedder, cfg)
                return cache[rec]

            print(f"\n== {name}: {len(takes)} enrollment takes")
            genuine[name] = defaultdict(list)
            for kind, plist in pairs.items():
                vals: dict[str, list[float]] = defaultdict(list)
                for a, b in plist:
                    ta, tb = take(a), take(b)
                    if not (ta.ok and tb.ok):
                        continue  # a take the quality checks reject never reaches this
                    for check, v in similarities(ta, tb).items():
                        if v is not None:
                            vals[check].append(v)
                            genuine[name][check].append(v)
                print(f"  genuine, {kind} ({len(plist)} pairs, both takes accepted):")
                for check in CHECKS:
                    print(f"    {check:9s} {stats(vals[check], high=True)}")
            altered[name] = defaultdict(list)
            for label, alter in {**alters, **BEYOND}.items():
                vals = defaultdict(list)
                accepted = 0
                for rec in takes:
                    pcm = load_recording(root, rec)
                    orig = take(rec)
                    copy = Take(alter(pcm, tmp, nrng), embedder, cfg)
                    if not (orig.ok and copy.ok):
                        continue  # a rejected copy is not counted anyway
                    accepted += 1
                    for check, v in similarities(orig, copy).items():
                        if v is not None:
                            vals[check].append(v)
                            if label not in BEYOND:
                                altered[name][check].append(v)
                                if v < lowest[name].get(check, (2.0, ""))[0]:
                                    lowest[name][check] = (v, label)
                beyond = " (beyond the claim: not in the separation)" if label in BEYOND else ""
                print(f"  altered, {label}: {accepted} of {len(takes)} copies accepted{beyond}")
                for check in CHECKS:
                    print(f"    {check:9s} {stats(vals[check], high=False)}")
    print("\n== separation: highest genuine pair vs lowest altered copy (accepted takes)")
    for check in CHECKS:
        print(f"  {check}:")
        for name in SETS:
            g = genuine[name][check]
            hi, (lo, how) = max(g), lowest[name][check]
            print(
                f"    {name:27s} genuine max {hi:.3f} p99 {np.percentile(g, 99):.3f} "
                f"(n={len(g)})  altered min {lo:.3f} ({how})  gap {lo - hi:+.3f}"
            )
        hi = max(max(genuine[n][check]) for n in TUNING)
        lo = min(min(altered[n][check]) for n in TUNING)
        level = (hi + lo) / 2
        print(f"    level from {'+'.join(TUNING)}: {level:.3f} (gap {lo - hi:+.3f} there)")
        for name in SETS:
            if name in TUNING:
                continue
            fa = sum(v >= level for v in genuine[name][check])
            miss = sum(v < level for v in altered[name][check])
            print(
                f"    check on {name:27s} genuine pairs at/above: {fa} of "
                f"{len(genuine[name][check])}; altered copies below: {miss} of "
                f"{len(altered[name][check])}"
            )
    print(
        f"\nreplay check CPU: {CPU['fingerprint'] / CPU['takes'] * 1000:.1f} ms per take "
        f"(4 sub-hop fingerprints, {CPU['takes']:.0f} takes), "
        f"{CPU['compare'] / CPU['pairs'] * 1000:.1f} ms per pair ({CPU['pairs']:.0f} pairs)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
