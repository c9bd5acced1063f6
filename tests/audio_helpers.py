"""Real audio for tests: espeak-ng speech (always available in CI) and shared recordings."""

from __future__ import annotations

import io
import shutil
import subprocess
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voxgate.audio.convert import float_to_int16, resample
from voxgate.audio.file import read_audio

# An ALSA capture device that reads raw 16-bit PCM from the file {raw} (ALSA's `file` PCM):
# the real PortAudio/ALSA path, with no microphone. Loaded through ALSA_CONFIG_PATH.
ALSA_CONF = """\
</usr/share/alsa/alsa.conf>
pcm.voxgate_test_mic {{
  type file
  slave.pcm "null"
  file "/dev/null"
  infile "{raw}"
  format "raw"
  hint {{ show on description "voxgate test microphone" }}
}}
"""


def espeak(text: str, path: Path, voice: str = "en") -> np.ndarray:
    """Synthesize text to a WAV with espeak-ng and return it as 16 kHz int16."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    subprocess.run(
        ["espeak-ng", "-v", voice, "-w", str(path), text], check=True, capture_output=True
    )
    return read_audio(path)


@cache
def speak(text: str, voice: str | None = None) -> np.ndarray:
    """espeak-ng speech at 150 words a minute, as 16 kHz int16, without a file (cached:
    the same text is synthesised once); `voice` None is espeak-ng's default voice."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    chosen = [] if voice is None else ["-v", voice]
    wav = subprocess.run(
        ["espeak-ng", *chosen, "-s", "150", "--stdout", text], check=True, capture_output=True
    ).stdout
    data, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return float_to_int16(resample(data, rate))


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(16000 * seconds), dtype=np.int16)
