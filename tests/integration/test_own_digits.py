"""Prompted enrollment keeps the person's digit templates (sealed in the voiceprint), and an
attempt's answer is checked against the speaker's own digits."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from voxgate.audio.file import read_audio
from voxgate.cli import main
from voxgate.config import load_config
from voxgate.enrollment import TEMPLATES_META, templates_of
from voxgate.service.attempt import Attempt, _liveness
from voxgate.stt import digits_to_words, load_recognizer
from voxgate.voiceprints import open_store

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")

PROMPTS = ["40712", "95368", "28140", "63957", "17250", "84693"]
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def say(path: Path, digits: str, voice: str = "en+m3") -> Path:
    text = ", ".join(NAMES[int(d)] for d in digits)
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True)
    return path


@pytest.fixture
def cfg_file(tmp_path: Path) -> Path:
    key = tmp_path / "vp.key"
    assert main(["users", "init-key", str(key)]) == 0
    cfg = tmp_path / "voxgate.yaml"
    cfg.write_text(
        f"data_dir: {tmp_path / 'data'}\n"
        f"speaker: {{key_file: {key}, enroll_min_speech_s: 6, enroll_min_takes: 3}}\n"
    )
    return cfg


def test_prompted_enrollment_stores_templates_that_check_answers(
    tmp_path: Path, cfg_file: Path
) -> None:
    files = [str(say(tmp_path / f"t{i}.wav", p)) for i, p in enumerate(PROMPTS)]
    assert main(["enroll", "alice", "-c", str(cfg_file), "--from", *files,
                 "--prompts", *PROMPTS]) == 0  # fmt: skip
    cfg = load_config(cfg_file)
    with open_store(cfg) as store:
        vp = store.get("alice")
    assert vp is not None and set(vp.meta["template_digits"]) == set("0123456789")
    # Sealed with the rest of the voiceprint: the raw file holds no template bytes.
    blob = vp.meta[TEMPLATES_META]
    assert blob[:40].encode() not in (tmp_path / "data" / "voiceprints.db").read_bytes()
    templates = templates_of(vp.meta)

    recognizer = load_recognizer(cfg.stt)
    answer = read_audio(say(tmp_path / "answer.wav", "52814"))
    right = tuple(digits_to_words("52814"))
    wrong = tuple(digits_to_words("93076"))
    a = Attempt(claimed_user=None)
    a.user_streams = {"alice": recognizer.start(right, user_templates=templates)}
    for chunk in np.array_split(answer, 20):  # streamed while spoken
        a.user_streams["alice"].push(chunk)
    ok = _liveness(a, "alice")
    assert ok is not None and ok.ok and ok.method == "templates"
    bad = recognizer.check_prompt(answer, wrong, user_templates=templates)
    assert not bad.ok and bad.reason == "prompt_mismatch"
    # An unidentified speaker gets no own-digit check (and no engine stream was opened).
    assert _liveness(Attempt(claimed_user=None), None) is None


def test_prompts_must_match_the_files(
    tmp_path: Path, cfg_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = str(say(tmp_path / "t.wav", "123"))
    assert main(["enroll", "bob", "-c", str(cfg_file), "--from", f, "--prompts", "1", "2"]) == 1
    assert "one digit string per file" in capsys.readouterr().err
    assert main(["enroll", "bob", "-c", str(cfg_file), "--from", f, "--prompts", "12a"]) == 1
    assert "digit strings" in capsys.readouterr().err
    # '²' or '１' pass str.isdigit() but are no digit a challenge asks for.
    for odd in ("¹²³", "１２３"):
        assert main(["enroll", "bob", "-c", str(cfg_file), "--from", f, "--prompts", odd]) == 1
        assert "digit strings" in capsys.readouterr().err


def test_unprompted_enrollment_has_no_templates(tmp_path: Path, cfg_file: Path) -> None:
    files = [str(say(tmp_path / f"t{i}.wav", p)) for i, p in enumerate(PROMPTS[:4])]
    assert main(["enroll", "carol", "-c", str(cfg_file), "--from", *files]) == 0
    with open_store(load_config(cfg_file)) as store:
        vp = store.get("carol")
    assert vp is not None and templates_of(vp.meta) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown)")
def test_enrolling_as_root_leaves_the_service_users_files_to_it(
    tmp_path: Path, cfg_file: Path
) -> None:
    """An administrator's `sudo voxgate enroll` next to the running service (whose user owns
    the data folder) must not leave files the service cannot write."""
    service_uid, service_gid = 61234, 61234
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    os.chown(data, service_uid, service_gid)
    files = [str(say(tmp_path / f"t{i}.wav", p)) for i, p in enumerate(PROMPTS[:4])]
    assert main(["enroll", "bob", "-c", str(cfg_file), "--from", *files,
                 "--prompts", *PROMPTS[:4]]) == 0  # fmt: skip
    made = [p for p in data.rglob("*")]
    assert any(p.name == "voiceprints.db" for p in made)
    assert all((p.stat().st_uid, p.stat().st_gid) == (service_uid, service_gid) for p in made)
    # With the folder owned by root, nothing is handed to anyone.
    os.chown(data, 0, 0)
    (data / "root-file").write_text("x")
    assert main(["users", "list", "-c", str(cfg_file)]) == 0
    assert (data / "root-file").stat().st_uid == 0


def test_takes_that_do_not_say_their_prompts_give_no_templates(
    tmp_path: Path, cfg_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    said = [*PROMPTS[:5], "86420"]  # the last take says other digits than its prompt
    files = [str(say(tmp_path / f"t{i}.wav", p)) for i, p in enumerate(said)]
    assert main(["enroll", "carol", "-c", str(cfg_file), "--from", *files,
                 "--prompts", *PROMPTS]) == 0  # fmt: skip
    assert "take 6: did not say its prompt" in capsys.readouterr().out
    cfg = load_config(cfg_file)
    with open_store(cfg) as store:
        vp = store.get("carol")
    assert vp is not None and set(vp.meta["template_digits"]) == set("0123456789")
    # The templates kept still accept carol's answers.
    res = load_recognizer(cfg.stt).check_prompt(
        read_audio(say(tmp_path / "answer.wav", "52814")),
        tuple(digits_to_words("52814")),
        user_templates=templates_of(vp.meta),
    )
    assert res.ok and res.method == "templates"

    # Prompts that fit none of the takes (shifted by one): no templates at all.
    files = [str(say(tmp_path / f"d{i}.wav", p)) for i, p in enumerate(PROMPTS[:5])]
    shifted = PROMPTS[1:6]
    assert main(["enroll", "dave", "-c", str(cfg_file), "--from", *files,
                 "--prompts", *shifted]) == 0  # fmt: skip
    assert "no digit templates: answers will be checked by the speech engine alone" in (
        capsys.readouterr().out
    )
    with open_store(cfg) as store:
        vp = store.get("dave")
    assert vp is not None and TEMPLATES_META not in vp.meta


def test_a_claim_spelled_in_another_case_is_checked_against_the_users_digits(
    tmp_path: Path, cfg_file: Path
) -> None:
    """The store opens alice's voiceprint for an attempt claiming `ALICE`, but the digit
    streams were keyed by the stored name and looked up by the claimed one: no stream was
    found and every such attempt was `denied, liveness_missing`, however well alice answered.
    Found claiming case variants of an enrolled user at the real daemon."""
    from voxgate.service.stages import _templates_lookup

    files = [str(say(tmp_path / f"t{i}.wav", p)) for i, p in enumerate(PROMPTS)]
    assert main(["enroll", "alice", "-c", str(cfg_file), "--from", *files,
                 "--prompts", *PROMPTS]) == 0  # fmt: skip
    cfg = load_config(cfg_file)
    recognizer = load_recognizer(cfg.stt)
    answer = read_audio(say(tmp_path / "answer.wav", "52814"))
    words = tuple(digits_to_words("52814"))
    with open_store(cfg) as store:
        lookup = _templates_lookup(store)
        for claimed in ("ALICE", "Alice", "alice"):
            a = Attempt(claimed_user=claimed)  # as the loop opens the streams
            a.user_streams = {
                user: recognizer.start(words, user_templates=tm)
                for user, tm in lookup(claimed).items()
                if tm is not None and tm.covers("52814")
            }
            for stream in a.user_streams.values():
                stream.push(answer)
            got = _liveness(a, a.claimed_user)
            assert got is not None and got.ok and got.method == "templates", claimed
