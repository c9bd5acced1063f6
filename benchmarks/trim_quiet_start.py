"""A quiet start before the speech: what the speech trim keeps of it, and which recordings
another version of the trim would cut differently.

The trim's first stretch shares one VAD gain; it now goes on while it is still
trim.QUIET_DB below the card's level (docs/speaker-verification.md, "Quiet room before the
speech"). For each protocol set this prints the median seconds of a 2 s lead-in of pink
room noise at -60 dBFS (benchmarks/level_mode.py's) that the trim keeps, and, with
`--against COMMIT`, how many of the set's recordings (each file alone, every enrollment and
trial recording as `voxgate eval` joins it, and for resemblyzer_ls the cohort pieces
`--build-cohort` cuts) that commit's embedding/trim.py trims differently.

    PYTHONPATH=daemon python benchmarks/trim_quiet_start.py --data ../shared/data \\
        [--against 3cdd3c4]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from level_mode import lead_in  # noqa: E402

from voxgate import cohort as cohortmod  # noqa: E402
from voxgate.embedding import default_card_path, load_card  # noqa: E402
from voxgate.embedding.trim import TrimSpec, trim_speech  # noqa: E402
from voxgate.evaluation import EvalError, load_recording, read_set  # noqa: E402

SETS = ("fsdd", "vcc2018_eval", "speechcommands_v001_sample", "resemblyzer_ls")
Trim = Callable[[np.ndarray, TrimSpec], np.ndarray]


def trim_at(commit: str) -> Trim:
    """trim_speech as embedding/trim.py was at `commit` (read with git show)."""
    proc = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{commit}:daemon/voxgate/embedding/trim.py"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"trim_quiet_start.py: --against {commit}: {proc.stderr.strip()}")
    text = proc.stdout
    path = Path(tempfile.mkdtemp()) / "trim_then.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("trim_then", path)
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.trim_speech  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    ap.add_argument("--against", metavar="COMMIT", help="count recordings trimmed differently")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"trim_quiet_start.py: no data folder {args.data}", file=sys.stderr)
        return 2
    spec = load_card(default_card_path()).trim
    assert spec is not None, "the default card has a trim block"
    then = trim_at(args.against) if args.against else None
    for name in args.sets:
        try:
            es = read_set(args.data / name, need_trials=name != "resemblyzer_ls")
        except EvalError as exc:
            print(f"trim_quiet_start.py: {exc}", file=sys.stderr)
            return 1
        recs = sorted(
            set(es.speaker_of)
            | {r for takes in es.enroll.values() for r in takes}
            | {t[1] for t in es.trials}
        )
        kept, differ = [], 0
        for i, rec in enumerate(recs):
            pcm = load_recording(es.root, rec)
            now = trim_speech(pcm, spec)
            if i % 10 == 0:  # every tenth recording: the lead-in's share
                kept.append((trim_speech(lead_in(pcm, i), spec).size - now.size) / 16000)
            if then is not None and not np.array_equal(now, then(pcm, spec)):
                differ += 1
        line = f"{name}: lead-in kept, median {np.median(kept):.2f} s of 2 s ({len(kept)} items)"
        if then is not None:
            line += f"; {differ} of {len(recs)} recordings trimmed differently"
            if name == "resemblyzer_ls":
                in_trials = {es.speaker(r) for takes in es.enroll.values() for r in takes}
                cohort = [p for p, spk in es.speaker_of.items() if spk not in in_trials]
                pieces = [
                    piece
                    for i, p in enumerate(cohort)
                    for piece in cohortmod.pieces(load_recording(es.root, p), seed=i)
                ]
                moved = sum(not np.array_equal(trim_speech(x, spec), then(x, spec)) for x in pieces)
                line += f"; cohort pieces: {moved} of {len(pieces)}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
