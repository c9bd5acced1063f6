"""The spoken challenge through the real daemon: `voxgate run --file` on espeak-ng audio (a
wake phrase, then the answer), real stages, decisions read from the audit log."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voxgate.audio.file import read_audio
from voxgate.cli import main

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
REPO = Path(__file__).resolve().parents[2]
RATE = 16000


def say(text: str, tmp: Path) -> np.ndarray:
    wav = tmp / "say.wav"
    subprocess.run(["espeak-ng", "-v", "en", "-s", "150", "-w", str(wav), text], check=True)
    return read_audio(wav)


def quiet(seconds: float) -> np.ndarray:
    return np.random.default_rng(1).normal(0, 10, int(seconds * RATE)).astype(np.int16)


def run_door(tmp: Path, config: str, parts: list[np.ndarray]) -> list[dict]:
    """`voxgate run --file` on the parts played one after another; the decisions audited."""
    key = tmp / "vp.key"
    if not key.exists():
        assert main(["users", "init-key", str(key)]) == 0
    cfg = tmp / "voxgate.yaml"
    cfg.write_text(
        f"data_dir: {tmp / 'data'}\naudio: {{source: stdin}}\nmqtt: {{enabled: false}}\n"
        f"speaker: {{key_file: {key}}}\n{config}"
    )
    audio = tmp / "attempt.wav"
    sf.write(audio, np.concatenate(parts), RATE, subtype="PCM_16")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    env["PYTHONPATH"] = str(REPO / "daemon")
    cmd = [sys.executable, "-m", "voxgate", "run", "-c", str(cfg), "--file", str(audio)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (tmp / "data" / "audit.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("event") == "decision"]


def test_a_monologue_cut_by_the_vad_is_too_long_not_a_wrong_answer(tmp_path: Path) -> None:
    """The VAD cuts speech at vad.max_utterance_ms (15 s by default, below stt.max_answer_s),
    so a monologue never reached the too_long check: its first piece was decoded (4.4 s
    after the cut for 15 s of speech) and denied as a wrong answer, counted by the lockout.
    An answer the VAD had to cut is now too long: a retry, nothing decoded."""
    wake = say("hello door", tmp_path)
    talk = say(
        "The quick brown fox jumps over the lazy dog near the old river bank, and then it "
        "runs back home across the wide green fields while the farmer watches.",
        tmp_path,
    )
    assert len(talk) > 6 * RATE
    decisions = run_door(
        tmp_path,
        "challenge: {mode: passphrase, passphrase: open sesame}\nvad: {max_utterance_ms: 5000}\n",
        [quiet(0.5), wake, quiet(1.5), talk, quiet(1.5)],
    )
    first = decisions[0]
    assert "liveness_retry" in first["reasons"], first
    assert "liveness_failed" not in first["reasons"], first
