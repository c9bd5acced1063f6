"""The spoken challenge through the real daemon: `voxgate run --file` on espeak-ng audio (a
wake phrase, then the answer), real stages, decisions read from the audit log."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voxgate.audio.file import read_audio
from voxgate.cli import main

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
REPO = Path(__file__).resolve().parents[2]
RATE = 16000
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def say(text: str, tmp: Path, voice: str = "en", rate: int = 150) -> np.ndarray:
    wav = tmp / "say.wav"
    cmd = ["espeak-ng", "-v", voice, "-s", str(rate), "-w", str(wav), text]
    subprocess.run(cmd, check=True)
    return read_audio(wav)


def quiet(seconds: float) -> np.ndarray:
    return np.random.default_rng(1).normal(0, 10, int(seconds * RATE)).astype(np.int16)


def write_config(home: Path, config: str) -> Path:
    key = home / "vp.key"
    if not key.exists():
        assert main(["users", "init-key", str(key)]) == 0
    cfg = home / "voxgate.yaml"
    cfg.write_text(
        f"data_dir: {home / 'data'}\naudio: {{source: stdin}}\nmqtt: {{enabled: false}}\n"
        "metrics: {enabled: false}\n"
        f"speaker: {{key_file: {key}, enroll_min_speech_s: 6, enroll_min_takes: 3}}\n{config}"
    )
    return cfg


def run_door(home: Path, config: str, parts: list[np.ndarray], *flags: str) -> list[dict]:
    """`voxgate run --file` on the parts played one after another; the decisions audited."""
    cfg = write_config(home, config)
    audio = home / "attempt.wav"
    sf.write(audio, np.concatenate(parts), RATE, subtype="PCM_16")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    env["PYTHONPATH"] = str(REPO / "daemon")
    cmd = [sys.executable, "-m", "voxgate", "run", "-c", str(cfg), "--file", str(audio), *flags]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    (home / "run.log").write_text(done.stderr)  # the daemon's log of this run
    audit = home / "data" / "audit.jsonl"
    decisions = [
        e for e in map(json.loads, audit.read_text().splitlines()) if e.get("event") == "decision"
    ]
    audit.unlink()  # the next run of this door starts a fresh log
    (home / "data" / "audit.jsonl.anchor").unlink(missing_ok=True)
    return decisions


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A door where alice enrolled with prompted takes: she has digit templates, so nobody
    else's answer needs the speech engine."""
    home = tmp_path_factory.mktemp("door")
    cfg = write_config(home, "")
    prompts = ["40712", "95368", "28140", "63957", "17250", "84693"]
    files = []
    for i, digits in enumerate(prompts):
        path = home / f"take{i}.wav"
        text = ", ".join(NAMES[int(d)] for d in digits)
        subprocess.run(["espeak-ng", "-v", "en+m3", "-w", str(path), text], check=True)
        files.append(str(path))
    assert main(["enroll", "alice", "-c", str(cfg), "--from", *files, "--prompts", *prompts]) == 0
    return home


def test_a_monologue_cut_by_the_vad_is_too_long_not_a_wrong_answer(tmp_path: Path) -> None:
    """The VAD cuts speech at vad.max_utterance_ms (15 s by default, below stt.max_answer_s),
    so a monologue never reached the too_long check: its first piece was decoded (4.4 s
    after the cut for 15 s of speech) and denied as a wrong answer, counted by the lockout.
    An answer the VAD had to cut is now too long: a retry, nothing decoded."""
    wake = say("hello door", tmp_path)
    talk = say(
        "The quick brown fox jumps over the lazy dog near the old river bank, and then it "
        "runs back home across the wide green fields while the farmer watches.",
        tmp_path,
    )
    assert len(talk) > 6 * RATE
    decisions = run_door(
        tmp_path,
        "challenge: {mode: passphrase, passphrase: open sesame}\nvad: {max_utterance_ms: 5000}\n",
        [quiet(0.5), wake, quiet(1.5), talk, quiet(1.5)],
    )
    first = decisions[0]
    assert "liveness_retry" in first["reasons"], first
    assert "liveness_failed" not in first["reasons"], first


def test_an_answer_nobody_can_be_matched_to_is_not_blamed_on_the_challenge(
    door: Path, tmp_path: Path
) -> None:
    """Everyone enrolled here has templates, so the engine does not run; when the voice
    matched nobody, no check was finished and the decision said `liveness_missing` beside
    the real reason. A cough (no usable voice: the quality gate's retry) was thereby a
    counted denial; an impostor's answer was blamed on a missing check."""
    wake = say("hello door", tmp_path, "en+m3")
    cough = np.random.default_rng(0).normal(0, 8000, 3000).astype(np.int16)
    impostor = say("six, one, six, four, six", tmp_path, "en+f4")
    decisions = run_door(
        door,
        "",
        [quiet(0.5), wake, quiet(1.5), cough, quiet(3), wake, quiet(1.5), impostor, quiet(2)],
    )
    assert [(d["outcome"], d["reasons"]) for d in decisions] == [
        ("retry", ["low_quality"]),
        ("denied", ["no_match"]),
    ]


def test_the_time_to_answer_starts_after_the_spoken_prompt(door: Path, tmp_path: Path) -> None:
    """With challenge.speak the door is deaf while its prompt plays (0.45 s a word + 0.8 s:
    3 s for 5 digits), but challenge.timeout_s ran from the moment the challenge was issued:
    with `timeout_s: 2` (allowed) every answer came too late (challenge_expired)."""
    wake = say("hello door", tmp_path, "en+m3")
    answer = say("four, seven, one, two, nine", tmp_path, "en+m3")
    # Prompt 3.05 s of deafness; the answer starts 0.5 s after it.
    decisions = run_door(
        door,
        "challenge: {speak: true, timeout_s: 2}\n",
        [quiet(0.5), wake, quiet(3.6), answer, quiet(1.5)],
        "--realtime",
    )
    assert len(decisions) == 1
    assert "challenge_expired" not in decisions[0]["reasons"], decisions[0]


def test_the_audit_log_says_why_the_spoken_answer_failed(tmp_path: Path) -> None:
    """The decision's audit line had liveness_ok and the score only: an analyst could not
    tell a wrong phrase from an answer too long or too quiet to judge, nor which check
    decided. It now names the reason and the method."""
    wake = say("hello door", tmp_path)
    right = say("open sesame", tmp_path)
    wrong = say("close the window", tmp_path)
    decisions = run_door(
        tmp_path,
        "challenge: {mode: passphrase, passphrase: open sesame}\n",
        [quiet(0.5), wake, quiet(1.5), right, quiet(3), wake, quiet(1.5), wrong, quiet(2)],
    )
    got = [(d["liveness_ok"], d["liveness_reason"], d["liveness_method"]) for d in decisions]
    assert got == [(True, None, "phonemes"), (False, "prompt_mismatch", "phonemes")]


def test_the_audit_log_says_what_was_heard_for_a_digit_challenge(tmp_path: Path) -> None:
    """An analyst looking into failed answers saw the score and the reason, but neither the
    digits asked for nor those heard. Both are in the decision line now: a challenge's
    digits are no secret once it has been answered (it cannot be used again)."""
    wake = say("hello door", tmp_path)
    answer = say("six, one, six, four, six", tmp_path)
    decisions = run_door(tmp_path, "", [quiet(0.5), wake, quiet(1.5), answer, quiet(2)])
    assert len(decisions) == 1, decisions
    d = decisions[0]
    assert d["liveness_method"] == "phonemes" and d["liveness_heard"] == "61646", d
    assert len(d["liveness_prompt"]) == 5 and d["liveness_prompt"].isdigit(), d


def test_what_was_heard_of_a_passphrase_is_written_nowhere(tmp_path: Path) -> None:
    """A passphrase is a secret: what the engine heard of an answer spells it (the phonemes
    engine's IPA, pocketsphinx's words), and the log said it for every attempt. Neither
    the decision line nor the daemon's log holds it; the score and reason stay."""
    wake = say("hello door", tmp_path)
    right = say("open sesame", tmp_path)
    wrong = say("open the window", tmp_path)
    decisions = run_door(
        tmp_path,
        "challenge: {mode: passphrase, passphrase: open sesame}\n",
        [quiet(0.5), wake, quiet(1.5), right, quiet(3), wake, quiet(1.5), wrong, quiet(2)],
    )
    assert [d["liveness_reason"] for d in decisions] == [None, "prompt_mismatch"], decisions
    for d in decisions:
        assert d["liveness_heard"] is None and d["liveness_prompt"] is None, d
        assert isinstance(d["liveness_score"], float), d
    checks = [ln for ln in (tmp_path / "run.log").read_text().splitlines() if "prompt check" in ln]
    assert len(checks) == 2 and all("heard=None" in ln for ln in checks), checks


def test_the_door_does_not_take_the_end_of_its_own_spoken_prompt_as_the_answer(
    tmp_path: Path,
) -> None:
    """With challenge.speak the door stops listening while it says the prompt, for a time
    guessed from the word count (0.45 s a word + 0.8 s). espeak-ng takes longer for long
    words: ten sevens end at 7.5 s, guessed 5.3 s. The door heard the rest of its own voice
    as the start of the answer and judged that (denied). The microphone here is the file:
    the door's prompt as espeak-ng says it, then the person's answer."""
    phrase = "open the big old front door of the house right now"
    wake = say("hello door", tmp_path, "en+m3")
    prompt_wav = tmp_path / "prompt.wav"
    spoken = ", ".join(phrase.split())  # Challenge.spoken_form(), as challenge.speak says it
    subprocess.run(
        ["espeak-ng", "-v", "en", "-s", "140", "-w", str(prompt_wav), spoken], check=True
    )
    door_voice = read_audio(prompt_wav)
    answer = say(phrase, tmp_path, "en+m3")
    decisions = run_door(
        tmp_path,
        f"challenge: {{mode: passphrase, passphrase: {phrase}, speak: true, timeout_s: 10}}\n",
        # The VAD ends the wake 0.5 s after it; the door starts speaking then.
        [quiet(0.5), wake, quiet(0.55), door_voice, quiet(1.0), answer, quiet(2)],
    )
    assert len(decisions) == 1, decisions
    assert decisions[0]["liveness_ok"] is True, decisions[0]


def test_a_short_passphrase_said_in_full_opens_the_door(door: Path, tmp_path: Path) -> None:
    """ "open the gate" at espeak-ng's normal rate holds 0.96 s of net speech through the
    door's endpointer, under speaker.min_speech_s (1 s): every attempt was a retry
    (low_quality), so such a door never opened. A phrase the prompt
    check heard in full needs only challenge.passphrase_min_speech_s; a cut-off or empty
    answer gets no such allowance."""
    from voxgate.quality import assess

    wake = say("hello door", tmp_path, "en+m3")
    phrase = say("open the gate", tmp_path, "en+m3", rate=175)  # espeak-ng's normal rate
    assert 0.5 < assess(phrase).speech_s < 1.0
    cut = say("open the", tmp_path, "en+m3", rate=175)
    cough = np.random.default_rng(0).normal(0, 8000, 3000).astype(np.int16)
    parts = [quiet(0.5), wake, quiet(1.5), phrase, quiet(3)]
    for answer in (cut, cough):
        parts += [wake, quiet(1.5), answer, quiet(3)]
    decisions = run_door(door, "challenge: {mode: passphrase, passphrase: open the gate}\n", parts)
    got = [(d["outcome"], d["user"], d["reasons"]) for d in decisions]
    assert got[0] == ("granted", "alice", []), decisions[0]
    assert got[1][0] != "granted" and "liveness_failed" in got[1][2], decisions[1]
    assert got[2][0] == "retry", decisions[2]
    assert len(got) == 3, got
