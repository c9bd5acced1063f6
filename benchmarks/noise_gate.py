"""The speaker-verification quality gate under real background noise: is a noisy attempt
sent to 'retry', or scored as if it were clean?

Each test recording of a protocol set (fsdd, vcc2018_eval) is mixed with a piece of a real
noise recording (../shared/data/noise: dishes, a person miaowing, exercise bike, running
tap, pink and white noise) at each --snrs; enrollment stays clean (with --enroll-noise, the
enrollment takes get noise at the same SNR too). The true SNR is measured over the speech:
the clean recording's active-speech power (its 30 ms frames within 30 dB of its
95th-percentile frame; digital silence is never active) over the added noise's mean power.
A recording gets the same noise type and piece at every SNR (chosen by --seed), so the rows
differ only in the noise level; a mix that would clip is scaled down whole. Every row is
`voxgate eval` on the protocol with the noisy recordings (evaluation.evaluate: enrollment
checks, the shipped int8 model and cohort, the threshold for speaker.target_fmr,
Scorer.verify with the quality gate), so an attempt is scored as the daemon scores it.
With --room the noise also runs 2 s before and 1 s after the speech, and the recording
scored is the utterance the endpointer (vad.segment, the `vad:` defaults) cuts from that,
as the daemon gates and embeds `utt.pcm`, gated as a live utterance (quality.Quality.live:
without pauses it is too noisy), as the door gates it; --room-as-files gates it as a file.

Printed per set and SNR: the gate's SNR estimate minus the true SNR (median, 10th to 90th
percentile), the share of recordings whose noise the gate measured in pauses (the others
get speaker.min_snr_db_no_pauses), the retry rate, FMR and FNMR at the threshold among the
attempts the gate lets through (a retried attempt is never accepted), and the EER over all
trials (retried ones included, as `voxgate eval` counts them), and the enrollment takes the
checks rejected (when all of a speaker's are, `voxgate eval` enrolls from them all anyway,
where the daemon would store nothing). Then, per noise type, the
estimate's median error and the share of recordings the gate calls too_noisy; and per set
and noise type, how unsteady the noise is (frame_power_spread) and the genuine attempts
denied (FNMR) and impostors accepted (FMR) at the threshold with every attempt scored, the
gate ignored: what the model does with that noise at that SNR, whatever the gate decides.
--noises one type gives every recording that type (all its trials measure it); --lowpass
makes each noise a rumble (its power below HZ), as a hum or LibriSpeech's background.
Last, per set and SNR, the gate's SNR estimate above band_gate.SPLIT_HZ minus the true
(full-band) SNR, and for each --floors level what the band gate (speaker.min_snr_db above
the split, or each --band-levels level, with that floor on the full band;
benchmarks/band_gate.py) would
retry and the FNMR among the attempts it lets through, from the same scores (each run
scores every trial), then per noise type the same beside the shipped gate. With
--band-levels, each level above the split is paired with each floor, and the pairs that
break the acceptance rule (band_gate.within_rule, per noise type and SNR) are named.

    PYTHONPATH=daemon python benchmarks/noise_gate.py [--data DIR] [--enroll-noise] [--room]
        [--noises TYPE ...] [--lowpass HZ] [--floors DB ...] [--band-levels DB ...]

Skips (exit 0, with a message) when the data is not there.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from voxgate.audio.base import SAMPLE_RATE
from voxgate.audio.file import read_audio
from voxgate.cohort import for_model, model_sha256
from voxgate.config import VoxgateConfig
from voxgate.config.audio import VadConfig
from voxgate.config.speaker import SpeakerConfig
from voxgate.embedding import load_embedder
from voxgate.evaluation import EvalSet, evaluate, load_recording, read_set
from voxgate.quality import FRAME_MS, Quality, assess, gate_reasons, too_noisy
from voxgate.vad import segment

try:
    from benchmarks._stats import set_parser
    from benchmarks.band_gate import SPLIT_HZ, band_reasons, snr_above_split, within_rule
except ImportError:  # run as a script: benchmarks/ itself is on the path
    from _stats import set_parser
    from band_gate import SPLIT_HZ, band_reasons, snr_above_split, within_rule

REPO = Path(__file__).resolve().parent.parent
SETS = ["fsdd", "vcc2018_eval"]
SNRS = ["clean", "30", "25", "20", "15", "10", "5", "0", "-5"]
FRAME = SAMPLE_RATE * FRAME_MS // 1000
ACTIVE_DB = 30.0  # frames this far below the loud ones still count as speech
ROOM_S = (2.0, 1.0)  # --room: noise before and after the speech
QUIET_DB = 40.0  # --band-levels: at this SNR and above, a quiet room (retries must not rise)


def speech_power(pcm: np.ndarray) -> float:
    """Mean power of the active speech (a simple stand-in for ITU-T P.56's active level)."""
    x = pcm[: len(pcm) // FRAME * FRAME].astype(np.float64).reshape(-1, FRAME)
    power = (x**2).mean(axis=1)
    active = power >= np.percentile(power, 95) * 10 ** (-ACTIVE_DB / 10)
    return float(power[active].mean())


def mix(
    clean: np.ndarray, noise: np.ndarray, snr_db: float | None, power: float | None = None
) -> np.ndarray:
    """`clean` (int16) plus `noise` (float, as long) scaled to `snr_db` over the speech
    (whose power is `power`, or measured on `clean`)."""
    if snr_db is None:
        return clean
    power = speech_power(clean) if power is None else power
    gain = np.sqrt(power / 10 ** (snr_db / 10) / np.mean(noise**2))
    y = clean.astype(np.float64) + gain * noise
    peak = np.abs(y).max()
    if peak > 32767:  # as a level control would: the SNR is kept
        y *= 32767 / peak
    return np.round(y).astype(np.int16)


def lowpass(noise: np.ndarray, hz: float | None) -> np.ndarray:
    """`noise` through a 4th-order Butterworth low-pass at `hz` (None: as it is): a rumble
    or hum with the noise's own ups and downs, where the speech has little power."""
    if hz is None:
        return noise
    from scipy.signal import butter, sosfilt

    return np.asarray(sosfilt(butter(4, hz, "lowpass", fs=SAMPLE_RATE, output="sos"), noise))


def frame_power_spread(noise: np.ndarray) -> float:
    """How unsteady a noise is over what the gate's pauses hold: the spread (standard
    deviation, dB) of its 30 ms frames' power within each 1 s piece, median over pieces.
    White noise reads 0.3 dB; a clatter or a voice several dB."""
    per = SAMPLE_RATE // FRAME  # whole frames in 1 s
    frames = noise[: len(noise) // (per * FRAME) * per * FRAME].reshape(-1, per, FRAME)
    db = 10 * np.log10((frames**2).mean(axis=2) + 1e-12)
    return float(np.median(db.std(axis=1)))


def utterance(pcm: np.ndarray, vad_cfg: VadConfig) -> np.ndarray:
    """What the daemon would score: the endpointer's utterance with the most speech (the
    whole audio when it finds none)."""
    found = segment(pcm, vad_cfg)
    return max(found, key=lambda u: u.speech_s).pcm if found else pcm


@dataclass(frozen=True)
class Row:
    set: str
    snr: str
    noise: np.ndarray  # noise type, per test recording
    trial_noise: np.ndarray  # noise type of the test recording, per trial
    err: np.ndarray  # estimated minus true SNR, per test recording (NaN for clean)
    est: np.ndarray  # estimated SNR, per test recording
    pauses: np.ndarray  # SNR measured in pauses (not the quietest frames), per test recording
    noisy: np.ndarray  # the gate calls it too_noisy, per test recording
    retry: np.ndarray  # per trial
    target: np.ndarray  # per trial
    scores: np.ndarray  # back-end score, per trial
    threshold: float
    eer_percent: float
    takes_rejected: str  # enrollment takes the checks rejected, of all
    quality: list[Quality]  # the gate's reading, per test recording
    snr_high: list[float]  # its SNR estimate above band_gate.SPLIT_HZ, per test recording
    of_trial: np.ndarray  # test recording index, per trial


def noisy_protocol(es: EvalSet, dst: Path, files: dict[str, str]) -> None:
    """A copy of the protocol in `dst` where each recording in `files` is replaced by its
    file under dst; the other audio is linked to the original."""
    for entry in es.root.iterdir():
        if entry.is_dir():
            (dst / entry.name).symlink_to(entry.resolve())
    with open(dst / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "speaker"])
        w.writerows(es.speaker_of.items())
        w.writerows([path, es.speaker(rec)] for rec, path in files.items())
    with open(dst / "enroll.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "path"])
        w.writerows([m, files.get(r, r)] for m, recs in es.enroll.items() for r in recs)
    with open(dst / "trials.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "path", "target"])
        w.writerows([m, files[r], t] for m, r, t in es.trials)


def config(args: argparse.Namespace) -> VoxgateConfig:
    cfg = VoxgateConfig()
    # What other gate levels would do (not the shipped ones).
    levels = {"min_snr_db": args.min_snr_db, "enroll_min_snr_db": args.enroll_min_snr_db}
    update = {k: v for k, v in levels.items() if v is not None}
    cfg.speaker = SpeakerConfig.model_validate({**cfg.speaker.model_dump(), **update})
    return cfg


def run_set(name: str, args: argparse.Namespace, embedder: Any, work: Path) -> list[Row]:
    cfg = config(args)
    cohort = for_model(embedder.model_id, None, model_sha256(embedder))
    es = read_set(args.data / name)
    tests = list(dict.fromkeys(r for _, r, _ in es.trials))
    recs = list(tests)
    if args.enroll_noise:
        recs += [r for takes in es.enroll.values() for r in takes if r not in set(tests)]
    of_trial = np.array([tests.index(r) for _, r, _ in es.trials])
    noises = {
        p.stem: lowpass(read_audio(p).astype(np.float64), args.lowpass)
        for p in sorted((args.data / "noise").glob("*.flac"))
        if not args.noises or p.stem in args.noises
    }
    kinds = sorted(noises)
    rng = np.random.default_rng(args.seed)
    clean = [load_recording(es.root, r) for r in recs]
    before, after = (int(x * SAMPLE_RATE) for x in (ROOM_S if args.room else (0, 0)))
    pick = []  # one noise type and piece per recording, the same at every SNR
    for pcm in clean:
        kind = kinds[int(rng.integers(len(kinds)))]
        n = before + len(pcm) + after
        start = int(rng.integers(len(noises[kind]) - n))
        pick.append((kind, noises[kind][start : start + n]))
    placed = [np.pad(pcm, (before, after)) for pcm in clean]
    rows = []
    for snr_arg in args.snrs:
        snr = None if snr_arg == "clean" else float(snr_arg)
        mixed = [
            mix(pcm, piece, snr, speech_power(c))
            for c, pcm, (_, piece) in zip(clean, placed, pick, strict=True)
        ]
        if args.room and snr is not None:
            mixed = [utterance(pcm, cfg.vad) for pcm in mixed]
        root = es.root
        if snr is not None:
            root = work / f"{name}-{snr_arg}"
            (root / "noisy").mkdir(parents=True)
            files = {r: f"noisy/{i}.flac" for i, r in enumerate(recs)}
            for r, pcm in zip(recs, mixed, strict=True):
                sf.write(root / files[r], pcm, SAMPLE_RATE, subtype="PCM_16")
            noisy_protocol(es, root, files)
            # As the evaluation reads them: through the audio boundary and its DC removal.
            mixed = [read_audio(root / files[r]) for r in recs]
        # The gate's reading of each test recording, as Scorer.verify is given it.
        # A room's clean row is the protocol's files, not an utterance: gated as files.
        live = args.room and not args.room_as_files and snr is not None
        quality = [assess(pcm, cfg.vad, live) for pcm in mixed[: len(tests)]]
        est = np.array([q.snr_db for q in quality])
        s = cfg.speaker
        levels = (s.min_snr_db, s.min_snr_db_no_pauses)
        noisy = np.array([too_noisy(q, *levels) for q in quality])
        retry = np.array(
            [bool(gate_reasons(q, s.min_speech_s, *levels, max_clipped=s.max_clipped))
             for q in quality]
        )  # fmt: skip
        out = work / f"out-{name}-{snr_arg}"
        # Enrollment takes are endpointed too only with --enroll-noise (else the clean files).
        live_takes = live and args.enroll_noise
        report = evaluate(
            root, embedder, cfg, cohort, out, progress=False, live=live, live_takes=live_takes
        )
        back = report["systems"]["backend"]
        if abs(100 * retry[of_trial].mean() - back["retry_rate_percent"]) > 0.01:
            raise RuntimeError(f"{name} {snr_arg}: the gate read here is not the evaluation's")
        with open(out / "scores.csv", newline="", encoding="utf-8") as f:
            scores = np.array([float(row["backend"]) for row in csv.DictReader(f)])
        rows.append(
            Row(
                name,
                snr_arg,
                np.array([k for k, _ in pick[: len(tests)]]),
                np.array([pick[i][0] for i in of_trial]),
                est - snr if snr is not None else np.full(len(tests), np.nan),
                est,
                np.array([q.snr_from_pauses for q in quality]),
                noisy,
                retry[of_trial],
                np.array([t for _, _, t in es.trials]),
                scores,
                # Scorer.threshold(1) without speaker.threshold
                cohort.threshold_for(s.target_fmr) if args.threshold is None else args.threshold,
                back["eer_percent"],
                f"{back['rejected_enroll_takes']}/{sum(len(t) for t in es.enroll.values())}",
                quality,
                [snr_above_split(pcm, cfg.vad) for pcm in mixed[: len(tests)]],
                of_trial,
            )
        )
        print(f"{name} at {snr_arg}: done", file=sys.stderr)
    return rows


def rate(hit: np.ndarray, of: np.ndarray) -> str:
    n, k = int(of.sum()), int((hit & of).sum())
    return f"{100 * k / n:.2f} % ({k}/{n})" if n else "-"


def spread(x: np.ndarray) -> str:
    lo, mid, hi = np.percentile(x, [10, 50, 90])
    return f"{mid:+.1f} ({lo:+.1f} to {hi:+.1f})"


def snr_arg(text: str) -> str:
    if text != "clean":
        try:
            float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: a number of dB, or 'clean'") from None
    return text


def main() -> int:
    ap = set_parser(__doc__, SETS)
    ap.add_argument(
        "--snrs", nargs="+", default=SNRS, type=snr_arg, help="true SNRs in dB, or 'clean'"
    )
    ap.add_argument("--noises", nargs="+", help="noise files by name without .flac (default all)")
    ap.add_argument(
        "--lowpass",
        type=float,
        metavar="HZ",
        help="low-pass the noise at HZ first (a hum or rumble; the SNR stays over the full band)",
    )
    ap.add_argument("--seed", type=int, default=0, help="picks each recording's noise and piece")
    ap.add_argument("--enroll-noise", action="store_true", help="enrollment at the same SNR")
    ap.add_argument("--min-snr-db", type=float, help="gate level instead of speaker.min_snr_db")
    ap.add_argument(
        "--enroll-min-snr-db", type=float, help="take level instead of speaker.enroll_min_snr_db"
    )
    ap.add_argument(
        "--floors",
        nargs="+",
        type=float,
        default=[],
        help="full-band floors to print the band gate's retry and FNMR for (from the same scores)",
    )
    ap.add_argument(
        "--band-levels",
        nargs="+",
        type=float,
        metavar="DB",
        help="with --floors: levels above the split to print the band gate at (default "
        "speaker.min_snr_db), each with every floor; the shipped gate keeps its own level",
    )
    ap.add_argument(
        "--room",
        action="store_true",
        help=f"noise also {ROOM_S[0]:g} s before and {ROOM_S[1]:g} s after the speech, and "
        "the endpointer's utterance scored, as the daemon scores it (not the clean row)",
    )
    ap.add_argument(
        "--room-as-files",
        action="store_true",
        help="with --room: gate the utterances as files (no pauses: the lower level), as the "
        "door did before it treated an utterance without pauses as noise",
    )
    ap.add_argument(
        "--threshold",
        type=float,
        help="score threshold instead of the shipped cohort's for speaker.target_fmr "
        "(e.g. one benchmarks/voice_groups.py prints)",
    )
    args = ap.parse_args()
    if args.band_levels and not args.floors:  # else they would print nothing
        ap.error("--band-levels needs --floors")
    if not args.data.is_dir():  # a clone without ../shared: nothing to measure
        print(f"noise_gate.py: skipped: no evaluation data at {args.data}")
        return 0
    noise_files = {p.stem for p in (args.data / "noise").glob("*.flac")}
    missing = [s for s in args.sets if not (args.data / s / "trials.csv").is_file()]
    missing += [f"noise/{n}.flac" for n in args.noises or ["*"] if n not in noise_files | {"*"}]
    if missing or not noise_files:
        print(f"noise_gate.py: not in {args.data}: {', '.join(missing) or 'noise/*.flac'}",
              file=sys.stderr)  # fmt: skip
        return 1
    embedder = load_embedder(REPO / "daemon" / "voxgate" / "models" / "ge2e-int8.yaml")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets:
            rows += run_set(name, args, embedder, Path(tmp))
    s = config(args).speaker
    print(
        f"int8, threshold {rows[0].threshold:.3f} "
        f"({'given' if args.threshold is not None else f'target FMR {s.target_fmr:g}'}); gate: "
        f"net speech >= {s.min_speech_s:g} s, estimated SNR >= {s.min_snr_db:g} dB "
        f"(>= {s.min_snr_db_no_pauses:g} dB without pauses); enrollment takes >= "
        f"{s.enroll_min_snr_db:g} dB (>= {s.enroll_min_snr_db_no_pauses:g}); "
        f"enrollment {'at the same SNR' if args.enroll_noise else 'clean'}"
        f"{'; in a room, the endpointed utterance scored' if args.room else ''}\n"
    )
    print(
        "| set | true SNR (dB) | estimate - true, median (10th to 90th pct) | from pauses "
        "| retry | FMR, passed | FNMR, passed | EER, all trials | takes rejected |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        passed, accept = ~r.retry, r.scores >= r.threshold
        tar, non = passed & (r.target == 1), passed & (r.target == 0)
        est = f"estimate {np.median(r.est):.1f}" if r.snr == "clean" else spread(r.err)
        print(
            f"| {r.set} | {r.snr} | {est} | {100 * r.pauses.mean():.0f} % "
            f"| {100 * r.retry.mean():.1f} % "
            f"| {rate(accept, non)} | {rate(~accept, tar)} "
            f"| {r.eer_percent:.2f} % | {r.takes_rejected} |"
        )
    noisy = [x for x in args.snrs if x != "clean"]
    print(f"\nPer noise type, test recordings of {' and '.join(args.sets)}: estimate - true, "
          "median (share the gate calls too_noisy)\n")  # fmt: skip
    print("| noise | " + " | ".join(f"{x} dB" for x in noisy) + " |")
    print("|---|" + "---|" * len(noisy))
    for kind in sorted(set(rows[0].noise)):
        cells = []
        for x in noisy:
            err = np.concatenate([r.err[r.noise == kind] for r in rows if r.snr == x])
            bad = np.concatenate([r.noisy[r.noise == kind] for r in rows if r.snr == x])
            cells.append(f"{np.median(err):+.1f} ({100 * np.mean(bad):.0f} %)")
        print(f"| {kind} | " + " | ".join(cells) + " |")
    for name in args.sets:
        print(f"\n{name}, per noise type: genuine attempts denied (FNMR) at the threshold "
              "with every attempt scored (the gate ignored) [FMR, also ungated]\n")  # fmt: skip
        mine = [r for r in rows if r.set == name]
        print("| noise | frame power spread | " + " | ".join(f"{r.snr} dB" for r in mine) + " |")
        print("|---|---|" + "---|" * len(mine))
        for kind in sorted(set(mine[0].trial_noise)):
            cells = []
            for r in mine:
                accept, of = r.scores >= r.threshold, r.trial_noise == kind
                tar, non = of & (r.target == 1), of & (r.target == 0)
                cells.append(
                    f"{rate(~accept, tar)} [{100 * (accept & non).sum() / max(non.sum(), 1):.2f} %]"
                )
            spread_db = frame_power_spread(
                lowpass(
                    read_audio(args.data / "noise" / f"{kind}.flac").astype(np.float64),
                    args.lowpass,
                )
            )
            print(f"| {kind} | {spread_db:.2f} dB | " + " | ".join(cells) + " |")
    print_floors(rows, args, s)
    return 0


def print_floors(rows: list[Row], args: argparse.Namespace, s: SpeakerConfig) -> None:
    """The band gate at each --band-levels level and --floors floor, from the rows'
    readings and scores, beside the shipped gate."""
    levels = args.band_levels or [s.min_snr_db]
    # (band level, floor) pairs; None: the shipped gate, at its own level.
    gates: list[tuple[float, float] | None] = [None] + [
        (lv, f) for lv in levels for f in args.floors
    ]

    def gate_recs(r: Row, gate: tuple[float, float] | None) -> np.ndarray:
        """Per test recording: the gate retries it."""
        level, floor = gate or (s.min_snr_db, None)
        sg = s.model_copy(update={"min_snr_db": level})
        rec = [
            bool(band_reasons(q, h, sg, floor)) for q, h in zip(r.quality, r.snr_high, strict=True)
        ]
        return np.array(rec)

    def gate_retry(r: Row, gate: tuple[float, float] | None) -> np.ndarray:
        """Per trial: the gate retries its test recording."""
        return gate_recs(r, gate)[r.of_trial]

    def name(gate: tuple[float, float] | None) -> str:
        return (
            f"{s.min_snr_db:g} dB full band (now)"
            if gate is None
            else (f"{gate[0]:g} dB above, floor {gate[1]:g} dB")
        )

    print(f"\nThe band gate: estimate above {SPLIT_HZ:g} Hz - true SNR, median (10th to 90th "
          "pct); per level above the split and full-band floor, retry / FNMR among "
          "passed\n")  # fmt: skip
    print("| set | true SNR (dB) | above split - true | " + " | ".join(map(name, gates)) + " |")
    print("|---|---|---|" + "---|" * len(gates))
    for r in rows:
        high = np.array(r.snr_high)
        true = np.nan if r.snr == "clean" else float(r.snr)
        est = f"estimate {np.nanmedian(high):.1f}" if r.snr == "clean" else spread(high - true)
        cells = []
        for g in gates:
            retry = gate_retry(r, g)
            tar = ~retry & (r.target == 1)
            cells.append(f"{100 * retry.mean():.1f} % / {rate(r.scores < r.threshold, tar)}")
        print(f"| {r.set} | {r.snr} | {est} | " + " | ".join(cells) + " |")
    if args.band_levels and any(r.snr != "clean" for r in rows):
        print_rule(rows, gates[1:], gate_recs, name)
    for g in gates[1:]:
        print(f"\nPer noise type, {name(g)}: above split - true (median); retry now -> band "
              "gate; FNMR among passed now -> band gate\n")  # fmt: skip
        print("| set | noise | true SNR (dB) | above split - true | retry | FNMR, passed |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            if r.snr == "clean":
                continue
            both = [gate_retry(r, None), gate_retry(r, g)]
            for kind in sorted(set(r.noise)):
                mine = r.noise == kind
                high = [h for h, m in zip(r.snr_high, mine, strict=True) if m]
                err = np.median(high) - float(r.snr)
                of = r.trial_noise == kind
                retry = " -> ".join(f"{100 * x[of].mean():.1f} %" for x in both)
                fnmr = " -> ".join(
                    rate(r.scores < r.threshold, ~x & of & (r.target == 1)) for x in both
                )
                print(f"| {r.set} | {kind} | {r.snr} | {err:+.1f} | {retry} | {fnmr} |")


def print_rule(
    rows: list[Row],
    gates: list[tuple[float, float]],
    gate_recs: Callable[[Row, tuple[float, float] | None], np.ndarray],
    name: Callable[[tuple[float, float] | None], str],
) -> None:
    """Per band gate, where it breaks the acceptance rule (band_gate.within_rule, per set,
    SNR and noise type; at QUIET_DB and above, no more retried test recordings than the
    shipped gate's plus one)."""
    print("\nThe acceptance rule (genuine attempts let through denied <= 14 % and <= the "
          f"shipped gate's, each +1 trial; at >= {QUIET_DB:g} dB, retried test recordings <= "
          "the shipped gate's + 1), per band gate:\n")  # fmt: skip
    for g in gates:
        broken = []
        for r in rows:
            if r.snr == "clean":
                continue
            now, band = gate_recs(r, None), gate_recs(r, g)
            scored_now, scored = ~now[r.of_trial], ~band[r.of_trial]
            denied, tar = r.scores < r.threshold, r.target == 1
            for kind in sorted(set(r.noise)):
                of = (r.trial_noise == kind) & tar
                k0, n0 = int((scored_now & of & denied).sum()), int((scored_now & of).sum())
                k, n = int((scored & of & denied).sum()), int((scored & of).sum())
                where = f"{r.set} {kind} {r.snr} dB"
                if not within_rule(k, n, k0, n0):
                    broken.append(f"{where}: {k}/{n} denied (now {k0}/{n0})")
                mine = r.noise == kind
                if float(r.snr) >= QUIET_DB and band[mine].sum() > now[mine].sum() + 1:
                    broken.append(f"{where}: {band[mine].sum()} retried (now {now[mine].sum()})")
        print(
            f"- {name(g)}: " + ("keeps it" if not broken else "breaks it at " + "; ".join(broken))
        )


if __name__ == "__main__":
    sys.exit(main())
