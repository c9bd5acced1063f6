""" "oh" for zero with a speech engine (phonemes by default), on espeak-ng voices (no
recorded "oh" is in ../shared/data: FSDD and Speech Commands say "zero").

Random 5-digit prompts that hold a 0, each said by every voice in three ways: reading 0
as "zero" and as "oh" (genuine), and with a "two" where the prompt has its first 0 (the
digit "oh" is easiest to mistake for: "two" ends in the same vowel), scored against the
prompt (wrong).

Run:  PYTHONPATH=daemon python benchmarks/bench_oh.py --prompts 20      (about 2 minutes)
      PYTHONPATH=daemon python benchmarks/bench_oh.py --backend pocketsphinx
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from voxgate.audio.file import read_audio
from voxgate.config.stt import SttConfig
from voxgate.stt import DIGIT_WORDS, digits_to_words, load_recognizer

VOICES = ("en", "en-us", "en+f3", "en+m3")
PAD = np.zeros(4800, np.int16)


def say(words: list[str], voice: str) -> np.ndarray:
    with tempfile.TemporaryDirectory() as d:
        wav = Path(d) / "a.wav"
        cmd = ["espeak-ng", "-v", voice, "-s", "150", "-w", str(wav), ", ".join(words)]
        subprocess.run(cmd, check=True)
        return np.concatenate([PAD, read_audio(wav), PAD])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--backend", default="phonemes", choices=["phonemes", "pocketsphinx"])
    args = ap.parse_args()
    rng = random.Random(args.seed)
    rec = load_recognizer(SttConfig(backend=args.backend))
    genuine = wrong = zero = n = 0
    misses: list[str] = []
    for _ in range(args.prompts):
        while True:
            prompt = "".join(rng.choice("0123456789") for _ in range(5))
            if "0" in prompt:
                break
        said_zero = [DIGIT_WORDS[int(c)] for c in prompt]
        said_oh = ["oh" if c == "0" else DIGIT_WORDS[int(c)] for c in prompt]
        first = prompt.index("0")
        said_two = [DIGIT_WORDS[int(c)] for c in prompt]
        said_two[first] = "two"
        for voice in VOICES:
            n += 1
            zero += rec.check_prompt(say(said_zero, voice), digits_to_words(prompt)).ok
            res = rec.check_prompt(say(said_oh, voice), digits_to_words(prompt))
            genuine += res.ok
            if not res.ok:
                misses.append(f"{voice} {prompt} heard {res.transcript!r} {res.score:.2f}")
            wrong += rec.check_prompt(say(said_two, voice), digits_to_words(prompt)).ok
    report = {
        "backend": args.backend,
        "voices": list(VOICES),
        "answers": n,
        "zero_accepted": zero,
        "oh_accepted": genuine,
        "two_for_zero_accepted": wrong,
        "oh_denied": misses,
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
