"""The door's wall clock stepped while a challenge waits for its answer (NTP syncing a Pi
that booted with fake-hwclock's time, an admin). The daemon loop runs on real audio
(espeak-ng) with stand-in stages; its wall clock and its never-stepped clock are injected
and follow the audio, so the result does not depend on how fast this machine is."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

from service_standins import (
    MelEmbedder,
    RecordingLink,
    attempt_recording,
    espeak,
    silence,
    standin_stages,
    write_wav,
)

from voxgate.audio.file import FileSource
from voxgate.config import VoxgateConfig
from voxgate.service.loop import Daemon
from voxgate.service.notify import Notifier

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="needs espeak-ng for test speech"
)
T = 1_790_000_000.0
HOUR = 3600.0


def _door(
    tmp_path: Path, path: Path, link: RecordingLink, step_s: float, **challenge: object
) -> Daemon:
    """A daemon whose wall clock steps by `step_s` once a challenge has been issued."""
    me = MelEmbedder().embed(espeak("three, eight, two, five, six", voice="en+m3"))
    stages = standin_stages(FileSource(path), {"me": me}, link)
    cfg = VoxgateConfig.model_validate(
        {
            "data_dir": str(tmp_path / "data"),
            "audio": {"source": "file", "path": str(path)},
            "metrics": {"enabled": False},
            "challenge": challenge,
        }
    )
    d = Daemon(cfg, stage_factory=lambda c: stages, notifier=Notifier({}))
    stepped = [0.0]

    def audio_s() -> float:
        return d.endpointer.time_s if d.endpointer else 0.0

    def wall() -> float:
        if d.attempt is not None and d.attempt.challenge is not None:
            stepped[0] = step_s  # and it stays stepped
        return T + audio_s() + stepped[0]

    d.clock, d.elapsed = wall, audio_s
    return d


def _events(tmp_path: Path) -> list[str]:
    lines = (tmp_path / "data" / "audit.jsonl").read_text().splitlines()
    return [json.loads(x)["event"] for x in lines]


def test_a_clock_stepped_forward_during_the_challenge_does_not_expire_it(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Seen: NTP stepping the clock an hour forward just after the challenge was issued
    expired it at once (attempt_expired); the right person's answer was taken for a new
    wake phrase and no decision came. An answer begun before the next tick was denied as
    late (challenge_expired)."""
    link = RecordingLink()
    d = _door(tmp_path, attempt_recording(tmp_path_factory.mktemp("audio")), link, HOUR)
    assert d.run() == 0
    (decision,) = link.of("decision")
    assert (decision["outcome"], decision["reasons"]) == ("granted", []), decision


def test_a_clock_stepped_back_during_the_challenge_does_not_keep_it_open(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Seen: with the clock set back an hour after the challenge was issued, the unanswered
    challenge stayed open an hour (timeout_s: 2): anyone could answer it meanwhile."""
    audio = tmp_path_factory.mktemp("audio")
    path = write_wav(
        audio / "no_answer.wav", np.concatenate([silence(0.5), espeak("hello there"), silence(4)])
    )
    link = RecordingLink()
    d = _door(tmp_path, path, link, -HOUR, timeout_s=2)
    assert d.run() == 0
    assert link.of("state")[:4] == ["idle", "listening", "challenge", "idle"]
    assert _events(tmp_path)[1] == "attempt_expired"
