"""Clipped attempts: at what clipped fraction does the model start denying genuine speakers,
and so where should the quality gate send an attempt to 'retry' for clipping?

Each test recording of a protocol set is multiplied by each --gains factor as a hot
microphone would: rounded to int16 and saturated at full scale (enrollment stays clean).
Every row is `voxgate eval` on the protocol with those recordings (evaluation.evaluate:
enrollment checks, the shipped int8 model and cohort, Scorer.verify), and every trial is
scored whatever the gate says, so the figures are what the model does with clipped speech.
The clipped fraction is the gate's own reading (quality.assess: Quality.clipped, the share
of samples in runs of >= 3 full-scale samples).

Printed per set and gain: the clipped fraction of the test recordings (median, 90th
percentile), genuine FNMR and impostor FMR at the shipped threshold (speaker.target_fmr),
the EER, and the share of test recordings the shipped gate (gate_reasons) retries. Then,
per set, genuine FNMR and FMR by clipped-fraction bin, over all gains. Then the rule that
picks a level from the --choose-on sets only (below), each --levels level's retries of the
unmodified test recordings of every set in --data (clean recordings must not be retried),
and, per set and gain, what the chosen level (or --level) retries and the FNMR among the
attempts it lets through.

The rule, fixed on fsdd and vcc2018_eval before speechcommands_v001_sample was looked at:
in each --choose-on set, a bin of clipped fraction fails when its genuine FNMR at the
threshold exceeds the set's FNMR on the unmodified recordings (gain 1) by more than
RULE_POINTS points; bins with fewer than RULE_MIN genuine trials say too little and are left
out, and so is the unclipped bin (no clipping level can retry it). The set's level is the
lower edge of the lowest bin from which every bin up fails; the level is the highest of the
sets' levels (clipping beyond it harms genuine attempts on every set), none when a set has
none. A first version took the lowest failing bin of either set: on fsdd that was the
unclipped bin and then 0.01-0.03 %, failures that --source-level shows come from loudness,
not clipping (fsdd's quiet recordings made 12-32 times louder without clipping).
--source-level divides each clipped recording by its gain again before it is scored: the
same flat tops at the recording's own loudness, what the clipping alone does.

    PYTHONPATH=daemon python benchmarks/clip_gate.py [--data DIR] [--sets SET ...]
        [--choose-on SET ...] [--gains G ...] [--level FRACTION]

Skips (exit 0, with a message) when the data is not there.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from _stats import set_parser, sets_status

from voxgate.audio.base import SAMPLE_RATE
from voxgate.audio.file import read_audio
from voxgate.cohort import for_model, model_sha256
from voxgate.config import VoxgateConfig
from voxgate.embedding import load_embedder
from voxgate.evaluation import evaluate, load_recording, read_set
from voxgate.quality import Quality, assess, gate_reasons

try:
    from benchmarks.noise_gate import noisy_protocol, rate
except ImportError:  # run as a script: benchmarks/ itself is on the path
    from noise_gate import noisy_protocol, rate

REPO = Path(__file__).resolve().parent.parent
SETS = ["fsdd", "vcc2018_eval", "speechcommands_v001_sample"]
CHOOSE_ON = ["fsdd", "vcc2018_eval"]
ALL_SETS = ["fsdd", "vcc2018_eval", "speechcommands_v001_sample", "resemblyzer_ls"]
GAINS = [1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32]
# Bin edges of the clipped fraction; the first bin holds exactly 0.
EDGES = [0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0]
LEVELS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1]
RULE_POINTS = 5.0  # FNMR points above the unmodified recordings' that a bin may add
RULE_MIN = 30  # genuine trials a bin needs for a verdict


def louder(pcm: np.ndarray, gain: float) -> np.ndarray:
    """`pcm` times `gain`, rounded and saturated at int16 full scale (a hot microphone)."""
    return np.clip(np.round(pcm.astype(np.float64) * gain), -32768, 32767).astype(np.int16)


@dataclass(frozen=True)
class Row:
    set: str
    gain: float
    clipped: np.ndarray  # Quality.clipped, per test recording
    gated: np.ndarray  # the shipped gate retries it, per test recording
    of_trial: np.ndarray  # test recording index, per trial
    target: np.ndarray  # per trial
    scores: np.ndarray  # back-end score, per trial (every trial scored)
    threshold: float
    eer_percent: float


def gated_now(q: Quality, cfg: VoxgateConfig) -> bool:
    s = cfg.speaker
    return bool(
        gate_reasons(
            q, s.min_speech_s, s.min_snr_db, s.min_snr_db_no_pauses, max_clipped=s.max_clipped
        )
    )


def run_set(name: str, args: argparse.Namespace, embedder: Any, work: Path) -> list[Row]:
    cfg = VoxgateConfig()
    cohort = for_model(embedder.model_id, None, model_sha256(embedder))
    es = read_set(args.data / name)
    tests = list(dict.fromkeys(r for _, r, _ in es.trials))
    of_trial = np.array([tests.index(r) for _, r, _ in es.trials])
    target = np.array([t for _, _, t in es.trials])
    clean = [load_recording(es.root, r) for r in tests]
    rows = []
    for gain in args.gains:
        pcms = [louder(pcm, gain) for pcm in clean]
        quality = [assess(pcm, cfg.vad) for pcm in pcms]
        if args.source_level:  # the same flat tops at the recording's own loudness
            pcms = [np.round(pcm / gain).astype(np.int16) for pcm in pcms]
        root = es.root  # gain 1: the protocol's own files
        if gain != 1:
            root = work / f"{name}-x{gain:g}"
            (root / "clipped").mkdir(parents=True)
            files = {r: f"clipped/{i}.flac" for i, r in enumerate(tests)}
            for r, pcm in zip(tests, pcms, strict=True):
                sf.write(root / files[r], pcm, SAMPLE_RATE, subtype="PCM_16")
            noisy_protocol(es, root, files)
            if not args.source_level:  # the gate reads what the evaluation reads: the file
                # through the audio boundary, whose DC removal can move a clipped top
                quality = [assess(read_audio(root / files[r]), cfg.vad) for r in tests]
        out = work / f"out-{name}-x{gain:g}"
        report = evaluate(root, embedder, cfg, cohort, out, progress=False)
        with open(out / "scores.csv", newline="", encoding="utf-8") as f:
            scores = np.array([float(row["backend"]) for row in csv.DictReader(f)])
        rows.append(
            Row(
                name,
                gain,
                np.array([q.clipped for q in quality]),
                np.array([gated_now(q, cfg) for q in quality]),
                of_trial,
                target,
                scores,
                cohort.threshold_for(cfg.speaker.target_fmr)
                if args.threshold is None
                else args.threshold,
                report["systems"]["backend"]["eer_percent"],
            )
        )
        print(f"{name} x{gain:g}: done", file=sys.stderr)
    return rows


def pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def bin_name(i: int) -> str:
    if i == 0:
        return "0"
    return f"{pct(EDGES[i - 1]).removesuffix(' %')}-{pct(EDGES[i])}"


def bin_of(clipped: np.ndarray) -> np.ndarray:
    """0 for no clipping, i for EDGES[i-1] < clipped <= EDGES[i]."""
    return np.where(clipped <= 0, 0, np.searchsorted(EDGES, clipped, side="left"))


def by_bin(rows: list[Row]) -> list[tuple[int, int, int, int]]:
    """Per bin over the rows' trials: (genuine, genuine denied, impostor, impostor accepted)."""
    b = np.concatenate([bin_of(r.clipped)[r.of_trial] for r in rows])
    tar = np.concatenate([r.target == 1 for r in rows])
    acc = np.concatenate([r.scores >= r.threshold for r in rows])
    out = []
    for i in range(len(EDGES)):
        m = b == i
        out.append(
            (int((m & tar).sum()), int((m & tar & ~acc).sum()),
             int((m & ~tar).sum()), int((m & ~tar & acc).sum()))
        )  # fmt: skip
    return out


def clean_fnmr(rows: list[Row]) -> float:
    r = next(r for r in rows if r.gain == 1)
    tar = r.target == 1
    return float((r.scores[tar] < r.threshold).mean())


def choose(rows: list[Row], sets: list[str]) -> tuple[float | None, list[str]]:
    """The rule's level over `sets` (None: some set has none) and how each set reads."""
    levels: list[float | None] = []
    notes = []
    for name in sets:
        mine = [r for r in rows if r.set == name]
        base = clean_fnmr(mine)
        judged = [
            (i, 100 * (k / n - base) > RULE_POINTS)
            for i, (n, k, _, _) in enumerate(by_bin(mine))
            if i > 0 and n >= RULE_MIN
        ]
        # The lowest bin from which every judged bin up fails.
        first = None
        for i, fails in reversed(judged):
            if not fails:
                break
            first = i
        failing = [bin_name(i) for i, fails in judged if fails]
        if first is None:
            levels.append(None)
            notes.append(f"{name}: gain 1 FNMR {pct(base)}; no level (failing bins: "
                         f"{', '.join(failing) or 'none'})")  # fmt: skip
        else:
            levels.append(EDGES[first - 1])
            notes.append(f"{name}: gain 1 FNMR {pct(base)}; every bin fails from "
                         f"{bin_name(first)} up: {pct(EDGES[first - 1])}")  # fmt: skip
    if not levels or any(lv is None for lv in levels):
        return None, notes
    return max(lv for lv in levels if lv is not None), notes


def clean_retries(data: Path, levels: list[float]) -> None:
    """Each level's retries of the unmodified test recordings of every protocol set."""
    cfg = VoxgateConfig()
    print("\nUnmodified test recordings retried for clipping, per level (clipped > level; "
          "the largest clipped fraction among them)\n")  # fmt: skip
    print("| set | recordings | max clipped | " + " | ".join(pct(lv) for lv in levels) + " |")
    print("|---|---|---|" + "---|" * len(levels))
    for name in ALL_SETS:
        if not (data / name / "trials.csv").is_file():
            continue
        es = read_set(data / name)
        tests = list(dict.fromkeys(r for _, r, _ in es.trials))
        clipped = np.array([assess(load_recording(es.root, r), cfg.vad).clipped for r in tests])
        cells = [str(int((clipped > lv).sum())) for lv in levels]
        print(f"| {name} | {len(tests)} | {pct(clipped.max())} | " + " | ".join(cells) + " |")


def main() -> int:
    ap = set_parser(__doc__, SETS)
    ap.add_argument("--choose-on", nargs="+", default=CHOOSE_ON, help="sets the rule reads")
    ap.add_argument("--gains", nargs="+", type=float, default=GAINS)
    ap.add_argument(
        "--level", type=float, help="clipped fraction to print retries for (default: the rule's)"
    )
    ap.add_argument(
        "--source-level",
        action="store_true",
        help="divide each clipped recording by its gain again before scoring: the clipping "
        "without the loudness (binned by the loud recording's clipped fraction)",
    )
    ap.add_argument("--levels", nargs="+", type=float, default=LEVELS, help="for the clean check")
    ap.add_argument(
        "--threshold",
        type=float,
        help="score threshold instead of the shipped cohort's for speaker.target_fmr "
        "(e.g. one benchmarks/voice_groups.py prints)",
    )
    args = ap.parse_args()
    if 1 not in args.gains:
        ap.error("--gains must include 1 (the unmodified recordings the rule compares with)")
    if any(g < 1 for g in args.gains):
        ap.error("--gains: factors of 1 or more (louder, as a hot microphone)")
    status = sets_status("clip_gate.py", args.data, args.sets)
    if status is not None:
        return status
    embedder = load_embedder(REPO / "daemon" / "voxgate" / "models" / "ge2e-int8.yaml")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets:
            rows += run_set(name, args, embedder, Path(tmp))
    s = VoxgateConfig().speaker
    why = "given" if args.threshold is not None else f"target FMR {s.target_fmr:g}"
    print(f"int8, threshold {rows[0].threshold:.3f} ({why}); test "
          "recordings louder by each gain, saturated at int16 full scale; enrollment clean; "
          "every trial scored\n")  # fmt: skip
    print("| set | gain | clipped, median | clipped, p90 | FNMR | FMR | EER | gate retries now |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        tar, acc = r.target == 1, r.scores >= r.threshold
        lo, hi = np.percentile(r.clipped, [50, 90])
        print(
            f"| {r.set} | x{r.gain:g} | {pct(lo)} | {pct(hi)} | {rate(~acc, tar)} "
            f"| {rate(acc, ~tar)} | {r.eer_percent:.2f} % | {pct(r.gated.mean())} |"
        )
    for name in args.sets:
        mine = [r for r in rows if r.set == name]
        gains = ", ".join(f"x{r.gain:g}" for r in mine)
        print(f"\n{name}, by clipped fraction of the test recording, over gains {gains}: "
              "FNMR / FMR at the threshold\n")  # fmt: skip
        print("| clipped | FNMR | FMR |")
        print("|---|---|---|")
        for i, (n, k, m, a) in enumerate(by_bin(mine)):
            if n or m:
                fnmr = f"{100 * k / n:.2f} % ({k}/{n})" if n else "-"
                fmr = f"{100 * a / m:.2f} % ({a}/{m})" if m else "-"
                print(f"| {bin_name(i)} | {fnmr} | {fmr} |")
    chosen, notes = choose(rows, [s for s in args.choose_on if s in args.sets])
    print(f"\nThe rule on {', '.join(args.choose_on)} (a clipped bin fails when its FNMR exceeds "
          f"gain 1's by more than {RULE_POINTS:g} points, with >= {RULE_MIN} genuine trials; "
          "the level is the highest set's edge from which every bin up fails):")  # fmt: skip
    for note in notes:
        print(f"- {note}")
    print(f"- level: {'none' if chosen is None else pct(chosen)}")
    clean_retries(args.data, args.levels)
    level = args.level if args.level is not None else chosen
    if level is None:
        return 0
    print(f"\nAt level {pct(level)} (clipped > level: retry), per set and gain: retried test "
          "recordings; FNMR among the attempts it lets through; FNMR among those it retries "
          "(what they would have been)\n")  # fmt: skip
    print("| set | gain | retried | FNMR, passed | FNMR, retried |")
    print("|---|---|---|---|---|")
    for r in rows:
        retry = (r.clipped > level)[r.of_trial]
        tar, denied = r.target == 1, r.scores < r.threshold
        print(
            f"| {r.set} | x{r.gain:g} | {pct((r.clipped > level).mean())} "
            f"| {rate(denied, tar & ~retry)} | {rate(denied, tar & retry)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
