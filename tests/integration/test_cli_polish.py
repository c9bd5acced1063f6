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
    summary = re.search(r"takes used, (\d+\.\d) s of net speech", got.out)
    error = re.search(r"need 60 s of net speech, have (\d+\.\d) s", got.err)
    assert summary and error, got
    assert summary.group(1) == error.group(1) == f"{math.floor(total * 10) / 10:.1f}"
