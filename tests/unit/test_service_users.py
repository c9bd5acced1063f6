"""service/users.py: MQTT erase-user on a real store, audit events, start errors."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voxgate.config import VoxgateConfig
from voxgate.service.users import StartError, UserServices
from voxgate.voiceprints import VoiceprintStore


class Embedder:
    model_id = "test/int8"


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = VoiceprintStore(tmp_path / "voiceprints.db", os.urandom(32))
    emb = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    s.add_user("alice", emb / np.linalg.norm(emb, axis=1, keepdims=True), "test/int8")
    yield s
    s.close()


def test_erase_command_erases_audits_and_refuses_unknown(store: Any, tmp_path: Path) -> None:
    events: list[tuple[str, dict]] = []
    users = UserServices(
        VoxgateConfig(data_dir=tmp_path), store, Embedder(), lambda e, **f: events.append((e, f))
    )
    assert users.command_erase({"user": " alice "}) == {"user": "alice", "erased": True}
    assert store.get("alice") is None
    assert events == [("erase", {"user": "alice", "via": "mqtt"})]
    with pytest.raises(ValueError, match="no user 'alice' enrolled"):
        users.command_erase({"user": "alice"})
    with pytest.raises(ValueError, match="1-64 characters"):
        users.command_erase({"user": ""})
    assert len(events) == 1  # refusals change nothing and audit nothing


def test_api_without_token_is_a_config_error(
    store: Any, tmp_path: Path, no_secret_env: None
) -> None:
    cfg = VoxgateConfig.model_validate(
        {"data_dir": str(tmp_path), "api": {"enabled": True, "token_file": str(tmp_path / "t")}}
    )
    started: list[str] = []
    users = UserServices(cfg, store, Embedder(), lambda e, **f: None)
    with pytest.raises(StartError, match="api-token") as err:
        users.start(lambda name, stop: started.append(name))
    assert err.value.config and started == []


def test_fleet_without_key_is_a_config_error(store: Any, tmp_path: Path) -> None:
    cfg = VoxgateConfig.model_validate(
        {
            "data_dir": str(tmp_path),
            "fleet": {"enabled": True, "key_file": str(tmp_path / "missing"), "groups": []},
        }
    )
    users = UserServices(cfg, store, Embedder(), lambda e, **f: None)
    with pytest.raises(StartError, match="fleet-key") as err:
        users.start(lambda name, stop: None)
    assert err.value.config


def test_enrollment_session_refusals_and_expiry(
    store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from voxgate.embedding import load_embedder
    from voxgate.service import users as users_mod

    events: list[tuple[str, dict]] = []
    cfg = VoxgateConfig(data_dir=tmp_path)
    users = UserServices(cfg, store, load_embedder(), lambda e, **f: events.append((e, f)))
    noise = np.random.default_rng(1).normal(0, 30, 16000).astype(np.int16)
    assert not users.take(noise)  # no session: the loop makes it an attempt
    with pytest.raises(ValueError, match="no enrollment of 'bob'"):
        users.command_enroll_finish({"user": "bob"})
    users.command_enroll_start({"user": "bob"})
    assert users.enrolling
    with pytest.raises(ValueError, match="busy: enrolling bob"):
        users.command_enroll_start({"user": "carol"})
    assert users.take(noise)
    with pytest.raises(ValueError, match="not enrolled: need"):
        users.command_enroll_finish({"user": "bob"})
    assert store.get("bob") is None and not users.enrolling
    assert [e for e, _ in events] == ["enrollment_started", "enrollment_refused"]

    monkeypatch.setattr(users_mod, "ENROLL_TIMEOUT_S", 0.0)
    users.command_enroll_start({"user": "carol"})
    assert not users.take(noise)  # expired: dropped, audited, the utterance is an attempt
    assert events[-1] == ("enrollment_expired", {"user": "carol"})


def test_enroll_start_refuses_a_name_no_new_user_may_have(store: Any, tmp_path: Path) -> None:
    """'ａｌｉｃｅ' next to 'alice' was refused only at enroll-finish, after the person had
    spoken every take; now enroll-start says so. The enrolled name itself still starts (a
    re-enrollment)."""
    events: list[tuple[str, dict]] = []
    users = UserServices(
        VoxgateConfig(data_dir=tmp_path), store, Embedder(), lambda e, **f: events.append((e, f))
    )
    with pytest.raises(ValueError, match="already enrolled as 'alice'"):
        users.command_enroll_start({"user": "ａｌｉｃｅ"})
    with pytest.raises(ValueError, match="line or paragraph separators"):
        users.command_enroll_start({"user": "bob\u2028alice granted"})
    assert not users.enrolling and events == []
    assert users.command_enroll_start({"user": "ALICE"})["user"] == "ALICE"
    assert users.enrolling


def test_enrollment_prompts_are_shown_one_take_at_a_time(store: Any, tmp_path: Path) -> None:
    from voxgate.embedding import load_embedder

    cfg = VoxgateConfig.model_validate({"data_dir": str(tmp_path), "challenge": {"length": 6}})
    users = UserServices(cfg, store, load_embedder(), lambda e, **f: None)
    shown: list[tuple[str, int, int]] = []
    users.on_prompt = lambda digits, take, session, ttl: shown.append((digits, take, session))
    noise = np.random.default_rng(1).normal(0, 30, 16000).astype(np.int16)

    assert users.command_enroll_start({"user": "bob"})["prompts"] == []  # not asked for
    users.take(noise)
    assert shown == []
    with pytest.raises(ValueError, match="prompted must be"):
        users.command_enroll_start({"user": "bob", "prompted": "maybe"})

    prompts = users.command_enroll_start({"user": "bob", "prompted": "yes"})["prompts"]
    assert len(prompts) == 20 and all(len(p) == 6 and p.isdigit() for p in prompts)
    assert sorted(set("".join(prompts[:4]))) == list("0123456789")  # first takes cover every digit
    assert shown == [(prompts[0], 1, 2)]
    assert users.prompt_is_current(2, 1) and not users.prompt_is_current(1, 1)
    users.take(noise)
    users.take(noise)
    assert shown == [(prompts[0], 1, 2), (prompts[1], 2, 2), (prompts[2], 3, 2)]
    assert not users.prompt_is_current(2, 2)  # take 2 was said already: its prompt is stale

    def broken(digits: str, take: int, session: int, ttl: float) -> None:
        raise OSError("display unreachable")

    users.on_prompt = broken
    assert users.take(noise)  # a prompt that cannot be shown does not stop the enrollment


def test_fleet_with_broker_settings_it_cannot_use_is_a_config_error(
    store: Any, tmp_path: Path, no_secret_env: None
) -> None:
    """A named password file that is missing (or a missing CA file) escaped the fleet
    agent's start as a SecretError / MqttSetupError, not a StartError."""
    key = tmp_path / "fleet-key"
    key.write_text(os.urandom(32).hex())
    key.chmod(0o600)
    for mqtt in (
        {"username": "door", "password_file": str(tmp_path / "typo")},
        {"tls": {"ca_file": str(tmp_path / "missing-ca.crt")}},
    ):
        cfg = VoxgateConfig.model_validate(
            {
                "data_dir": str(tmp_path),
                "mqtt": {"enabled": False, **mqtt},
                "fleet": {"enabled": True, "key_file": str(key), "groups": []},
            }
        )
        users = UserServices(cfg, store, Embedder(), lambda e, **f: None)
        with pytest.raises(StartError, match=r"mqtt-password|ca_file") as err:
            users.start(lambda name, stop: None)
        assert err.value.config


def test_an_erase_names_the_person_as_enrolled(
    store: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The MQTT reply echoed the request's spelling, and a user erased by another process
    was logged case-folded ("zoë brandt is no longer enrolled"): now the enrolled name."""
    import logging

    from voxgate.config.service import LockoutConfig
    from voxgate.lockout import LockoutBook

    emb = np.eye(3, 8, dtype=np.float32)
    store.add_user("Zoë Brandt", emb, "test/int8")
    store.add_user("Bob", emb, "test/int8")
    book = LockoutBook(tmp_path / "lockout.db", LockoutConfig())
    book.record("zoë brandt", ok=False)
    events: list[tuple[str, dict]] = []
    users = UserServices(
        VoxgateConfig(data_dir=tmp_path),
        store,
        Embedder(),
        lambda e, **f: events.append((e, f)),
        lockout=book,
    )
    with caplog.at_level(logging.INFO, logger="voxgate.service.users"):
        assert users.command_erase({"user": "BOB"}) == {"user": "Bob", "erased": True}
        assert events == [("erase", {"user": "Bob", "via": "mqtt"})]
        assert "erased Bob (MQTT command)" in caplog.text
        assert users.check_erased() == []  # seen enrolled
        assert store.erase("ZOË BRANDT")  # as `voxgate users erase` does, behind its back
        assert users.check_erased() == ["Zoë Brandt"]
    assert "Zoë Brandt is no longer enrolled" in caplog.text
    assert "zoë brandt" not in caplog.text
    book.close()


def test_a_take_at_the_door_without_pauses_is_rejected_as_too_noisy(
    store: Any, tmp_path: Path
) -> None:
    """MQTT enroll-start / enroll-finish takes are the door endpointer's utterances (pre-roll
    and hangover): one with no pauses left is room noise taken for speech, rejected as
    too_noisy at any no-pauses level, as an attempt is retried. Files keep the level."""
    from tests.audio_helpers import espeak
    from voxgate.embedding import load_embedder
    from voxgate.vad import segment

    def in_room(text: str, snr_db: float) -> np.ndarray:
        pcm = espeak(text, tmp_path / "take.wav", "en+m3")
        loud = np.flatnonzero(np.abs(pcm) > 300)
        cut = pcm[loud[0] : loud[-1] + 1].astype(np.float64)
        placed = np.concatenate([np.zeros(16000), cut, np.zeros(16000)])
        noise = np.random.default_rng(0).normal(0, 1, len(placed))
        gain = np.sqrt(np.mean(cut**2) / 10 ** (snr_db / 10))
        room = np.round(placed + gain * noise).clip(-32768, 32767).astype(np.int16)
        (utt,) = segment(room, cfg.vad)  # as the door's endpointer cuts it
        return utt.pcm

    cfg = VoxgateConfig.model_validate(
        {"data_dir": str(tmp_path), "speaker": {"enroll_min_snr_db_no_pauses": 5.0}}
    )
    users = UserServices(cfg, store, load_embedder(), lambda e, **f: None)
    digits = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    users.command_enroll_start({"user": "bob"})
    # Quiet-room takes, over 20 s of speech; random orders, as prompts are (takes that shared
    # a run of digits in order were one recording to enrollment's duplicate check).
    for t in range(10):
        assert users.take(in_room(", ".join(random.Random(t).sample(digits, 8)), 40))
    # At 9 dB the VAD calls all of it speech; its quietest-frames SNR (7 dB) clears 5 dB.
    assert users.take(in_room("three nine one four, seven two eight five", 9.0))
    report = users.command_enroll_finish({"user": "bob"})
    assert report["rejected"] == [{"take": 11, "reason": "too_noisy"}]
    assert report["used"] == 10 and store.get("bob") is not None


def test_takes_are_kept_when_the_cohort_cannot_be_read_at_enroll_finish(
    store: Any, tmp_path: Path
) -> None:
    """speaker.cohort is read again at each enrollment (for the two-voices check); when the
    file went missing after the daemon started (a redeploy half done), enroll-finish failed
    as an internal error and the spoken takes were gone. Now the reply names the file, the
    takes are kept, and enroll-finish succeeds once the file is back."""
    import shutil

    from tests.audio_helpers import espeak
    from voxgate.cohort import default_dir, slug
    from voxgate.embedding import load_embedder

    embedder = load_embedder()
    shipped = default_dir() / (slug(embedder.model_id) + ".npz")
    cohort = tmp_path / "cohort" / shipped.name
    cohort.parent.mkdir()
    for suffix in (".npz", ".json"):
        shutil.copy(shipped.with_suffix(suffix), cohort.with_suffix(suffix))
    cfg = VoxgateConfig.model_validate(
        {"data_dir": str(tmp_path), "speaker": {"cohort": str(cohort), "enroll_min_speech_s": 6}}
    )
    events: list[str] = []
    users = UserServices(cfg, store, embedder, lambda e, **f: events.append(e))
    users.command_enroll_start({"user": "bob"})
    digits = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    gap = np.zeros(16000, np.int16)
    for t in range(4):  # random orders: takes sharing a run of digits were one recording
        text = ", ".join(random.Random(t).sample(digits, 8))
        assert users.take(np.concatenate([gap, espeak(text, tmp_path / "t.wav", "en+m3"), gap]))
    moved = tmp_path / "aside"
    cohort.parent.rename(moved)
    with pytest.raises(ValueError, match="cohort file missing") as err:
        users.command_enroll_finish({"user": "bob"})
    assert "the takes are kept; send enroll-finish again" in str(err.value)
    assert store.get("bob") is None and users.enrolling
    moved.rename(cohort.parent)
    report = users.command_enroll_finish({"user": "bob"})
    assert report["used"] == 4 and store.get("bob") is not None


def test_a_duplicate_take_at_the_door_names_the_take_it_repeats(store: Any, tmp_path: Path) -> None:
    """enroll-finish's `rejected` said `duplicate` without the take it repeats, which the
    CLI names (docs/speaker-verification.md: "named with that take's number")."""
    from tests.audio_helpers import espeak
    from voxgate.embedding import load_embedder

    cfg = VoxgateConfig.model_validate(
        {"data_dir": str(tmp_path), "speaker": {"enroll_min_speech_s": 6}}
    )
    users = UserServices(cfg, store, load_embedder(), lambda e, **f: None)
    users.command_enroll_start({"user": "bob"})
    digits = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    gap = np.zeros(16000, np.int16)
    takes = []
    for t in range(4):  # random orders: takes sharing a run of digits were one recording
        text = ", ".join(random.Random(t).sample(digits, 8))
        takes.append(np.concatenate([gap, espeak(text, tmp_path / "t.wav", "en+m3"), gap]))
    for pcm in [*takes, takes[2]]:
        assert users.take(pcm)
    report = users.command_enroll_finish({"user": "bob"})
    assert report["rejected"] == [{"take": 5, "reason": "duplicate", "same_as": 3}]
    assert report["used"] == 4


def test_enroll_finish_and_start_match_the_session_name_as_the_store_does(
    store: Any, tmp_path: Path
) -> None:
    # Found over MQTT with a running daemon: enroll-start {"user": "Zoë"}, then enroll-finish
    # {"user": "zoë"} was refused "no enrollment of 'zoë' in progress" (and enroll-start
    # "zoë" was "busy: enrolling Zoë"), where docs/mqtt.md says names match
    # case-insensitively, as the store, the CLI and erase-user match them.
    from voxgate.embedding import load_embedder

    events: list[tuple[str, dict]] = []
    cfg = VoxgateConfig(data_dir=tmp_path)
    users = UserServices(cfg, store, load_embedder(), lambda e, **f: events.append((e, f)))
    noise = np.random.default_rng(1).normal(0, 30, 16000).astype(np.int16)
    users.command_enroll_start({"user": "Zoë"})
    assert users.command_enroll_start({"user": "ZOË"})["user"] == "ZOË"  # the same person
    assert users.take(noise)
    with pytest.raises(ValueError, match="not enrolled: need"):  # the takes were checked
        users.command_enroll_finish({"user": "zoë"})
    assert [e for e, _ in events][-1] == "enrollment_refused"
    users.command_enroll_start({"user": "carol"})
    with pytest.raises(ValueError, match="busy: enrolling carol"):
        users.command_enroll_start({"user": "Zoë"})


def test_a_change_the_fleet_cannot_take_stands_and_is_logged(
    store: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The erase stands when handing it to the fleet fails: a FleetError (a receive-only
    door) is a warning, anything else an error with its traceback, both under this module's
    logger."""
    from voxgate.fleet import FleetError

    users = UserServices(VoxgateConfig(data_dir=tmp_path), store, Embedder(), lambda e, **f: None)

    def refuse(kind: str, name: str) -> None:
        raise FleetError("no fleet.signing_key: this door only receives")

    users._to_fleet = refuse  # type: ignore[method-assign]
    with caplog.at_level("WARNING", logger="voxgate"):
        assert users.command_erase({"user": "alice"}) == {"user": "alice", "erased": True}
    (rec,) = caplog.records
    assert (rec.name, rec.levelname) == ("voxgate.service.users", "WARNING")
    assert rec.getMessage() == (
        "fleet sync: erased of alice stays on this door: no fleet.signing_key: this door only "
        "receives"
    )

    def broken(kind: str, name: str) -> None:
        raise RuntimeError("outbox gone")

    caplog.clear()
    users._to_fleet = broken  # type: ignore[method-assign]
    users.changed("enrolled", "bob", via="mqtt")
    (rec,) = caplog.records
    assert (rec.name, rec.levelname) == ("voxgate.service.users", "ERROR")
    assert rec.getMessage() == "could not hand enrolled of bob to the fleet sync"
    assert rec.exc_info is not None
