"""Prompted enrollment takes that start with room noise: takes dropped, challenges passed.

espeak-ng reads prompted 5-digit takes (six voices, random rate and pitch, one voice per
enrollment); each take gets `--lead-s` of Gaussian noise at `--level-dbfs` in front, and
with `--under` the same noise under the whole take. The takes go through the same prompt
check and template cut as every enrollment path (stt.templates.checked_templates); then a
new 5-digit challenge, read cleanly in the same voice, is checked against its own prompt
(should pass) and against another random prompt (should fail).

    PYTHONPATH=daemon python benchmarks/enroll_room_noise.py [--lead-s 0.5] [--level-dbfs -70]
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from voxgate.audio.file import read_audio
from voxgate.challenge import enrollment_prompts
from voxgate.config.stt import SttConfig
from voxgate.stt import digits_to_words, load_recognizer
from voxgate.stt.templates import checked_templates

VOICES = ["en", "en-us", "en+m3", "en+f2", "en+f4", "en-gb-x-rp"]


def say(digits: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "a.wav"
        text = ", ".join(digits_to_words(digits))
        cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), text]
        subprocess.run(cmd, check=True)
        return read_audio(wav)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lead-s", type=float, default=0.5, help="noise before each take (s)")
    ap.add_argument("--level-dbfs", type=float, default=-70.0, help="noise level (dBFS RMS)")
    ap.add_argument("--under", action="store_true", help="noise under the whole take too")
    ap.add_argument("--enrollments", type=int, default=20)
    ap.add_argument("--takes", type=int, default=6, help="prompted takes per enrollment")
    args = ap.parse_args()
    if shutil.which("espeak-ng") is None:
        print("needs espeak-ng", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    pick = random.Random(0)
    cfg = SttConfig()
    rec = load_recognizer(cfg)
    amp = 32768 * 10 ** (args.level_dbfs / 20)
    dropped = no_templates = genuine = other = takes_total = 0
    for i in range(args.enrollments):
        voice = VOICES[i % len(VOICES)]
        speed, pitch = pick.randint(120, 180), pick.randint(30, 70)
        takes = []
        for prompt in enrollment_prompts(args.takes):
            speech = say(prompt, voice, speed + pick.randint(-10, 10), pitch)
            take = np.concatenate([np.zeros(int(16000 * args.lead_s)), speech]).astype(float)
            take[: int(16000 * args.lead_s)] += rng.standard_normal(int(16000 * args.lead_s)) * amp
            if args.under:
                take += rng.standard_normal(take.size) * amp
            takes.append((np.clip(np.round(take), -32768, 32767).astype(np.int16), prompt))
        bad, templates = checked_templates(takes, cfg.template_threshold)
        dropped += len(bad)
        takes_total += len(takes)
        if templates is None:
            no_templates += 1
            continue
        challenge = "".join(pick.choice("0123456789") for _ in range(5))
        wrong = "".join(pick.choice("0123456789") for _ in range(5))
        answer = say(challenge, voice, speed, pitch)
        genuine += rec.check_prompt(answer, digits_to_words(challenge), templates).ok
        other += rec.check_prompt(answer, digits_to_words(wrong), templates).ok
    n = args.enrollments
    print(
        f"noise {args.lead_s:g} s before each take at {args.level_dbfs:g} dBFS"
        f"{' and under it' if args.under else ''}: {n} enrollments, takes dropped "
        f"{dropped}/{takes_total}, enrollments without templates {no_templates}, "
        f"challenge accepted {genuine}/{n}, another prompt accepted {other}/{n}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
