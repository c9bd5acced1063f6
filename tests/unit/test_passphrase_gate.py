"""Which net-speech minimum the quality gate applies to an answer (service.attempt)."""

from __future__ import annotations

import time

from voxgate.challenge import new_challenge
from voxgate.config import VoxgateConfig
from voxgate.service.attempt import Attempt, _min_speech_s
from voxgate.stt.base import NO_SPEECH, PROMPT_MISMATCH, TOO_SHORT, LivenessResult

OK = LivenessResult(True, -1.0, -4.0, None, None, "phonemes")


def _attempt(cfg: VoxgateConfig) -> Attempt:
    return Attempt(None, new_challenge(cfg.challenge, time.time()))


def test_only_a_passphrase_heard_in_full_gets_the_lower_minimum() -> None:
    phrase = VoxgateConfig.model_validate(
        {"challenge": {"mode": "passphrase", "passphrase": "open the gate"}}
    )
    assert _min_speech_s(_attempt(phrase), OK, phrase) == 0.6
    for reason in (PROMPT_MISMATCH, NO_SPEECH, TOO_SHORT):
        failed = LivenessResult(False, 0.0, -4.0, None, reason, "checks")
        assert _min_speech_s(_attempt(phrase), failed, phrase) is None, reason
    assert _min_speech_s(_attempt(phrase), None, phrase) is None
    digits = VoxgateConfig()
    assert _min_speech_s(_attempt(digits), OK, digits) is None  # digits keep the usual gate
    # Never stricter than speaker.min_speech_s.
    low = phrase.model_copy(
        update={"speaker": phrase.speaker.model_copy(update={"min_speech_s": 0.4})}
    )
    assert _min_speech_s(_attempt(low), OK, low) == 0.4
