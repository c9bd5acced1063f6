"""Zero width joiners (U+200C, U+200D) in user names: part of how many Persian, Urdu, Hindi
and Malayalam names are spelled, so they enroll as spelled; invisible, so a joiner slipped
into an enrolled name is the same person for the lockout and a twin at enrollment."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voxgate.cli import main
from voxgate.config import load_config
from voxgate.config.service import LockoutConfig
from voxgate.lockout import LockoutBook
from voxgate.voiceprints import NameTaken, StoreError, VoiceprintStore, normalize_name, open_store

ZWNJ, ZWJ = "\u200c", "\u200d"
MEHR = f"مهر{ZWNJ}انگیز"  # Mehrangiz, spelled with its non-joiner
MODEL = "test-model/float"
KEY = bytes(range(32))


def _emb(seed: int) -> np.ndarray:
    e = np.random.default_rng(seed).normal(size=(3, 16)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


@pytest.fixture
def door(tmp_path: Path) -> Path:
    key = tmp_path / "voiceprint.key"
    assert main(["users", "init-key", str(key)]) == 0
    cfg = tmp_path / "voxgate.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'data'}\nspeaker: {{key_file: {key}}}\n")
    return cfg


@pytest.mark.usefixtures("no_secret_env")
def test_a_name_with_a_joiner_enrolls_lists_exports_and_erases_as_spelled(
    door: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with open_store(load_config(door)) as store:
        assert store.add_user(MEHR, _emb(1), MODEL).name == MEHR
        assert store.add_user(f"क्{ZWJ}ष", _emb(2), MODEL).name == f"क्{ZWJ}ष"  # Hindi half form
    capsys.readouterr()
    assert main(["users", "list", "-c", str(door)]) == 0
    assert MEHR in capsys.readouterr().out
    assert main(["users", "export", MEHR, "-c", str(door)]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert MEHR in json.dumps(exported, ensure_ascii=False)
    assert main(["users", "erase", MEHR, "-c", str(door)]) == 0
    capsys.readouterr()
    assert main(["users", "list", "-c", str(door)]) == 0
    assert MEHR not in capsys.readouterr().out


@pytest.mark.usefixtures("no_secret_env")
@pytest.mark.parametrize(
    ("name", "said"),
    [
        (f"{ZWNJ}alice", "must stand between two other characters"),
        (f"alice{ZWJ}", "must stand between two other characters"),
        (f"al{ZWNJ}{ZWNJ}ice", "must stand between two other characters"),
        (f"al{ZWJ}{ZWNJ}ice", "must stand between two other characters"),
        ("ali\u202ecE", "direction overrides"),  # reads as "aliEc"
        ("ali\u2067ce", "direction overrides"),
        ("al\ufeffice", "control characters"),
        ("al\u200bice", "control characters"),  # ZERO WIDTH SPACE: not a joiner
    ],
)
def test_misplaced_joiners_and_other_invisible_characters_are_refused(
    door: Path, capsys: pytest.CaptureFixture[str], name: str, said: str
) -> None:
    with pytest.raises(StoreError, match=said):
        normalize_name(name)
    wav = door.parent / "take.wav"
    sf.write(wav, np.zeros(16000, np.int16), 16000, subtype="PCM_16")
    assert main(["enroll", name, "-c", str(door), "--from", str(wav)]) == 1
    assert said in capsys.readouterr().err


def test_a_joiner_slipped_into_an_enrolled_name_is_a_twin(tmp_path: Path) -> None:
    with VoiceprintStore(tmp_path / "vp.db", KEY) as store:
        store.add_user("alice", _emb(1), MODEL)
        store.add_user(MEHR, _emb(2), MODEL)
        for twin, enrolled in [
            (f"al{ZWNJ}ice", "alice"),
            (f"AL{ZWJ}ICE", "alice"),
            ("مهرانگیز", MEHR),  # the joiner left out: the same name read
            (f"مهر{ZWJ}انگیز", MEHR),
        ]:
            with pytest.raises(NameTaken, match=f"already enrolled as '{enrolled}'"):
                store.check_new_name(twin)
            with pytest.raises(NameTaken, match=f"already enrolled as '{enrolled}'"):
                store.add_user(twin, _emb(3), MODEL)
        assert sorted(u.name for u in store.users()) == sorted(["alice", MEHR])


def test_a_joiner_gets_no_fresh_lockout_bucket(tmp_path: Path) -> None:
    cfg = LockoutConfig(max_failures=3, device_max_failures=100, initial_s=3600)
    book = LockoutBook(tmp_path / "lockout.db", cfg)
    for claimed in ("alice", f"al{ZWNJ}ice", f"Ali{ZWJ}ce"):
        book.record(claimed, False)
    assert book.state("alice").locked
    assert book.state(f"a{ZWNJ}lice").locked
    book.close()
    reopened = LockoutBook(tmp_path / "lockout.db", cfg)  # the key as stored, too
    assert reopened.users() == ["alice"]
    reopened.close()


def test_lockout_clear_takes_a_name_with_a_joiner(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg_file = tmp_path / "voxgate.yaml"
    cfg_file.write_text(f"data_dir: {tmp_path / 'data'}\n")
    (tmp_path / "data").mkdir()
    book = LockoutBook(tmp_path / "data" / "lockout.db", LockoutConfig(max_failures=3))
    for _ in range(3):
        book.record(MEHR, False)
    book.close()
    assert main(["lockout", "clear", MEHR, "-c", str(cfg_file)]) == 0
    assert "cleared" in capsys.readouterr().out
    assert main(["lockout", "clear", f"a{ZWNJ}\u202eb", "-c", str(cfg_file)]) == 2
    assert "direction overrides" in capsys.readouterr().err


def test_the_mqtt_commands_take_a_name_with_a_joiner() -> None:
    # enroll-start and erase-user check names with this: they refused every joiner.
    from voxgate.mqtt.commands import _user_name_problem

    assert _user_name_problem(MEHR) is None
    assert "direction overrides" in (_user_name_problem("ali\u202ece") or "")
