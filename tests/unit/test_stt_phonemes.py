"""The phonemes engine (hama's phoneme recogniser) on real speech: espeak-ng here, the Speech
Commands sample in tests/integration/test_stt_speech_commands.py."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from voxgate.audio.file import read_audio
from voxgate.config.stt import SttConfig
from voxgate.stt import digits_to_words, graph, load_recognizer
from voxgate.stt.base import NO_SPEECH, PROMPT_MISMATCH
from voxgate.stt.phoneme_backend import LEXICON, PhonemeEngine

pytest.importorskip("hama")
pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng missing")


def say(text: str, voice: str = "en-us") -> np.ndarray:
    with tempfile.TemporaryDirectory() as d:
        wav = Path(d) / "a.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", "140", "-w", str(wav), text], check=True)
        pcm = read_audio(wav)
    pad = np.zeros(4800, np.int16)
    return np.concatenate([pad, pcm, pad])


def _oh_margin(engine: PhonemeEngine, pcm: np.ndarray, reading: str) -> float:
    """How much likelier the best path reading `reading` (with its "oh") is than the best
    reading the same words without the "oh": near 0, a rounding decides whether it is heard."""
    logp = engine.log_probs(pcm.astype(np.float32) / 32768.0)
    forms = {**engine.forms, "oh": engine.oh}
    scores = []
    for words in (reading.split(), [w for w in reading.split() if w != "oh"]):
        g = graph.prompt_graph([forms[w] for w in words], words, engine.boundary, engine.blank)
        scores.append(g.best(logp)[1])
    return scores[0] - scores[1]


@pytest.fixture(scope="module")
def rec() -> object:
    return load_recognizer(SttConfig(backend="phonemes"))


def test_the_lexicon_holds_hamas_own_spelling_of_every_digit_word() -> None:
    """The model learned from transcripts its G2P phonemised: that spelling must be listed."""
    from hama import G2PModel

    g2p = G2PModel()
    for word, forms in LEXICON.items():
        spelled = " ".join(a.phoneme for a in g2p.predict(word).alignments)
        assert spelled in forms, (word, spelled)


def test_a_spoken_prompt_is_accepted_and_other_digits_are_not(rec: object) -> None:
    pcm = say("three, eight, four, six, five")
    ok = rec.check_prompt(pcm, digits_to_words("38465"))  # type: ignore[attr-defined]
    assert ok.ok and ok.method == "phonemes", ok
    assert ok.transcript == "three eight four six five"
    for other in ("12790", "38467", "83465"):
        bad = rec.check_prompt(pcm, digits_to_words(other))  # type: ignore[attr-defined]
        assert not bad.ok and bad.reason in (PROMPT_MISMATCH, "wrong_digit_count"), (other, bad)
        assert bad.score < ok.score


def test_silence_is_a_retry_not_a_mismatch(rec: object) -> None:
    res = rec.check_prompt(np.zeros(32000, np.int16), digits_to_words("12345"))  # type: ignore[attr-defined]
    assert not res.ok and res.reason == NO_SPEECH and res.retry


def test_a_passphrase_is_spelled_by_the_g2p(rec: object) -> None:
    pcm = say("open the gate")
    ok = rec.check_prompt(pcm, ("open", "the", "gate"))  # type: ignore[attr-defined]
    other = rec.check_prompt(pcm, ("seven", "blue", "horses"))  # type: ignore[attr-defined]
    assert other.score < ok.score
    assert not other.ok
    # Punctuation made hama's G2P spell another language's tones, and the phrase was denied
    # to everyone (found in review): words are reduced to their letters first.
    dotted = rec.check_prompt(pcm, ("Open,", "the", "gate."))  # type: ignore[attr-defined]
    assert dotted.score == ok.score


def test_a_passphrase_has_its_own_threshold(rec: object) -> None:
    """Against the best path through any tokens a genuine phrase scores far lower than a
    digit prompt against the digit loop: with the digit threshold this one was denied in
    every voice tried (-1.1 to -1.6)."""
    phrase = ("good", "morning", "house")
    res = rec.check_prompt(say(" ".join(phrase)), phrase)  # type: ignore[attr-defined]
    assert res.threshold == SttConfig().phonemes_phrase_threshold
    assert res.ok and res.score < SttConfig().phonemes_threshold, res
    other = rec.check_prompt(say("seven blue horses"), phrase)  # type: ignore[attr-defined]
    assert not other.ok and other.reason == PROMPT_MISMATCH


def test_a_phrase_with_oh_is_a_phrase_to_this_engine(rec: object) -> None:
    """ "oh" reads as a digit elsewhere, not in this engine's lexicon: the phrase was scored
    as a phrase but held to the digit threshold (found in review)."""
    phrase = ("oh", "seven", "four")
    res = rec.check_prompt(say("oh, seven, four"), phrase)  # type: ignore[attr-defined]
    assert res.threshold == SttConfig().phonemes_phrase_threshold


def test_oh_for_zero_is_accepted_and_two_for_zero_is_not(rec: object) -> None:
    """Many people read 0 as "oh": the engine denied every such answer (-3.6 to -10.5 in
    four voices). "oh" is one vowel, the end of "two" ("t w oʊ"), so an "oh" reading counts
    only when the engine's own best reading of the answer is the prompt.

    The answer is one whose "oh" the engine hears clearly in every voice tried (the best
    reading with it beats the best without by 2.1 to 5.2 nats in en-us, en+f3, en+m3, en,
    also with 1 LSB of noise added). en-us "four, oh, seven, one, two" was a tie (+0.02),
    lost to 1 LSB of noise in 4 of 6 seeds or to the audio sources' DC removal (-1.33)."""
    engine = rec.engine  # type: ignore[attr-defined]
    for voice in ("en-us", "en+f3"):
        oh = say("four, oh, seven, three, two", voice)
        assert _oh_margin(engine, oh, "four oh seven three two") > 1.0, voice  # no tie
        res = rec.check_prompt(oh, digits_to_words("40732"))  # type: ignore[attr-defined]
        assert res.ok and res.transcript == "four oh seven three two", (voice, res)
        two = say("four, two, seven, three, two", voice)
        # (An "oh" at a prompt's "two" or "eight" passed some voices before "oh" was accepted,
        # and still does: docs/challenge.md.)
        for pcm, prompt in ((two, "40732"), (two, "40730"), (oh, "40730"), (oh, "40772")):
            res = rec.check_prompt(pcm, digits_to_words(prompt))  # type: ignore[attr-defined]
            assert not res.ok, (voice, prompt, res)
    both = say("oh, three, zero, nine", "en+m3")
    assert rec.check_prompt(both, digits_to_words("0309")).ok  # type: ignore[attr-defined]


def test_the_oh_spelling_is_hamas_own() -> None:
    from hama import G2PModel

    from voxgate.stt.phoneme_backend import OH

    assert " ".join(a.phoneme for a in G2PModel().predict("oh").alignments) in OH


def test_a_prompt_scored_above_the_digit_loop_is_denied(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop holds every digit string, so it can only fall below the prompt when its best
    reading underflowed (a reviewer built such rows by hand); the ratio, capped at 0, then
    accepted. Here the loop's sum is forced low to stand for that case."""
    engine = PhonemeEngine()
    pcm = say("three, eight, four, six, five")
    stream = engine.start_prompt(digits_to_words("38465"))
    stream.push(pcm)
    assert stream.finish()[0] > -1.0  # the genuine answer, scored normally
    monkeypatch.setattr(engine.loop, "forward", lambda logp: -1e6)
    stream = engine.start_prompt(digits_to_words("38465"))
    stream.push(pcm)
    assert stream.finish()[0] == -1000.0


def test_transcribe_gives_digit_words() -> None:
    engine = PhonemeEngine()
    t = engine.transcribe(say("nine, two, seven"), digits_only=True)
    assert t.digits == "927" and t.engine == "phonemes"


def test_noise_music_and_other_speech_are_denied(rec: object) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(48000) / 16000
    cases = {
        "white noise": (rng.standard_normal(48000) * 6000).astype(np.int16),
        "two tones": (
            8000 * (np.sin(2 * np.pi * 440 * t) + 0.5 * np.sin(2 * np.pi * 660 * t))
        ).astype(np.int16),
        "laughter": say("ha ha ha ha ha ha"),
        "a sentence": say("hello, how are you today, I would like to come in"),
    }
    for name, pcm in cases.items():
        res = rec.check_prompt(pcm, digits_to_words("38465"))  # type: ignore[attr-defined]
        assert not res.ok and not res.retry and res.score >= -1000.0, (name, res)


def test_auto_falls_back_to_pocketsphinx_where_hama_cannot_run(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """hama's native engine exists for 64-bit Linux only (not 32-bit Raspberry Pi OS):
    without it `auto` uses pocketsphinx and says so, and `phonemes` is a clear start error."""
    import hama._engine

    from voxgate.stt.base import SttError

    monkeypatch.setattr(hama._engine, "_LIB", None)  # what a platform without libhama has
    assert load_recognizer(SttConfig()).name == "pocketsphinx"
    assert "using pocketsphinx" in caplog.text
    with pytest.raises(SttError, match=r"use stt\.backend: pocketsphinx"):
        load_recognizer(SttConfig(backend="phonemes"))


def test_the_answer_is_decoded_during_the_quiet_before_the_utterance_ends() -> None:
    """The decode starts once a quarter second of quiet follows speech (the VAD's hang-over
    is longer), and finish() uses it; speech after that start is not lost."""
    engine = PhonemeEngine()
    words = digits_to_words("38465")
    speech = say("three, eight, four, six, five")
    quiet = np.zeros(8000, np.int16)  # 0.5 s, the default hang-over
    whole = engine.start_prompt(words)
    whole.push(np.concatenate([speech, quiet]))
    expected = whole.finish()
    stream = engine.start_prompt(words)
    for chunk in np.array_split(np.concatenate([speech, quiet]), 60):
        stream.push(chunk)
    answer = stream.answer  # type: ignore[attr-defined]
    assert answer.thread is not None and answer.upto < answer.n  # decoded before the end
    # The background rows lack the last quiet (blank rows and a little model context), so
    # the sums over every reading differ by a hair; the reading heard is the same.
    score, heard = stream.finish()
    assert heard == expected[1] and score == pytest.approx(expected[0], abs=0.01)
    # More speech after the background decode began: it is decoded, not dropped.
    late = engine.start_prompt(digits_to_words("384657"))
    for part in (speech, quiet, say("seven"), quiet):
        late.push(part)
    _, heard = late.finish()
    assert heard == "three eight four six five seven"


def test_a_recording_cut_off_inside_a_word_is_not_accepted_for_any_prompt(rec: object) -> None:
    """When every digit string a beam search kept ended inside a word, it had no complete
    reading, the ratio became 0 and about one random prompt in five was accepted (found in
    review). The loop graph now sums over every complete digit string."""
    import random

    with tempfile.TemporaryDirectory() as d:
        wav = Path(d) / "a.wav"
        cmd = ["espeak-ng", "-v", "en+f3", "-s", "140", "-w", str(wav), "sixty six seventy seven"]
        subprocess.run(cmd, check=True)
        pcm = read_audio(wav)
    cut = np.concatenate([np.zeros(4800, np.int16), pcm[:31040], np.zeros(3200, np.int16)])
    rng = random.Random(5)
    prompts = ["".join(rng.choice("0123456789") for _ in range(5)) for _ in range(40)]
    accepted = [p for p in prompts if rec.check_prompt(cut, digits_to_words(p)).ok]  # type: ignore[attr-defined]
    assert accepted == []


def test_an_answer_that_means_try_again_is_not_decoded(rec: object) -> None:
    """Silence, a cough or a monologue past stt.max_answer_s is a retry whatever the engine
    would hear, yet the whole answer was decoded first: 130 s of speech at max_answer_s 120
    took 14 s after the end of speech on one x86 core (+130 MB), and silence was logged as
    heard 'eight'. Now nothing is decoded and nothing is reported heard."""
    from voxgate.stt import Recognizer
    from voxgate.stt.base import TOO_LONG, TOO_SHORT

    engine = rec.engine  # type: ignore[attr-defined]
    short = Recognizer(SttConfig(backend="phonemes", max_answer_s=2), engine)
    speech = say("three, eight, four, six, five, three, eight, four, six, five")
    assert len(speech) > 2 * 16000
    res = short.check_prompt(speech, digits_to_words("38465"))
    assert res.reason == TOO_LONG and res.transcript is None, res
    res = short.check_prompt(np.zeros(32000, np.int16), digits_to_words("38465"))
    assert res.reason == NO_SPEECH and res.transcript is None, res
    strict = Recognizer(SttConfig(backend="phonemes", min_speech_s=5), engine)
    res = strict.check_prompt(say("three"), digits_to_words("38465"))
    assert res.reason == TOO_SHORT and res.transcript is None, res
