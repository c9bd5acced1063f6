"""`voxgate enroll` takes only names the API and the MQTT commands can reach again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voxgate.cli import main


@pytest.mark.usefixtures("no_secret_env")
@pytest.mark.parametrize("name", ["a/b", "front\\door"])
def test_a_name_with_a_path_separator_is_refused(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # `voxgate enroll a/b --from ...` enrolled 'a/b'; the admin API (GET/DELETE
    # /api/v1/users/a%2Fb: 404, the path is split at the decoded '/') and the MQTT commands
    # (which refuse / and \) could then neither export nor erase that user.
    key = tmp_path / "voiceprint.key"
    assert main(["users", "init-key", str(key)]) == 0
    cfg = tmp_path / "voxgate.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'data'}\nspeaker: {{key_file: {key}}}\n")
    wav = tmp_path / "take.wav"
    sf.write(wav, np.zeros(16000, np.int16), 16000, subtype="PCM_16")
    assert main(["enroll", name, "-c", str(cfg), "--from", str(wav)]) == 1
    err = capsys.readouterr().err
    assert "must not contain / or \\" in err
    assert main(["users", "list", "-c", str(cfg)]) == 0
    assert name not in capsys.readouterr().out
