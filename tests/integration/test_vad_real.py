"""VAD on real recordings from ../shared/data, padded with known silence (skips without it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.bench_vad import measure, pick
from voxgate.config.audio import VadConfig


@pytest.mark.shared
@pytest.mark.parametrize("name", ["speechcommands_v001_sample", "vcc2018_eval", "resemblyzer_ls"])
def test_padding_is_silence_and_speech_reaches_later_stages(shared_data: Path, name: str) -> None:
    a = measure(pick(shared_data, name, 12), None, VadConfig())
    assert a.recordings == 12
    assert a.false_alarm_rate < 0.03  # padding frames called speech
    assert a.hit_rate > 0.85  # active frames called speech
    assert a.covered_rate > 0.9  # active frames inside an emitted utterance
