"""A careful speaker pauses between the digits of the answer: real FSDD recordings of an
enrolled speaker, answered through `voxgate run` (stdin, real stages, real mosquitto for
the challenge). At vad.hangover_ms (500 ms) a pause ended the answer: its first digits were
judged as the whole answer (denied, liveness_failed, counted by the lockout) and the next
digit woke the door again, so nobody who paused 0.6 s or more could open it."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import yaml
from answer_door import Outcome, PauseDoor, wake_fields
from mqtt_helpers import wait_until

from tests.audio_helpers import espeak
from voxgate.cli import main
from voxgate.config.stt import ChallengeConfig

SPEAKER = "george"
RATE = 16000


@pytest.fixture(scope="module")
def door(
    shared_data: Path, tmp_path_factory: pytest.TempPathFactory, mosquitto_available: None
) -> Iterator[PauseDoor]:
    d = PauseDoor(tmp_path_factory.mktemp("pause"), shared_data / "fsdd", SPEAKER, {})
    yield d
    assert d.close() == 0, d.log()[-3000:]


def heard(got: Outcome) -> list[tuple[Any, ...]]:
    """What the door decided and heard for each piece of the attempt, and its other audit
    lines (an attempt_expired says the answer came after challenge.timeout_s)."""
    keys = ("outcome", "reasons", "liveness_prompt", "liveness_heard", "speech_s")
    return [tuple(d[k] for k in keys) for d in got.decisions] + [
        (e["event"],) for e in got.events or []
    ]


def answers_granted(
    door: PauseDoor, wakes: list[str], pause_s: float, rng: np.random.Generator, want: int
) -> None:
    """Attempts (one per wake) until `want` answers are granted. Which digits come up is
    the daemon's CSPRNG's choice, and about 1 answer in 100 of george's is misread by the
    door's own digit check whatever the pauses: so each attempt is held to that check run
    on its whole answer at once (PauseDoor.reads_as). Read as the challenge: granted, one
    decision. Misread: one decision too, denied for liveness (judged whole, not cut)."""
    granted = 0
    for wake in wakes:
        got = door.attempt(wake, pause_s, rng)
        summary = [(d["outcome"], d["reasons"]) for d in got.decisions]
        why = (got.challenge, heard(got), door.log()[-2000:])
        if door.reads_as(got):
            assert summary == [("granted", [])], why
            granted += 1
            if granted == want:
                return
        else:
            assert len(summary) == 1 and "liveness_failed" in summary[0][1], why
    raise AssertionError(f"only {granted} of {len(wakes)} answers were read as the challenge")


def test_an_answer_with_pauses_between_digits_is_granted(door: PauseDoor) -> None:
    """It failed once in about 7 CI runs (liveness_failed): george's answer for the digits
    drawn that time was misread by the digit check, as it is with short pauses too."""
    wakes = wake_fields(door.digits.root, SPEAKER)
    answers_granted(door, wakes[:4], 0.8, np.random.default_rng(11), want=2)


def test_a_pause_longer_than_answer_pause_ms_still_ends_the_answer(door: PauseDoor) -> None:
    """1.6 s of quiet (> challenge.answer_pause_ms, 1200 ms) ends the answer: nothing
    waits for ever. After a SIGHUP raising answer_pause_ms to 2500 ms, the same pauses are
    one answer again (the setting applies live)."""
    assert ChallengeConfig().answer_pause_ms == 1200
    wakes = wake_fields(door.digits.root, SPEAKER)
    rng = np.random.default_rng(12)
    cut = door.attempt(wakes[2], 1.6, rng)
    assert len(cut.decisions) > 1, cut.decisions
    assert cut.first["outcome"] != "granted", cut.decisions

    doc = yaml.safe_load(door.config.read_text())
    doc["challenge"]["answer_pause_ms"] = 2500
    door.config.write_text(yaml.safe_dump(doc))
    seen = door.log().count("config reloaded")
    os.kill(door.proc.pid, signal.SIGHUP)
    wait_until(lambda: door.log().count("config reloaded") > seen, 15, "the reload")
    answers_granted(door, wakes[3:6], 1.6, rng, want=1)


def test_guided_enrollment_keeps_a_take_said_with_pauses_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`voxgate enroll` without --from prompts digit strings and records each take to the
    end of speech: at vad.hangover_ms a pause between digits ended the take, so a careful
    speaker's take became single digits (each too short, or taken as the next take)."""
    # Other digits in each take: one synthetic take said three times is one recording, which
    # enrollment counts once (`duplicate`, test_the_same_recording_altered_counts_once).
    takes = [
        ["four", "seven", "one", "four", "seven"],
        ["two", "nine", "three", "two", "nine"],
        ["six", "eight", "five", "six", "eight"],
    ]
    said = {w: espeak(w, tmp_path / f"{w}.wav", "en+m3") for ws in takes for w in ws}
    tone = np.random.default_rng(0).normal(0, 3, 48000).astype(np.int16)
    parts: list[np.ndarray] = []
    for words in takes:
        take: list[np.ndarray] = []
        for w in words:
            take += [said[w], tone[: int(0.8 * RATE)]]
        parts += [tone[:RATE], *take[:-1], tone]
    mic = np.concatenate(parts)
    sf.write(tmp_path / "mic.wav", mic, RATE, subtype="PCM_16")
    assert main(["users", "init-key", str(tmp_path / "vp.key")]) == 0
    cfg = tmp_path / "voxgate.yaml"
    cfg.write_text(
        f"data_dir: {tmp_path / 'data'}\n"
        f"speaker: {{key_file: {tmp_path / 'vp.key'}, enroll_min_speech_s: 3, "
        "enroll_min_takes: 3}\n"
        f"audio: {{source: file, path: {tmp_path / 'mic.wav'}}}\n"
    )
    assert main(["enroll", "erin", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "3 of 3 takes used" in out and "enrolled erin" in out, out
