"""Loud audio and the GE2E front end: should the level normalisation also turn loud audio
down? (docs/speaker-verification.md, "Loudness, not only clipping".)

The shipped front end raises audio quieter than the card's `frontend.level_dbfs` (-30 dBFS)
and never lowers louder audio (`features.level_gain`, upstream Resemblyzer's
`increase_only`); the model takes mel *power*, so a take louder than its enrollment reaches it
louder. This compares, without changing the product (a subclass of SpeakerEmbedder replaces
only its per-window gains):

- `raise/speech`: the shipped embedder (gain from the trimmed speech up to each window's end,
  raise only); checked to give the shipped embeddings bit for bit;
- `both/speech`: the same samples, but the gain also lowers loud audio to -30 dBFS;
- `both/stream`: one gain for the whole utterance from the whole untrimmed recording (where
  upstream Resemblyzer measures it), both ways.

Protocol: bench_embedding.py's (../shared/README.md): every enrollment take, a speaker model
is the normalised mean of the takes' embeddings, one stream per item. Per system its own
cohort and threshold are built from the 251 LibriSpeech speakers without trials exactly as
`voxgate eval --build-cohort` builds them (evaluation.build_cohort; into a temporary folder),
so the operating point (the shipped centred cosine at speaker.target_fmr) is never set on
the trials reported. Printed per set and system:

(a) unmodified trials: raw-cosine EER and minDCF (the card's `evaluation:` figures), centred
    EER, and FNMR / FMR at the threshold;
(b) cross-level trials, FNMR / FMR at the threshold and centred EER: "test xG louder" scores
    the unmodified test items against models enrolled from takes scaled by 1/G (int16,
    rounded: most items cannot be made 4-8 times louder without clipping, their median peak
    is -11 to -5 dBFS; the level *ratio* is what a hot door microphone gives, and the test
    items stay at their own level, 66-100 % above -30 dBFS: --levels), "test /G quieter" the
    reverse (enrollment unmodified, test items scaled by 1/G);
(c) placement: the unmodified enrollment against test items with a quiet lead-in (2 s of
    pink noise at -60 dBFS RMS before the item) or a loud burst (0.3 s of white noise at
    -15 dBFS RMS, then 0.2 s of silence, before the item).

The decision rule, written before any of these figures was looked at: adopt `both/speech`
only if (1) on every set its unmodified raw-cosine EER is at most one target trial worse
than `raise/speech` (100 / target trials points) and its unmodified FNMR at the threshold
is at most one target trial worse; (2) its FNMR at the threshold on the six cross-level
conditions is nowhere worse than raise/speech's by more than one target trial, and the
paired genuine decisions over all of them (sets and conditions together) favour it clearly:
exact two-sided sign test (McNemar) on the trials one system denies and the other accepts,
p < 0.01; (3) its FNMR with a lead-in or a burst is at most one target trial worse than
raise/speech's on every set. `both/stream` is reported beside it, not judged.

Added after the first run, outside the rule (it was not changed): (d) "random level": every
recording, enrollment and test, scaled by its own factor between -18 and 0 dB (log-uniform,
seeded by the recording), so a speaker's recordings no longer share a level (in fsdd,
speechcommands and LibriSpeech the speakers' mean levels differ more than one speaker's
recordings do, so a level-keeping front end can use the level as a speaker cue); (e) "hot
xG": test items made G times louder in int16 where that does not clip (clip_gate.py
--source-level's loud attempts), FNMR over the target trials whose test item fits, beside
the unmodified FNMR of the same trials; and each system's cohort calibration EER (door-like
trials among the LibriSpeech cohort speakers, as build_cohort reports it).

    PYTHONPATH=daemon python benchmarks/level_mode.py [--data DIR] [--sets SET ...]
        [--card CARD] [--levels]

--levels prints, instead (no embedding, seconds), what the sets' levels are: per set, over
every item, the median level of the trimmed speech, the share above -30 dBFS, the median
peak, the spread of the speakers' mean levels against the spread within a speaker, and the
median seconds of the lead-in and of the burst that the card's speech trim keeps (and of the
lead-in with the trim's level_dbfs at -80, where it raises nothing).

Skips (exit 0, with a message) when the data is not there.
"""

from __future__ import annotations

import math
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _stats import set_parser, sets_status

from voxgate.cohort import Cohort, centered_cosine
from voxgate.config import VoxgateConfig
from voxgate.embedding import load_embedder
from voxgate.embedding.card import ModelCard
from voxgate.embedding.embedder import SpeakerEmbedder, _energy_to
from voxgate.embedding.runtime import Runtime
from voxgate.embedding.trim import trim_speech
from voxgate.evaluation import build_cohort, read_set
from voxgate.features import level_gain

try:
    from benchmarks.bench_embedding import SETS, eer_and_mindcf, load_item
except ImportError:  # run as a script: benchmarks/ itself is on the path
    from bench_embedding import SETS, eer_and_mindcf, load_item

REPO = Path(__file__).resolve().parent.parent
CARD = REPO / "daemon" / "voxgate" / "models" / "ge2e-int8.yaml"
SYSTEMS = (("raise", "speech"), ("both", "speech"), ("both", "stream"))
GAINS = (2, 4, 8)
LEAD_IN_S, LEAD_IN_DBFS = 2.0, -60.0
BURST_S, BURST_DBFS, BURST_GAP_S = 0.3, -15.0, 0.2
P_CLEAR = 0.01


def both_gain(sum_squares: float, n_samples: int, target: float | None) -> float:
    """Amplitude gain that brings audio with this energy to `target` dBFS, up or down."""
    up = level_gain(sum_squares, n_samples, target)
    if up != 1.0 or target is None or n_samples <= 0 or sum_squares <= 0.0:
        return up
    rms = math.sqrt(sum_squares / n_samples)
    return 10.0 ** ((target - 20.0 * math.log10(rms)) / 20.0)


class LevelEmbedder(SpeakerEmbedder):
    """SpeakerEmbedder whose per-window level gains follow `mode` ("raise": the shipped
    level_gain; "both": also lowers) measured `where` ("speech": the trimmed speech up to each
    window's end, as shipped; "stream": the whole untrimmed recording, one gain)."""

    def __init__(self, card: ModelCard, runtime: Runtime, mode: str, where: str) -> None:
        super().__init__(card, runtime)
        self.mode, self.where = mode, where
        self._gain = both_gain if mode == "both" else level_gain
        self._whole: float = 1.0

    def embed(self, pcm: np.ndarray) -> np.ndarray:
        if self.where == "stream":
            x = np.asarray(pcm, np.float64) / 32768.0
            self._whole = self._gain(float(x @ x), x.size, self.card.frontend.level_dbfs)
        return super().embed(pcm)

    def _gains(self, audio: np.ndarray, starts: list[int], from_int16: bool = False) -> np.ndarray:
        target = self.card.frontend.level_dbfs
        if self.where == "stream":
            return np.full(len(starts), self._whole**2, np.float32)
        hop = self.frontend.hop
        ends = [min((start + self._win.frames) * hop, audio.size) for start in starts]
        energies = _energy_to(audio, ends, hop, from_int16)
        amps = [self._gain(en, end, target) for end, en in zip(ends, energies, strict=True)]
        return np.asarray([a * a for a in amps], np.float32)


def scaled(pcm: np.ndarray, factor: float) -> np.ndarray:
    return np.clip(np.round(pcm.astype(np.float64) * factor), -32768, 32767).astype(np.int16)


def noise_at(kind: str, seconds: float, dbfs: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(16000 * seconds)
    x = rng.standard_normal(n)
    if kind == "pink":  # 1/f power: white noise shaped in the frequency domain
        spec = np.fft.rfft(x)
        spec[1:] /= np.sqrt(np.arange(1, spec.size))
        spec[0] = 0
        x = np.fft.irfft(spec, n)
    x *= 10 ** (dbfs / 20) / np.sqrt(np.mean(x**2))
    return scaled(x, 32768.0)


def lead_in(pcm: np.ndarray, seed: int) -> np.ndarray:
    return np.concatenate([noise_at("pink", LEAD_IN_S, LEAD_IN_DBFS, seed), pcm])


def burst(pcm: np.ndarray, seed: int) -> np.ndarray:
    gap = np.zeros(int(16000 * BURST_GAP_S), np.int16)
    return np.concatenate([noise_at("white", BURST_S, BURST_DBFS, seed), gap, pcm])


# Conditions: name -> (enrollment transform, test transform); a transform gets (pcm, seed).
Transform = Callable[[np.ndarray, int], np.ndarray]
SAME: Transform = lambda pcm, seed: pcm  # noqa: E731


def by(factor: float) -> Transform:
    return lambda pcm, seed: scaled(pcm, factor)


CONDITIONS: dict[str, tuple[Transform, Transform]] = {"unmodified": (SAME, SAME)}
CONDITIONS.update({f"test x{g} louder": (by(1 / g), SAME) for g in GAINS})
CONDITIONS.update({f"test /{g} quieter": (SAME, by(1 / g)) for g in GAINS})
CONDITIONS.update({"lead-in": (SAME, lead_in), "burst": (SAME, burst)})
CROSS = [c for c in CONDITIONS if c.startswith("test")]
RANDOM_DB = 18.0
HOT = (4, 8)


def random_level(pcm: np.ndarray, seed: int) -> np.ndarray:
    return scaled(pcm, 10 ** (-np.random.default_rng(seed).uniform(0, RANDOM_DB) / 20))


def fits(pcm: np.ndarray, g: float) -> bool:
    return int(np.abs(pcm.astype(np.int32)).max(initial=0)) * g <= 32767


def hot(g: float) -> Transform:
    return lambda pcm, seed: scaled(pcm, g) if fits(pcm, g) else pcm


CONDITIONS.update({"random level": (random_level, random_level)})
CONDITIONS.update({f"hot x{g}": (SAME, hot(g)) for g in HOT})


@dataclass
class Result:
    denied: np.ndarray  # per target trial, at the threshold
    accepted_impostors: int
    impostors: int
    centred_eer: float
    raw_eer: float
    raw_mindcf: float
    subset: np.ndarray | None = None  # hot xG: the target trials whose test item fits


def run(set_dir: Path, emb: LevelEmbedder, cohort: Cohort, threshold: float) -> dict[str, Result]:
    es = read_set(set_dir)
    seed_of = {r: i for i, r in enumerate(es.speaker_of)}
    cache: dict[tuple[str, str], np.ndarray] = {}

    def vec(item: str, key: str, t: Transform) -> np.ndarray:
        # Conditions that leave a side unmodified share its embeddings.
        key = "same" if t is SAME else key
        if (item, key) not in cache:
            pcm = t(load_item(set_dir, item), seed_of.get(item, len(item)))
            cache[item, key] = emb.embed(pcm)
        return cache[item, key]

    assert cohort.center is not None
    out = {}
    for name, (enroll_t, test_t) in CONDITIONS.items():
        models = {}
        for model, recs in es.enroll.items():
            m = np.mean([vec(r, "e " + name, enroll_t) for r in recs], axis=0)
            models[model] = m / np.linalg.norm(m)
        raw, centred, target = [], [], []
        for model, rec, tgt in es.trials:
            t = vec(rec, "t " + name, test_t)
            raw.append(float(models[model] @ t))
            centred.append(float(centered_cosine(models[model], t, cohort.center)[0]))
            target.append(bool(tgt))
        raw_a, cen, tar = np.array(raw), np.array(centred), np.array(target)
        subset = None
        if name.startswith("hot x"):
            g = float(name.removeprefix("hot x"))
            subset = np.array([fits(load_item(set_dir, r), g) for _, r, t in es.trials if t])
        raw_eer, raw_dcf = eer_and_mindcf(raw_a, tar)
        out[name] = Result(
            denied=cen[tar] < threshold,
            accepted_impostors=int((cen[~tar] >= threshold).sum()),
            impostors=int((~tar).sum()),
            centred_eer=eer_and_mindcf(cen, tar)[0],
            raw_eer=raw_eer,
            raw_mindcf=raw_dcf,
            subset=subset,
        )
    return out


def sign_test(b: int, c: int) -> float:
    """Exact two-sided binomial p for b against c discordant pairs (McNemar)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2 * tail)


def check_shipped(card: Path, data: Path, emb: LevelEmbedder) -> float:
    """Largest difference between raise/speech and the shipped embedder on a few items."""
    shipped = load_embedder(card)
    es = read_set(data / "fsdd")
    items = [r for _, r, _ in es.trials][:: max(1, len(es.trials) // 8)][:8]
    return max(
        float(np.abs(shipped.embed(p) - emb.embed(p)).max())
        for p in (load_item(data / "fsdd", it) for it in items)
    )


def levels(set_dir: Path, emb: SpeakerEmbedder) -> None:
    es = read_set(set_dir, need_trials=False)
    assert emb.card.trim is not None
    quiet = emb.card.trim.model_copy(update={"level_dbfs": -80.0})
    by_speaker: dict[str, list[float]] = {}
    peaks, lead, lead_quiet, noise = [], [], [], []
    for i, item in enumerate(es.speaker_of):
        pcm = load_item(set_dir, item)
        speech = emb.speech_of(pcm).astype(np.float64) / 32768.0
        by_speaker.setdefault(es.speaker(item), []).append(10 * np.log10(np.mean(speech**2)))
        peaks.append(20 * np.log10(max(1, int(np.abs(pcm.astype(np.int32)).max())) / 32768))
        own = trim_speech(pcm, emb.card.trim).size
        lead.append((trim_speech(lead_in(pcm, i), emb.card.trim).size - own) / 16000)
        lead_quiet.append(
            (trim_speech(lead_in(pcm, i), quiet).size - trim_speech(pcm, quiet).size) / 16000
        )
        noise.append((trim_speech(burst(pcm, i), emb.card.trim).size - own) / 16000)
    level = np.concatenate([np.array(v) for v in by_speaker.values()])
    between = float(np.std([np.mean(v) for v in by_speaker.values()]))
    within = float(np.sqrt(np.mean([np.var(v) for v in by_speaker.values() if len(v) > 1])))
    print(
        f"| {es.name} | {level.size} | {np.median(level):.1f} | {100 * np.mean(level > -30):.0f} % "
        f"| {np.median(peaks):.1f} | {between:.1f} / {within:.1f} | {np.median(lead):.2f} "
        f"({np.median(lead_quiet):.2f}) | {np.median(noise):.2f} |"
    )


def fnmr(denied: np.ndarray) -> str:
    if denied.size == 0:
        return "- (0/0)"
    return f"{100 * denied.mean():.2f} % ({int(denied.sum())}/{denied.size})"


def main() -> int:
    ap = set_parser(__doc__, list(SETS), choices=SETS)
    ap.add_argument("--card", type=Path, default=CARD)
    ap.add_argument("--levels", action="store_true", help="only the sets' levels (see above)")
    args = ap.parse_args()
    # The cohort comes from resemblyzer_ls's speakers without trials: it is always needed.
    status = sets_status("level_mode.py", args.data, dict.fromkeys(["resemblyzer_ls", *args.sets]))
    if status is not None:
        return status
    base = load_embedder(args.card)
    if args.levels:
        print("| set | items | speech level, median dBFS | above -30 dBFS | peak, median dBFS "
              "| speaker means sd / within sd, dB | lead-in kept, s (no VAD raise) "
              "| burst kept, s |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for set_name in args.sets:
            levels(args.data / set_name, base)
        return 0
    fmr = VoxgateConfig().speaker.target_fmr
    systems = {
        f"{mode}/{where}": LevelEmbedder(base.card, base.runtime, mode, where)
        for mode, where in SYSTEMS
    }
    diff = check_shipped(args.card, args.data, systems["raise/speech"])
    print(f"{base.model_id}; raise/speech against the shipped embedder: max |diff| {diff:g}")
    results: dict[tuple[str, str], dict[str, Result]] = {}
    calibration: dict[str, float] = {}
    for sname, emb in systems.items():
        with tempfile.TemporaryDirectory() as tmp:
            cohort = build_cohort(args.data / "resemblyzer_ls", emb, Path(tmp), 100, False)
        thr = cohort.threshold_for(fmr)
        calibration[sname] = float(cohort.info["calibration_eer_percent"])
        print(f"{sname}: own cohort threshold {thr:.4f} for FMR {fmr:g}", flush=True)
        for set_name in args.sets:
            results[sname, set_name] = run(args.data / set_name, emb, cohort, thr)
            print(f"  {set_name}: done", file=sys.stderr, flush=True)

    print("\n(a) unmodified trials: raw-cosine EER % / minDCF; centred EER %; FNMR and FMR at the")
    print("threshold\n")
    print("| set | system | raw EER | minDCF | centred EER | FNMR | FMR |")
    print("|---|---|---|---|---|---|---|")
    for set_name in args.sets:
        for sname in systems:
            r = results[sname, set_name]["unmodified"]
            print(
                f"| {set_name} | {sname} | {100 * r.raw_eer:.2f} | {r.raw_mindcf:.3f} "
                f"| {100 * r.centred_eer:.2f} | {fnmr(r.denied)} "
                f"| {100 * r.accepted_impostors / r.impostors:.2f} % "
                f"({r.accepted_impostors}/{r.impostors}) |"
            )
    print("\n(b, c, d) FNMR at the threshold / FMR / centred EER %, per condition\n")
    print("| set | condition | " + " | ".join(systems) + " |")
    print("|---|---|" + "---|" * len(systems))
    for set_name in args.sets:
        for cond in (c for c in CONDITIONS if not c.startswith("hot")):
            cells = []
            for sname in systems:
                r = results[sname, set_name][cond]
                cells.append(
                    f"{fnmr(r.denied)} / {100 * r.accepted_impostors / r.impostors:.2f} % "
                    f"/ {100 * r.centred_eer:.2f}"
                )
            print(f"| {set_name} | {cond} | " + " | ".join(cells) + " |")

    print("\nThe rule (both/speech against raise/speech):")
    ok = True
    b = c = 0
    for set_name in args.sets:
        old, new = results["raise/speech", set_name], results["both/speech", set_name]
        one = 1.0 / new["unmodified"].denied.size  # one target trial, as a rate
        checks = [
            ("unmodified raw EER", new["unmodified"].raw_eer - old["unmodified"].raw_eer),
            ("unmodified FNMR", new["unmodified"].denied.mean() - old["unmodified"].denied.mean()),
            *[(cond, new[cond].denied.mean() - old[cond].denied.mean()) for cond in CROSS],
            *[(cond, new[cond].denied.mean() - old[cond].denied.mean())
              for cond in ("lead-in", "burst")],
        ]  # fmt: skip
        bad = [f"{name} +{100 * d:.2f}" for name, d in checks if d > one + 1e-12]
        ok = ok and not bad
        print(f"- {set_name}: one target trial = {100 * one:.2f} points; worse by more: "
              f"{', '.join(bad) or 'none'}")  # fmt: skip
        for cond in CROSS:
            b += int((old[cond].denied & ~new[cond].denied).sum())
            c += int((~old[cond].denied & new[cond].denied).sum())
    p = sign_test(b, c)
    clear = b > c and p < P_CLEAR
    print(f"- cross-level genuine trials over all sets and conditions: denied by raise/speech "
          f"only {b}, by both/speech only {c}; sign test p = {p:.2g} "
          f"({'clear' if clear else 'not clear'} at {P_CLEAR:g})")  # fmt: skip
    print(f"- verdict: {'adopt both/speech' if ok and clear else 'keep raise (do not adopt)'}")

    print("\nAdded after the first run, outside the rule: (e) hot xG, FNMR over the target trials")
    print("whose test item fits G times louder in int16, and the same trials unmodified\n")
    print("| set | condition | " + " | ".join(systems) + " |")
    print("|---|---|" + "---|" * len(systems))
    for set_name in args.sets:
        for g in HOT:
            cells = []
            for sname in systems:
                r = results[sname, set_name][f"hot x{g}"]
                assert r.subset is not None
                base = results[sname, set_name]["unmodified"].denied[r.subset]
                cells.append(f"{fnmr(r.denied[r.subset])} (unmodified {fnmr(base)})")
            print(f"| {set_name} | hot x{g} | " + " | ".join(cells) + " |")
    print("\nCohort calibration EER % (LibriSpeech cohort speakers, door-like trials): "
          + ", ".join(f"{n} {c:.2f}" for n, c in calibration.items()))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
