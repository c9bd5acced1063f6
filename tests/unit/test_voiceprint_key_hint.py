"""The error for a missing voiceprint key says what to do next, including where the key goes."""

from __future__ import annotations

from pathlib import Path

import pytest

from voxgate.config.speaker import SpeakerConfig
from voxgate.voiceprints import StoreError, load_key


@pytest.mark.usefixtures("no_secret_env")
def test_no_key_configured_names_the_setting_to_point_at_it() -> None:
    # README: `voxgate users init-key /etc/voxgate/voiceprint.key`, then `voxgate enroll
    # alice`. The enroll answered "create a key with: voxgate users init-key FILE", the step
    # just done, and not that speaker.key_file must name the file.
    with pytest.raises(StoreError) as err:
        load_key(SpeakerConfig())
    assert "voxgate users init-key FILE" in str(err.value)
    assert "speaker.key_file" in str(err.value)


@pytest.mark.usefixtures("no_secret_env")
def test_a_configured_key_file_that_is_missing_is_the_file_to_create(tmp_path: Path) -> None:
    path = tmp_path / "voiceprint.key"
    with pytest.raises(StoreError) as err:
        load_key(SpeakerConfig(key_file=path))
    assert f"voxgate users init-key {path}" in str(err.value)
