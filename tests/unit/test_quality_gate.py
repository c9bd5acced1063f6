"""The quality gate's noise rule: an SNR measured in the recording's pauses is held to
speaker.min_snr_db; one estimated from the quietest frames (a file cut to its speech, no
pauses) to the lower speaker.min_snr_db_no_pauses, since that estimate reads clean speech
at ~20 dB. Real speech from espeak-ng and seeded white noise; no shared data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.audio_helpers import espeak
from voxgate.config import VoxgateConfig, parse_config
from voxgate.config.audio import VadConfig
from voxgate.config.speaker import SpeakerConfig
from voxgate.enrollment import take_problem
from voxgate.quality import Quality, assess, gate_reasons, leaves_pauses, too_noisy
from voxgate.vad import segment

TEXT = "three nine one four, seven two eight five"


def _cut(tmp_path: Path) -> np.ndarray:
    """Clean speech cut to its first and last loud sample, as protocol files are."""
    pcm = espeak(TEXT, tmp_path / "speech.wav", "en+m3")
    loud = np.flatnonzero(np.abs(pcm) > 300)
    return pcm[loud[0] : loud[-1] + 1]


def _in_room(speech: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    """`speech` with 1 s of room either side and white noise throughout, at `snr_db` over
    the speech's mean power (the cut speech has no pauses to dilute it)."""
    placed = np.concatenate([np.zeros(16000), speech.astype(np.float64), np.zeros(16000)])
    noise = np.random.default_rng(seed).normal(0, 1, len(placed))
    gain = np.sqrt(np.mean(speech.astype(np.float64) ** 2) / 10 ** (snr_db / 10))
    return np.round(placed + gain * noise).clip(-32768, 32767).astype(np.int16)


def _gate(q: Quality, cfg: SpeakerConfig) -> tuple[str, ...]:
    """The gate's reasons at `cfg`'s levels, as Scorer.verify applies them."""
    return gate_reasons(
        q, cfg.min_speech_s, cfg.min_snr_db, cfg.min_snr_db_no_pauses, max_clipped=cfg.max_clipped
    )


def test_a_noisy_attempt_with_pauses_is_retried_clean_cut_speech_is_not(tmp_path: Path) -> None:
    cfg = SpeakerConfig(min_snr_db=26.0, min_snr_db_no_pauses=5.0)
    cut = _cut(tmp_path)
    for snr in (20.0, 12.0):  # between the two levels: scored as if clean by a 5 dB gate
        q = assess(_in_room(cut, snr))
        assert q.snr_from_pauses and abs(q.snr_db - snr) < 2.0
        assert _gate(q, cfg) == ("too_noisy",)
    # The same speech in a quiet room passes.
    q = assess(_in_room(cut, 40.0))
    assert q.snr_from_pauses and q.snr_db > 35 and _gate(q, cfg) == ()
    # Cut to its speech, clean: no pauses, so the quietest frames are taken for the noise and
    # the estimate reads far below the truth, under 26 dB; it must not be retried for that.
    q = assess(cut)
    assert not q.snr_from_pauses and q.snr_db < cfg.min_snr_db
    assert _gate(q, cfg) == ()


def test_a_few_quiet_frames_inside_clean_speech_are_not_taken_for_the_room(
    tmp_path: Path,
) -> None:
    """espeak's "one ... six" has a handful of live frames the VAD calls non-speech (the
    fricatives' tails): their median is quiet speech, and the SNR read from them 15 dB.
    Fewer than PAUSE_S of such frames is no room to measure: the lower level applies."""
    cfg = SpeakerConfig(min_snr_db=26.0, min_snr_db_no_pauses=5.0)
    pcm = espeak("one two three four five six", tmp_path / "six.wav", "en")
    q = assess(pcm)
    assert q.snr_db < 20 and not q.snr_from_pauses
    assert _gate(q, cfg) == ()
    assert take_problem(q, SpeakerConfig(enroll_min_snr_db=26.0)) is None


def test_grossly_noisy_cut_speech_is_still_retried(tmp_path: Path) -> None:
    cfg = SpeakerConfig(min_snr_db=26.0, min_snr_db_no_pauses=5.0)
    cut = _cut(tmp_path)
    noise = np.random.default_rng(1).normal(0, 1, len(cut))
    gain = np.sqrt(np.mean(cut.astype(np.float64) ** 2) / 10 ** (0 / 10))
    q = assess(np.round(cut + gain * noise).clip(-32768, 32767).astype(np.int16))
    assert not q.snr_from_pauses and q.snr_db < 5.0
    assert "too_noisy" in _gate(q, cfg)


def test_a_clipped_attempt_is_retried_a_few_clipped_peaks_are_not(tmp_path: Path) -> None:
    """A hot microphone (the speech 16 times louder, saturated at full scale) clips a large
    share of the samples; such genuine attempts were scored and mostly denied (no_match,
    counted by the lockout: benchmarks/clip_gate.py). They are a retry, `clipped`; the same
    speech at its own level is not, and neither is one with a few clipped peaks."""
    cfg = SpeakerConfig()
    room = _in_room(_cut(tmp_path), 40.0)
    q = assess(room)
    assert q.clipped == 0 and _gate(q, cfg) == ()
    hot = np.clip(room.astype(np.int32) * 16, -32768, 32767).astype(np.int16)
    q = assess(hot)
    assert q.clipped > 0.01 and _gate(q, cfg) == ("clipped",)
    # Five peaks flattened over 4 samples each: 20 samples, under the level of them.
    peaks = room.copy()
    for start in np.linspace(16000, len(room) - 16000, 5).astype(int):
        peaks[start : start + 4] = 32767
    q = assess(peaks)
    assert 0 < q.clipped < cfg.max_clipped and _gate(q, cfg) == ()
    # The level is the setting's: 0 retries any clipped run, 1 none.
    assert _gate(q, SpeakerConfig(max_clipped=0.0)) == ("clipped",)
    assert _gate(assess(hot), SpeakerConfig(max_clipped=1.0)) == ()


def test_each_level_applies_to_its_kind_of_estimate() -> None:
    def q(snr: float, pauses: bool) -> Quality:
        return Quality(3.0, 2.5, snr, pauses, 0.0)

    assert too_noisy(q(15.0, True), 26.0, 5.0) and not too_noisy(q(15.0, False), 26.0, 5.0)
    assert too_noisy(q(4.0, False), 26.0, 5.0) and not too_noisy(q(27.0, True), 26.0, 5.0)
    # Enrollment takes: the same rule with the enrollment levels.
    cfg = SpeakerConfig(enroll_min_snr_db=26.0, enroll_min_snr_db_no_pauses=10.0)
    assert take_problem(q(20.0, True), cfg) == "too_noisy"
    assert take_problem(q(20.0, False), cfg) is None
    assert take_problem(q(8.0, False), cfg) == "too_noisy"


def test_a_live_utterance_without_pauses_is_too_noisy_but_the_same_file_is_not(
    tmp_path: Path,
) -> None:
    """The door's utterance always has pre-roll and hangover: when none of it is left as
    pauses, the VAD took the room's noise for speech. At 8 dB of white noise it calls every
    frame speech, and the quietest-frames estimate (5.6 dB) clears the 5 dB no-pauses level,
    so the door scored it (and nearly always denied it, a counted failure). 8 dB is the middle
    of the levels where both hold (7.5 to 8.25 dB for seeds 0-3); at 9 dB the VAD already
    finds 0.24 to 0.81 s of non-speech, depending on the seed."""
    cfg = SpeakerConfig(min_snr_db=26.0, min_snr_db_no_pauses=5.0)
    cut = _cut(tmp_path)
    room = _in_room(cut, 8.0)
    (utt,) = segment(room, VadConfig())
    live, as_file = assess(utt.pcm, live=True), assess(utt.pcm)
    assert len(utt.pcm) >= len(room) - 480  # the whole recording: noise taken for speech
    assert live.nonspeech_s == 0.0  # every frame is speech to the VAD: the case under test
    assert not live.snr_from_pauses and 5.0 < live.snr_db < 26.0
    assert _gate(live, cfg) == ("too_noisy",)
    assert _gate(as_file, cfg) == ()
    # At any no-pauses level: there is no noise measurement to hold to a level.
    assert too_noisy(live, 26.0, -10.0) and not too_noisy(as_file, 26.0, -10.0)
    takes = SpeakerConfig(enroll_min_snr_db_no_pauses=5.0)
    assert take_problem(live, takes) == "too_noisy" and take_problem(as_file, takes) is None
    # A live utterance with its pauses is held to min_snr_db, as before.
    (utt,) = segment(_in_room(cut, 40.0), VadConfig())
    q = assess(utt.pcm, live=True)
    assert q.snr_from_pauses and _gate(q, cfg) == ()
    # The door applies the rule only where its hangover alone leaves those pauses.
    assert leaves_pauses(VadConfig()) and not leaves_pauses(VadConfig(hangover_ms=300))
    # A microphone chain that outputs digital silence around the words (a noise suppressor):
    # its pre-roll and hangover are non-speech, a silent room, not noise taken for speech.
    (utt,) = segment(np.concatenate([np.zeros(16000), cut, np.zeros(16000)]), VadConfig())
    q = assess(utt.pcm, live=True)
    assert not q.snr_from_pauses and q.nonspeech_s >= 0.45
    assert _gate(q, cfg) == ()


def _problems(text: str) -> list[str]:
    from voxgate.config import ConfigError

    with pytest.raises(ConfigError) as info:
        parse_config(text, "door.yaml")
    return info.value.problems


def test_no_pauses_levels_are_validated() -> None:
    cfg = parse_config("speaker:\n  min_snr_db: 30\n  min_snr_db_no_pauses: 8\n")
    assert (cfg.speaker.min_snr_db, cfg.speaker.min_snr_db_no_pauses) == (30, 8)
    assert VoxgateConfig().speaker.min_snr_db_no_pauses == 5.0
    assert VoxgateConfig().speaker.enroll_min_snr_db_no_pauses == 10.0
    (msg,) = _problems("speaker:\n  min_snr_db_no_pauses: 61\n")
    assert msg.startswith("line 2: speaker.min_snr_db_no_pauses:") and "60" in msg
    (msg,) = _problems("speaker:\n  enroll_min_snr_db_no_pauses: -11\n")
    assert msg.startswith("line 2: speaker.enroll_min_snr_db_no_pauses:") and "-10" in msg
    # A higher level for the quietest-frames estimate than for pauses would retry clean files.
    (msg,) = _problems("speaker:\n  min_snr_db: 10\n  min_snr_db_no_pauses: 12\n")
    assert "min_snr_db_no_pauses must not be above speaker.min_snr_db" in msg
    (msg,) = _problems("speaker:\n  enroll_min_snr_db: 20\n  enroll_min_snr_db_no_pauses: 21\n")
    assert "enroll_min_snr_db_no_pauses must not be above speaker.enroll_min_snr_db" in msg


def test_silence_or_speech_too_quiet_to_hear_is_too_little_speech_not_too_noisy(
    tmp_path: Path,
) -> None:
    """With no speech found the SNR is not measured (it reads 0 dB), and `voxgate verify`
    on a silent file, or on speech 60 dB too quiet (a muted microphone, the gain turned
    down), answered "reasons: too_little_speech, too_noisy": the person went looking for
    noise in a quiet room. Found walking the CLI with an all-zero WAV."""
    cfg = SpeakerConfig()
    quiet = np.round(_cut(tmp_path) / 1000).astype(np.int16)
    for pcm in (np.zeros(48000, np.int16), np.concatenate([np.zeros(16000, np.int16), quiet])):
        q = assess(pcm)
        assert q.speech_s == 0 and q.snr_db == 0
        assert _gate(q, cfg) == ("too_little_speech",)
        assert take_problem(q, cfg) == "too_short"
    # Noise the VAD calls speech is still too noisy, also when it is not speech enough.
    hiss = np.random.default_rng(1).normal(0, 3000, 12000).clip(-32768, 32767).astype(np.int16)
    q = assess(hiss)
    assert 0 < q.speech_s < 1 and _gate(q, cfg) == (
        "too_little_speech",
        "too_noisy",
    )


def test_a_quiet_microphone_reads_the_snr_and_speech_of_a_loud_one(tmp_path: Path) -> None:
    """An SNR is a ratio, but the gate's VAD missed quiet speech: a take 35 dB quieter read
    its words as pause noise and was refused as too noisy, for a quiet microphone, not a
    noisy room. The VAD now hears the recording raised to -30 dBFS (quality.HEAR_DBFS);
    the powers compared stay the recording's own."""
    cfg = SpeakerConfig()
    cut = _cut(tmp_path)
    loud = assess(cut)
    quiet = assess(np.round(cut * 10 ** (-35 / 20)).astype(np.int16))
    assert take_problem(loud, cfg) is None and take_problem(quiet, cfg) is None
    assert abs(quiet.snr_db - loud.snr_db) < 1 and abs(quiet.speech_s - loud.speech_s) < 0.1


@pytest.mark.shared
def test_real_speech_turned_down_30_db_is_not_called_noisy(shared_data: Path) -> None:
    """vcc2018_eval's first 60 test recordings 30 dB quieter (a far or quiet microphone): the
    gate's verdicts are the ones at their own level, within two (at 28 dB: 4 and 5 retried).
    Before, 16 were retried instead of 4: 8 read too noisy, 10 too little speech
    (benchmarks/quiet_gate.py has the whole set and other gains)."""
    from voxgate.evaluation import load_recording, read_set

    cfg = SpeakerConfig()
    es = read_set(shared_data / "vcc2018_eval")
    tests = sorted({r for _, r, _ in es.trials})[:60]
    own = quiet = 0
    for rec in tests:
        pcm = load_recording(es.root, rec)
        own += bool(_gate(assess(pcm), cfg))
        quiet += bool(_gate(assess(np.round(pcm * 10 ** (-30 / 20)).astype(np.int16)), cfg))
    assert quiet - own <= 2, (own, quiet)


def test_an_snr_just_below_zero_is_not_printed_as_minus_zero() -> None:
    # Found in review: a take with real noise mixed in at about 0 dB read "SNR  -0 dB" in
    # `voxgate enroll` and `voxgate verify` (format "{:.0f}" of -0.3).
    from voxgate.quality import db_text

    assert db_text(-0.3) == "0" and db_text(0.3) == "0"
    assert db_text(-0.6) == "-1" and db_text(25.5) == "26" and db_text(26.4) == "26"
    assert f"{db_text(-0.3):>3}" == "  0"


def test_an_snr_is_not_rounded_across_the_level_it_is_held_to() -> None:
    # "SNR 10 dB ... REJECTED: too noisy (... needs 10 dB)": 9.7 dB rounded onto its level.
    from voxgate.quality import db_text

    assert db_text(9.7, 10) == "9.7" and db_text(9.96, 10) == "9.9"
    assert db_text(10.45, 10.4) == "10.5" and db_text(26.4, 26.5) == "26"
    assert db_text(10.2, 10) == "10" and db_text(31.7, 26) == "32"  # same side: whole dB
    assert db_text(-0.3, 1) == "0"


def test_a_clipped_share_is_not_rounded_onto_the_level_it_is_held_to() -> None:
    # Found in review: at the 0.03 % level a take clipped 0.031 % read "clipped 0.03 % of
    # samples (at most 0.03 %)" and was retried.
    from voxgate.quality import clipped_text

    assert clipped_text(0.00031, 0.0003) == "0.031"
    assert clipped_text(0.0003004, 0.0003) == "0.03004"
    assert clipped_text(0.0003 + 1e-12, 0.0003) == "0.030001"
    assert clipped_text(0.000296, 0.0003) == "0.03"  # at the level: allowed, reads so
    assert clipped_text(0.00294, 0.003) == "0.29" and clipped_text(0.0025, 0.0003) == "0.25"
    assert clipped_text(0.0, 0.0) == "0.00" and clipped_text(0.00001, 0.0) == "0.001"
