"""The voiceprint on short answers (a short passphrase): Speech Commands single words.

The sample's protocol joins two words per test recording (1.5 s of net speech, median).
Here each of those words is its own test recording (0.6 s, median), scored by `voxgate
eval` with the quality gate opened to 0.2 s (speaker.min_speech_s), then counted at the
shipped threshold by net speech (`quality.assess`): how often the right voice passes and a
wrong one matches when an answer has under 1 s of speech (challenge.passphrase_min_speech_s).
The protocol is written to a temporary folder; the audio is linked, not copied.

Run:  PYTHONPATH=daemon python benchmarks/bench_short_voice.py      (about 5 minutes)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_challenge import DATA

from voxgate.audio.file import read_audio
from voxgate.quality import assess

BANDS = ((0.2, 0.6), (0.6, 1.0), (1.0, 60.0))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    src = args.data / "speechcommands_v001_sample"
    if not (src / "trials.csv").exists():
        print(f"no evaluation data at {args.data}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="short-voice-") as tmp:
        root = Path(tmp) / "sc_single"
        root.mkdir()
        (root / "audio").symlink_to((src / "audio").resolve())
        for name in ("manifest.csv", "enroll.csv"):
            (root / name).write_bytes((src / name).read_bytes())
        trials: dict[tuple[str, str], str] = {}
        with open(src / "trials.csv") as f:
            for row in csv.DictReader(f):
                for clip in row["path"].split(";"):
                    trials.setdefault((row["model"], clip), row["target"])
        with open(root / "trials.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["model", "path", "target"])
            w.writerows((m, p, t) for (m, p), t in trials.items())
        cfg = Path(tmp) / "gate.yaml"
        cfg.write_text("speaker: {min_speech_s: 0.2}\n")
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "voxgate", "eval", str(root), "-c", str(cfg)]
        subprocess.run([*cmd, "--out", str(out)], check=True, env=os.environ, stdout=sys.stderr)
        report = json.loads((out / "report.json").read_text())
        with open(out / "scores.csv") as f:
            scores = list(csv.DictReader(f))
        speech = {p: assess(read_audio(root / p)).speech_s for p in {r["path"] for r in scores}}
    threshold = report["systems"]["backend"]["threshold"]
    bands = []
    for lo, hi in BANDS:
        rows = [r for r in scores if lo <= speech[r["path"]] < hi]
        target = [float(r["backend"]) >= threshold for r in rows if r["target"] == "1"]
        other = [float(r["backend"]) >= threshold for r in rows if r["target"] == "0"]
        bands.append(
            {
                "net_speech_s": [lo, hi],
                "right_voice_trials": len(target),
                "right_voice_accepted": sum(target),
                "wrong_voice_trials": len(other),
                "wrong_voice_matched": sum(other),
            }
        )
    backend = report["systems"]["backend"]
    summary = {
        "threshold": threshold,
        "net_speech_s_median": report["test_net_speech_s_median"],
        "eer_percent": backend["eer_percent"],
        "fmr_percent": backend["fmr_percent"],
        "fnmr_percent": backend["fnmr_percent"],
        "bands": bands,
    }
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
