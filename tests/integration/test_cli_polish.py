"""CLI defects found using voxgate for real (espeak-ng speech, the shipped model, real files)."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from voxgate.cli import main

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")


def test_enroll_summary_and_error_show_the_same_speech_seconds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("voxgate.embedding")
    from voxgate.commands.speaker_common import read_file
    from voxgate.config import load_config
    from voxgate.quality import assess

    key = tmp_path / "voiceprint.key"
    assert main(["users", "init-key", str(key)]) == 0
    cfg = tmp_path / "voxgate.yaml"
    cfg.write_text(
        f"data_dir: {tmp_path / 'data'}\nspeaker:\n  key_file: {key}\n"
        "  enroll_min_speech_s: 60\n  enroll_min_takes: 3\n"
    )
    files = []
    # 1.11 + 1.65 + 1.80 = 4.56 s of speech here: rounds up, floors down. No take says
    # another's words in order: espeak says them with the same samples, and enrollment
    # counts such a take as the same recording (`duplicate`; "1 2 3 4", "1 2 3 4 5" were).
    texts = ["one two three four", "seven zero one three five", "eight seven five four three zero"]
    for n, text in enumerate(texts):
        f = tmp_path / f"take{n}.wav"
        subprocess.run(["espeak-ng", "-v", "en", "-w", str(f), text], check=True)
        files.append(str(f))
    vad = load_config(cfg).vad
    total = sum(assess(read_file(f), vad).speech_s for f in files)
    assert f"{total:.1f}" != f"{math.floor(total * 10) / 10:.1f}", total  # the case at hand
    capsys.readouterr()
    assert main(["enroll", "zed", "--from", *files, "-c", str(cfg)]) == 1
    got = capsys.readouterr()
    summary = re.search(r"takes passed their checks, (\d+\.\d) s of net speech", got.out)
    error = re.search(r"need 60 s of net speech, have (\d+\.\d) s", got.err)
    assert summary and error, got
    assert summary.group(1) == error.group(1) == f"{math.floor(total * 10) / 10:.1f}"


def test_a_take_just_under_the_snr_level_is_not_printed_at_the_level(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Found in `voxgate demo`'s enrollment: "take 12 ... SNR  10 dB ... REJECTED: too noisy
    # (SNR without pauses to measure; needs 10 dB ...)" beside "take 6 ... SNR  10 dB ... ok":
    # 9.7 dB rounded to the level it missed. `voxgate verify` printed its SNR the same way.
    pytest.importorskip("voxgate.embedding")
    import numpy as np
    import soundfile as sf

    from voxgate.audio.file import read_audio
    from voxgate.quality import assess

    said = tmp_path / "said.wav"
    subprocess.run(
        ["espeak-ng", "-v", "en+m3", "-w", str(said), "seven three nine one four"], check=True
    )
    pcm, rate = sf.read(said, dtype="float32")
    from scipy.signal import resample_poly

    s = resample_poly(pcm, 16000, rate) * 32767
    loud = np.nonzero(np.abs(s) > 300)[0]
    s = s[loud[0] : loud[-1] + 1]  # cut to its speech: SNR without pauses, level 10 dB
    noise = np.random.default_rng(7).normal(0, 1, len(s))
    # The noise level that puts the SNR in [9.5, 10): rounds to 10, misses 10. Measured on
    # the file as the commands read it (read_audio removes DC: 0.2 dB more SNR here).
    noisy = tmp_path / "noisy.wav"
    found = False
    for gain in np.linspace(900, 1300, 81):
        pcm16 = np.clip(s + gain * noise, -32768, 32767).astype(np.int16)
        sf.write(noisy, pcm16, 16000, subtype="PCM_16")
        q = assess(read_audio(noisy))
        if 9.5 <= q.snr_db < 9.95 and not q.snr_from_pauses:
            found = True
            break
    assert found
    want = f"SNR {math.floor(q.snr_db * 10) / 10:.1f} dB"

    key = tmp_path / "voiceprint.key"
    assert main(["users", "init-key", str(key)]) == 0
    cfg = tmp_path / "voxgate.yaml"
    cfg.write_text(
        f"data_dir: {tmp_path / 'data'}\nspeaker:\n  key_file: {key}\n  min_snr_db_no_pauses: 10\n"
    )
    capsys.readouterr()
    assert main(["enroll", "zed", "--from", str(noisy), "-c", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert "REJECTED: too noisy" in out and "needs 10 dB" in out, out
    assert want in out and "SNR  10 dB" not in out, out
    main(["verify", "zed", str(noisy), "-c", str(cfg)])
    out = capsys.readouterr().out
    assert f"{want} without pauses to measure (needs 10:" in out, out
