"""Speech for the fleet/API tests: espeak-ng voices (a real TTS, no recordings in the repo)."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

ESPEAK = shutil.which("espeak-ng")
DIGITS = [
    "three one four one five nine two six five three",
    "two seven one eight two eight one eight two eight",
    "one four one four two one three five six two",
    "nine eight seven six five four three two one zero",
]


def say(text: str, voice: str) -> np.ndarray:
    """`text` spoken by espeak-ng `voice`, as 16 kHz mono int16."""
    assert ESPEAK is not None
    wav = subprocess.run(
        [ESPEAK, "-v", voice, "-s", "150", "--stdout", text], capture_output=True, check=True
    ).stdout
    audio, rate = sf.read(io.BytesIO(wav), dtype="float32")
    assert rate == 22050
    return (resample_poly(audio, 320, 441) * 0.7 * 32767).astype(np.int16)


def write_wav(path: Path, pcm: np.ndarray) -> Path:
    sf.write(path, pcm, 16000, subtype="PCM_16")
    return path
