"""pocketsphinx engine: JSGF grammars built per challenge, decoded while the person speaks.

The prompt score is a likelihood ratio: the path score of a grammar that only allows the
prompt minus the path score of a free grammar (any number of digit words; a phone loop for
passphrases), per 10 ms frame. Two decoders run side by side so both searches stream.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from voxgate.stt.base import (
    DIGIT_WORDS,
    Engine,
    EngineStream,
    SttError,
    Transcript,
    words_to_digits,
)

log = logging.getLogger(__name__)

NO_MATCH = -1e9  # score when the prompt grammar finds no complete path


def _word_alts(word: str) -> str:
    return "( zero | oh )" if word == "zero" else word


def prompt_grammar(words: tuple[str, ...]) -> str:
    body = " ".join(_word_alts(w) for w in words)
    return f"#JSGF V1.0;\ngrammar prompt;\npublic <s> = {body};\n"


def digit_loop_grammar(count: int | None = None) -> str:
    """Digit words; exactly `count` of them, or one or more when count is None."""
    alts = " | ".join((*DIGIT_WORDS, "oh"))
    rule = " ".join(["<d>"] * count) if count else "<d>+"
    return f"#JSGF V1.0;\ngrammar digits;\n<d> = {alts};\npublic <s> = {rule};\n"


def _decoder(**kw: object):  # type: ignore[no-untyped-def]
    from pocketsphinx import Decoder  # heavy import stays here

    try:
        # loglevel FATAL: pocketsphinx otherwise writes hundreds of lines to stderr.
        return Decoder(samprate=16000, loglevel="FATAL", **kw)
    except (RuntimeError, ValueError) as exc:
        raise SttError(f"pocketsphinx could not start: {exc}") from None


class PocketsphinxEngine(Engine):
    name = "pocketsphinx"

    def __init__(self) -> None:
        self._forced = _decoder(lm=None)
        self._free = _decoder(lm=None)
        self._free.add_jsgf_string("digits", digit_loop_grammar())
        from pocketsphinx import get_model_path

        self._free.add_allphone_file("phones", get_model_path("en-us-phone.lm.bin"))
        self._lm = None  # the general English decoder, loaded on first use
        self._serial = 0

    def _search(self, dec, grammar: str) -> None:  # type: ignore[no-untyped-def]
        self._serial += 1
        name = f"g{self._serial}"
        dec.add_jsgf_string(name, grammar)
        dec.activate_search(name)

    def transcribe(self, pcm: np.ndarray, digits_only: bool = False) -> Transcript:
        if digits_only:
            dec = self._free
            dec.activate_search("digits")
        else:
            if self._lm is None:
                self._lm = _decoder()
            dec = self._lm
        words = _decode(dec, pcm)[1]
        return Transcript(" ".join(words), words_to_digits(words), self.name)

    def start_prompt(self, words: tuple[str, ...]) -> EngineStream:
        for w in words:
            if self._forced.lookup_word(w) is None:
                raise SttError(f"'{w}' is not in the pocketsphinx dictionary")
        self._search(self._forced, prompt_grammar(words))
        digits = words_to_digits(words) is not None
        self._free.activate_search("digits" if digits else "phones")
        return _PsStream(self._forced, self._free, words)


def _decode(dec, pcm: np.ndarray) -> tuple[float, tuple[str, ...]]:  # type: ignore[no-untyped-def]
    dec.start_utt()
    dec.process_raw(np.ascontiguousarray(pcm, dtype=np.int16).tobytes(), False, True)
    dec.end_utt()
    return _read(dec)


def _read(dec) -> tuple[float, tuple[str, ...]]:  # type: ignore[no-untyped-def]
    hyp = dec.hyp()
    frames = max(1, dec.n_frames())
    if hyp is None or hyp.score <= 0:
        return NO_MATCH, ()
    words = tuple(s.word for s in dec.seg() if not s.word.startswith(("<", "[", "+")))
    words = tuple(w.split("(")[0] for w in words)  # "zero(2)" -> "zero"
    return dec.get_logmath().log(hyp.score) / frames, words


class _PsStream(EngineStream):
    def __init__(self, forced, free, words: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
        self.forced, self.free, self.words = forced, free, words
        self.frames = 0
        for dec in (forced, free):
            dec.start_utt()

    def push(self, pcm: np.ndarray) -> None:
        data = np.ascontiguousarray(pcm, dtype=np.int16).tobytes()
        for dec in (self.forced, self.free):
            dec.process_raw(data, False, False)

    def finish(self) -> tuple[float, str]:
        for dec in (self.forced, self.free):
            dec.end_utt()
        f_score, f_words = _read(self.forced)
        g_score, g_words = _read(self.free)
        heard = " ".join(g_words)
        # The forced search returns its best partial path when no complete one exists.
        spoken = tuple("zero" if w == "oh" else w for w in f_words)
        if f_score == NO_MATCH or spoken != self.words:
            return NO_MATCH, heard
        if g_score == NO_MATCH:
            return 0.0, heard
        score = f_score - g_score
        return (score if math.isfinite(score) else NO_MATCH), heard
