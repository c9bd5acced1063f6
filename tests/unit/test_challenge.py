"""Challenges: CSPRNG digits, one use, expiry, passphrase mode."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from tests.clock_helpers import HOUR, Clocks, T
from voxgate.challenge import (
    ChallengeBook,
    ChallengeError,
    audit_fields,
    enrollment_prompts,
    new_challenge,
)
from voxgate.config.stt import ChallengeConfig


def test_digit_challenge_has_the_configured_length_and_words() -> None:
    ch = new_challenge(ChallengeConfig(length=7, timeout_s=10), now=100.0)
    assert len(ch.text) == 7 and ch.text.isdigit()
    assert ch.digits == ch.text
    assert len(ch.words) == 7
    assert ch.words[0] in (
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
    )
    assert ch.expires_at == 110.0 and ch.issued_at == 100.0
    assert len(ch.nonce) == 32
    assert ch.spoken_form().count(",") == 6


def test_challenges_differ_and_cover_all_digits() -> None:
    cfg = ChallengeConfig(length=5)
    seen = [new_challenge(cfg, 0.0) for _ in range(300)]
    assert len({c.nonce for c in seen}) == 300
    assert len({c.text for c in seen}) > 290  # 10 * 9^4 = 65610 possibilities
    assert set("".join(c.text for c in seen)) == set("0123456789")


def test_no_challenge_digit_repeats_the_one_before_it() -> None:
    """The template check refused genuine answers to prompts like "40072" about 1.5 times
    as often as others (benchmarks/bench_challenge_refusals.py). 2000 draws of 5 digits
    from the old uniform draw hold a repeat with probability 1 - 0.9^4 = 34 % each."""
    from collections import Counter

    texts = [new_challenge(ChallengeConfig(length=5), 0.0).text for _ in range(2000)]
    assert not [t for t in texts if any(a == b for a, b in pairwise(t))]
    # Still every digit in every place, and each next digit from all nine others.
    for i in range(5):
        assert {t[i] for t in texts} == set("0123456789")
    pairs = Counter((a, b) for t in texts for a, b in pairwise(t))
    assert len(pairs) == 90
    assert all(len(new_challenge(ChallengeConfig(length=n), 0.0).text) == n for n in (3, 10))


def test_a_challenge_is_redeemed_once_only() -> None:
    clk = Clocks(T)
    book = ChallengeBook(elapsed=clk.mono)
    ch = book.issue(ChallengeConfig(), now=clk.wall())
    clk.run(1)
    assert book.redeem(ch.nonce) == ch
    with pytest.raises(ChallengeError, match="already used"):
        book.redeem(ch.nonce)


def test_an_expired_challenge_is_refused() -> None:
    clk = Clocks(T)
    book = ChallengeBook(elapsed=clk.mono)
    ch = book.issue(ChallengeConfig(timeout_s=5), now=clk.wall())
    clk.run(5)
    with pytest.raises(ChallengeError, match="expired"):
        book.redeem(ch.nonce)


def test_a_clock_step_neither_cuts_nor_stretches_the_time_to_answer() -> None:
    """Seen with the wall clock deciding: NTP stepping it forward an hour while the person
    answered made the challenge expired at once; a step back kept it open an hour more.
    The shown times stay wall-clock times."""
    clk = Clocks(T)
    book = ChallengeBook(elapsed=clk.mono)
    ahead = book.issue(ChallengeConfig(timeout_s=10), now=clk.wall())
    back = book.issue(ChallengeConfig(timeout_s=10), now=clk.wall())
    assert (ahead.issued_at, ahead.expires_at) == (T, T + 10)
    clk.run(3)
    clk.step(HOUR)
    assert book.redeem(ahead.nonce) == ahead  # 3 s of the 10 have passed
    clk.step(-2 * HOUR)
    clk.run(8)
    with pytest.raises(ChallengeError, match=r"expired 1\.0 s ago"):
        book.redeem(back.nonce)  # 11 s have passed, whatever the clock says
    assert book.pending() == 0


def test_the_book_stays_bounded() -> None:
    clk = Clocks(T)
    book = ChallengeBook(limit=3, elapsed=clk.mono)
    issued = [book.issue(ChallengeConfig(timeout_s=100), now=clk.wall()) for _ in range(5)]
    clk.run(1)
    assert book.pending() == 3
    with pytest.raises(ChallengeError):
        book.redeem(issued[0].nonce)
    assert book.redeem(issued[-1].nonce) == issued[-1]


def test_passphrase_mode() -> None:
    cfg = ChallengeConfig(mode="passphrase", passphrase="  Open   Sesame ")
    ch = new_challenge(cfg, 0.0)
    assert ch.words == ("open", "sesame") and ch.text == "open sesame"
    assert ch.digits is None


def test_passphrase_mode_without_a_phrase_and_off_mode_say_why() -> None:
    # The config refuses this (tests/unit/test_config_ops.py); the stage still says why.
    with pytest.raises(ChallengeError, match="passphrase is empty"):
        new_challenge(ChallengeConfig.model_construct(mode="passphrase"), 0.0)
    with pytest.raises(ChallengeError, match="off"):
        new_challenge(ChallengeConfig(mode="off"), 0.0)


def test_to_dict_is_json_ready() -> None:
    import json

    ch = new_challenge(ChallengeConfig(), 0.0)
    d = json.loads(json.dumps(ch.to_dict()))
    assert d["text"] == ch.text and d["nonce"] == ch.nonce and d["words"] == list(ch.words)


def test_enrollment_prompts_cover_every_digit_twice() -> None:
    from collections import Counter

    prompts = enrollment_prompts(4, 5)
    assert len(prompts) == 4 and all(len(p) == 5 and p.isdigit() for p in prompts)
    assert Counter("".join(prompts)) == Counter("0123456789" * 2)
    with pytest.raises(ValueError, match="every digit"):
        enrollment_prompts(1, 5)


@pytest.mark.parametrize("phrase", ["öffne sesam", "open door 4", "gate №5", "..."])
def test_a_passphrase_no_engine_can_say_is_a_config_error(phrase: str) -> None:
    """Every engine spells English words in the letters a-z; such phrases validated and
    then aborted every attempt (or were silently cut to other words)."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"challenge\.passphrase"):
        ChallengeConfig(mode="passphrase", passphrase=phrase)
    ChallengeConfig(mode="passphrase", passphrase="Don't panic, Open-Sesame!")


def test_an_answer_limit_too_short_for_the_prompt_is_a_config_error() -> None:
    """A 10-digit answer takes about 5 s (espeak-ng, en+m3; people are slower), so with
    `stt.max_answer_s: 4` every answer was too long: the config passed `voxgate config
    check` and the door asked again for ever."""
    from pydantic import ValidationError

    from voxgate.config import VoxgateConfig

    for change in (
        {"challenge": {"length": 10}, "stt": {"max_answer_s": 4}},
        {"stt": {"max_answer_s": 2}},
    ):
        with pytest.raises(ValidationError, match="too short for an answer"):
            VoxgateConfig.model_validate(change)
    VoxgateConfig.model_validate({"challenge": {"length": 10}})  # the defaults leave room
    VoxgateConfig.model_validate({"challenge": {"length": 3}, "stt": {"max_answer_s": 5}})
    VoxgateConfig.model_validate({"challenge": {"mode": "off"}, "stt": {"max_answer_s": 2}})


def test_a_replay_window_that_keeps_nothing_is_a_config_error(tmp_path: Path) -> None:
    """`replay_window_s: 0` (read as 'for ever' in many tools) validated and pruned every
    fingerprint before the next answer was compared: an exact replay one second later was
    not caught, with nothing in the log to say the detector was off."""
    from pydantic import ValidationError

    from voxgate.replay import ReplayDetector

    answer = np.random.default_rng(0).normal(0, 3000, 32000).astype(np.int16)
    answer[::4000] = 0  # some rhythm, as speech has
    det = ReplayDetector(tmp_path / "replay.db", 0)
    det.check_and_add(answer, 100.0)
    assert not det.check_and_add(answer, 101.0).is_replay  # what 0 did
    det.close()
    kept = ReplayDetector(tmp_path / "kept.db", 60)
    kept.check_and_add(answer, 100.0)
    assert kept.check_and_add(answer, 101.0).is_replay  # what a window that keeps does
    kept.close()
    with pytest.raises(ValidationError, match="replay_window_s"):
        ChallengeConfig(replay_window_s=0)
    assert ChallengeConfig(replay_window_s=60).replay_window_s == 60


def test_the_audit_names_the_digits_asked_for_and_heard_never_a_passphrase() -> None:
    """Templates report digits, the engines words ("oh" among them for pocketsphinx):
    the audit line gets digits either way; a passphrase gets neither field filled."""
    assert audit_fields("40712", "40712") == {"liveness_prompt": "40712", "liveness_heard": "40712"}
    heard = audit_fields("40712", "four oh seven one")["liveness_heard"]
    assert heard == "4071"
    assert audit_fields("40712", None)["liveness_heard"] is None  # a retry: nothing decoded
    assert audit_fields("40712", "")["liveness_heard"] == ""  # decoded, nothing heard
    assert audit_fields(None, "open sesame") == {"liveness_prompt": None, "liveness_heard": None}
