"""Short speech (under one 1.6 s window): how many circular shifts of the repeated speech to
embed (the card's `windowing.short_shifts`), chosen on data disjoint from every protocol trial.

Data: the LibriSpeech cohort speakers of ../shared/data/resemblyzer_ls (one utterance each,
none in any trial; the speakers `--build-cohort` uses). Each utterance is cut, seeded, into
3 pieces of 1.5-3 s (`long`: a door enrollment take), then the rest into pieces of 0.5-1.2 s
(`short`: one spoken word, as in speechcommands). The first stretch (the span of the long
pieces) is also cut into short pieces. Two enrollments, scored separately:

- A, short enrollment: model = mean of the short pieces of the first stretch (as speechcommands
  enrolls from single words);
- B, long enrollment: model = mean of the 3 long pieces (a door's enrollment takes).

Attempts: each short piece after the first stretch, against every model of its speaker fold.
Score: the shipped back end, centred cosine; the centre is the normalised mean of the 1.5-3 s
cohort pieces (cut exactly as `--build-cohort` cuts them, embedded with the same candidate) of
the *other* fold of speakers, so no trial speaker shapes its own normalisation (two folds, as
the shipped calibration). EER pools both folds.

Candidates, stated before measuring:
- K=1 (shipped), K=2, K=4: `short_shifts` K (embedding.embedder, `_embed_windows`);
- own: short speech run through the network on its own frames only (no fill: the LSTM's last
  state right after the speech ends; cheaper than K=1). Benchmark-only unless it wins.

Rule (written before any run): a candidate beats K=1 when its EER is lower than K=1's in both
A and B, and its relative reduction averaged over A and B is at least 5 %. Among those, the one
with the lowest mean EER over A and B; one within 1 % (relative) of it that costs less (fewer
network runs per short recording) is preferred. If none beats K=1, K=1 stays.

    PYTHONPATH=daemon python benchmarks/short_speech.py --data ../shared/data   (a few minutes)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from voxgate import cohort as cohortmod
from voxgate.embedding import default_card_path, load_embedder
from voxgate.embedding.embedder import SpeakerEmbedder, _normalise
from voxgate.evaluation import _progress_printer, eer, load_recording, read_set
from voxgate.features import to_float
from voxgate.voiceprints import l2_normalize

SHORT_S = (0.5, 1.2)
LONG_PIECES = 3
SHIFTS = (1, 2, 4)
MIN_GAIN = 0.05  # the rule: mean relative EER reduction a candidate needs over K=1
TIE = 0.01  # within this (relative) of the best, the cheaper candidate is preferred

Embed = Callable[[np.ndarray], np.ndarray]


def with_shifts(base: SpeakerEmbedder, k: int) -> SpeakerEmbedder:
    """The same model and runtime, its card asking for k shifts of short speech."""
    win = base.card.windowing.model_copy(update={"short_shifts": k})
    return SpeakerEmbedder(base.card.model_copy(update={"windowing": win}), base.runtime)


def own_frames(e: SpeakerEmbedder) -> Embed:
    """Candidate `own`: speech shorter than one window goes in on its own frames, unfilled."""

    def embed(speech: np.ndarray) -> np.ndarray:
        if speech.size >= e.card.windowing.frames * e.frontend.hop:
            return e._embed_plain(speech)
        starts = e.window_starts(speech.size)  # raises TooShort like embed()
        audio = to_float(speech)
        own = max(1, e.frontend.default_frames(speech.size))
        frames = e.frontend.frames(audio, n_frames=own)[:own]
        gain = e._gains(audio, starts, from_int16=speech.dtype == np.int16)[0]
        return _normalise(e.runtime.run((frames * gain)[None].astype(np.float32))[0])

    return embed


def cut(pcm: np.ndarray, seed: int) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """(long pieces, short pieces of the same stretch, short attempt pieces after it)."""
    rng = np.random.default_rng(10_000 + seed)  # not the cohort's seeds: other cuts
    lo, hi = cohortmod.PIECE_S
    long, start = [], 0
    for _ in range(LONG_PIECES):
        n = int(rng.uniform(lo, hi) * 16000)
        if start + n > pcm.size:
            return [], [], []
        long.append(pcm[start : start + n])
        start += n
    enroll = cohortmod.pieces(pcm[:start], seed=20_000 + seed, lengths_s=SHORT_S)
    attempts = cohortmod.pieces(pcm[start:], seed=30_000 + seed, lengths_s=SHORT_S)
    return long, enroll, attempts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--model", type=Path, default=default_card_path(), help="card (default: int8)")
    ap.add_argument("--timing-runs", type=int, default=50, help="runs per 1 s timing (median)")
    ap.add_argument("--rounds", type=int, default=200, help="bootstrap rounds (reported only)")
    args = ap.parse_args()
    root = args.data / "resemblyzer_ls"
    if not (root / "manifest.csv").exists():
        print(f"short_speech.py: no {root}/manifest.csv", file=sys.stderr)
        return 2
    base = load_embedder(args.model)
    if base.card.windowing.type != "sliding" or base.card.windowing.short != "repeat":
        print("short_speech.py: the card must have sliding windows with short: repeat")
        return 2
    candidates: dict[str, Embed] = {f"K={k}": with_shifts(base, k)._embed_plain for k in SHIFTS}
    candidates["own"] = own_frames(base)

    es = read_set(root, need_trials=False)
    in_trials = {es.speaker(r) for recs in es.enroll.values() for r in recs}
    in_trials |= {es.speaker(r) for _, r, _ in es.trials}
    # Same order and seeds as build_cohort: piece n of recording i is seeded by i (1-based).
    recs = [(spk, p) for p, spk in es.speaker_of.items() if spk not in in_trials]

    # Trim once (it does not depend on the candidate); each candidate embeds the speech.
    cohort_speech: dict[str, list[np.ndarray]] = {}
    trial_speech: dict[str, tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]] = {}
    show = _progress_printer("cutting and trimming")
    for i, (spk, p) in enumerate(recs, 1):
        pcm = load_recording(root, p)
        cohort_speech[spk] = [base.speech_of(x) for x in cohortmod.pieces(pcm, seed=i)]
        long, enroll, attempts = cut(pcm, i)
        if long and enroll and attempts:
            long_s, enroll_s, attempts_s = ([base.speech_of(x) for x in part]
                                            for part in (long, enroll, attempts))  # fmt: skip
            trial_speech[spk] = (long_s, enroll_s, attempts_s)
        show(i, len(recs))
    names = sorted(trial_speech)
    folds = [names[0::2], names[1::2]]
    n_short = sum(len(v[2]) for v in trial_speech.values())
    window = base.card.windowing.frames * base.frontend.hop
    under = sum(x.size < window for v in trial_speech.values() for x in v[2])
    print(
        f"{len(names)} speakers with trials ({len(recs)} cohort recordings), {n_short} short "
        f"attempts ({under} under one window after the trim), "
        f"{sum(len(v[1]) for v in trial_speech.values())} short enrollment pieces",
        flush=True,
    )

    results: dict[str, dict[str, float]] = {}
    kept: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    trial_spk: tuple[np.ndarray, np.ndarray] = (np.zeros((0, 2), int), np.zeros((0, 2), int))
    for name, embed in candidates.items():
        t0 = time.process_time()
        show = _progress_printer(f"embedding {name}")
        emb: dict[str, tuple[np.ndarray, ...]] = {}
        centre_src: dict[str, np.ndarray] = {}
        for n, spk in enumerate(cohort_speech, 1):
            if cohort_speech[spk]:
                centre_src[spk] = np.stack([embed(x) for x in cohort_speech[spk]])
            if spk in trial_speech:
                emb[spk] = tuple(np.stack([embed(x) for x in part]) for part in trial_speech[spk])
            show(n, len(cohort_speech))
        tar: dict[str, list[np.ndarray]] = {"A": [], "B": []}
        non: dict[str, list[np.ndarray]] = {"A": [], "B": []}
        spk_tar: list[np.ndarray] = []  # (model speaker, test speaker) per trial, for the
        spk_non: list[np.ndarray] = []  # bootstrap; the same order for every candidate
        for f in (0, 1):
            other = [s for s in cohort_speech if s not in set(folds[f]) and s in centre_src]
            centre = cohortmod.center_of(np.concatenate([centre_src[s] for s in other]))
            tests = [(i, e) for i, s in enumerate(folds[f]) for e in emb[s][2]]
            owner = np.array([i for i, _ in tests])
            t_mat = np.stack([e for _, e in tests])
            same = owner[:, None] == np.arange(len(folds[f]))[None, :]
            ids = np.array([names.index(x) for x in folds[f]])
            pairs = np.stack(np.broadcast_arrays(ids[owner][:, None], ids[None, :]), axis=-1)
            spk_tar.append(pairs[same][:, ::-1])
            spk_non.append(pairs[~same][:, ::-1])
            for cond, part in (("A", 1), ("B", 0)):
                models = l2_normalize(np.stack([emb[s][part].mean(0) for s in folds[f]]))
                scores = l2_normalize(t_mat - centre) @ l2_normalize(models - centre).T
                tar[cond].append(scores[same])
                non[cond].append(scores[~same])
        results[name] = {
            c: 100 * eer(np.concatenate(tar[c]), np.concatenate(non[c])) for c in ("A", "B")
        }
        kept[name] = {c: (np.concatenate(tar[c]), np.concatenate(non[c])) for c in ("A", "B")}
        trial_spk = (np.concatenate(spk_tar), np.concatenate(spk_non))
        results[name]["cpu_s"] = time.process_time() - t0
        results[name]["trials"] = float(sum(len(t) for t in tar["A"]))
        results[name]["non"] = float(sum(len(t) for t in non["A"]))

    # One-off timing: a 1 s piece of real speech (trimmed), median over runs, this process.
    one_s = next(x for v in trial_speech.values() for x in v[2] if x.size >= 15000)[:16000]
    for name, embed in candidates.items():
        embed(one_s)  # warm-up
        times = []
        for _ in range(args.timing_runs):
            t = time.perf_counter()
            embed(one_s)
            times.append(time.perf_counter() - t)
        results[name]["ms_1s"] = 1000 * float(np.median(times))

    ref = results["K=1"]
    print(f"\n{base.model_id}; trials per enrollment: {int(ref['trials'])} target, "
          f"{int(ref['non'])} non-target (EER in %)")  # fmt: skip
    print("| candidate | A: short enrollment | B: long enrollment | mean | vs K=1 | "
          "ms per 1 s speech | CPU s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        rel = np.mean([(ref[c] - r[c]) / ref[c] for c in ("A", "B")]) if ref["A"] else 0.0
        print(
            f"| {name} | {r['A']:.2f} | {r['B']:.2f} | {(r['A'] + r['B']) / 2:.2f} | "
            f"{-100 * rel:+.1f} % | {r['ms_1s']:.1f} | {r['cpu_s']:.0f} |"
        )
    # Reported beside the rule, not used by it: how sure the differences are.
    print(f"\nEER difference to K=1 (points), 95 % interval of a paired speaker bootstrap "
          f"({args.rounds} rounds; a trial counts m_model * m_test times):")  # fmt: skip
    rng = np.random.default_rng(0)
    draws = [np.bincount(rng.integers(0, len(names), len(names)), minlength=len(names))
             for _ in range(args.rounds)]  # fmt: skip
    weights = [
        tuple((m[spk[:, 0]] * m[spk[:, 1]]).astype(float) for spk in trial_spk) for m in draws
    ]
    weights = [(wt, wn) for wt, wn in weights if wt.sum() > 0 and wn.sum() > 0]
    base_eer = {c: [eer(*kept["K=1"][c], wt, wn) for wt, wn in weights] for c in ("A", "B")}
    show = _progress_printer("bootstrap")
    for n, name in enumerate([x for x in results if x != "K=1"], 1):
        cells = []
        for c in ("A", "B"):
            diffs = [
                100 * (eer(*kept[name][c], wt, wn) - b)
                for (wt, wn), b in zip(weights, base_eer[c], strict=True)
            ]
            lo, hi = np.percentile(diffs, [2.5, 97.5])
            cells.append(f"{c}: {results[name][c] - ref[c]:+.2f} ({lo:+.2f} to {hi:+.2f})")
        print(f"  {name}: " + ", ".join(cells))
        show(n, len(results) - 1)
    # The rule (module docstring).
    cost = {"own": 0.5, **{f"K={k}": float(k) for k in SHIFTS}}
    winners = [
        n
        for n, r in results.items()
        if n != "K=1"
        and all(r[c] < ref[c] for c in ("A", "B"))
        and np.mean([(ref[c] - r[c]) / ref[c] for c in ("A", "B")]) >= MIN_GAIN
    ]
    mean = {n: (results[n]["A"] + results[n]["B"]) / 2 for n in results}
    if not winners:
        print("\nrule: no candidate beats K=1 in both enrollments by 5 % on average: K=1 stays")
        return 0
    best = min(winners, key=lambda n: mean[n])
    close = [n for n in winners if mean[n] <= mean[best] * (1 + TIE)]
    pick = min(close, key=lambda n: cost[n])
    print(f"\nrule: {pick} (beats K=1 in both enrollments; candidates that did: "
          f"{', '.join(winners)})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
