"""pocketsphinx engine: JSGF grammars built per challenge, decoded while the person speaks.

Prompt check: ONE search over a grammar with two branches, the prompt itself and a free
loop of digit words (of any length). Path scores of two separate searches are not
comparable (pocketsphinx renormalises scores per frame within a search; subtracting them
gave ratios with no meaning), but within one search the best path is a proper
likelihood-ratio decision. The prompt branch carries a prior weight 10**prompt_bias, which
is the threshold: the answer passes when the best path spells the prompt.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from voxgate.stt.base import (
    DIGIT_WORDS,
    Engine,
    EngineStream,
    SttError,
    Transcript,
    words_to_digits,
)

if TYPE_CHECKING:
    from pocketsphinx import Decoder  # untyped: Any for mypy

log = logging.getLogger(__name__)

NO_MATCH = -1e9  # score when the prompt grammar finds no complete path


def prompt_grammar(words: tuple[str, ...]) -> str:
    body = " ".join(words)
    return f"#JSGF V1.0;\ngrammar prompt;\npublic <s> = {body};\n"


def digit_loop_grammar(count: int | None = None) -> str:
    """Digit words; exactly `count` of them, or one or more when count is None."""
    alts = " | ".join((*DIGIT_WORDS, "oh"))
    rule = " ".join(["<d>"] * count) if count else "<d>+"
    return f"#JSGF V1.0;\ngrammar digits;\n<d> = {alts};\npublic <s> = {rule};\n"


def _decoder(**kw: object) -> Decoder:
    from pocketsphinx import Decoder  # heavy import stays here

    try:
        # loglevel FATAL: pocketsphinx otherwise writes hundreds of lines to stderr.
        # bestpath off: the lattice pass cost ~250 ms after speech ended, for no gain here.
        dec = Decoder(samprate=16000, loglevel="FATAL", bestpath=False, **kw)
    except (RuntimeError, ValueError) as exc:
        raise SttError(f"pocketsphinx could not start: {exc}") from None
    return dec


def _plain(x: float) -> str:
    """A JSGF weight: plain decimal (the parser does not read exponents)."""
    return f"{x:.12f}".rstrip("0").rstrip(".") or "0"


def check_grammar(words: tuple[str, ...], bias_log10: float) -> str:
    """Prompt branch (weight 10**bias) against a free loop of digit words (weight 1).

    No "oh" for zero on either side: this engine heard "two" as "oh" (espeak-ng, 2 of 80
    answers accepted with a "two" for the prompt's zero) and "oh" itself barely better
    than without it (10 of 80 against 9), so it cannot tell the two apart."""
    prompt = " ".join(words)
    alts = " | ".join(DIGIT_WORDS)
    weight = 10.0**bias_log10
    return (
        f"#JSGF V1.0;\ngrammar check;\n<d> = {alts};\n"
        f"public <s> = /{_plain(weight)}/ ( {prompt} ) | /1/ ( <d>+ );\n"
    )


class PocketsphinxEngine(Engine):
    name = "pocketsphinx"

    def __init__(self, prompt_bias: float = 0.0) -> None:
        self.prompt_bias = prompt_bias
        self._dec = _decoder(lm=None)
        self._dec.add_jsgf_string("digits", digit_loop_grammar())
        self._cmn0 = self._dec.get_cmn(False)
        self._lm: Decoder | None = None  # the general English decoder, loaded on first use
        self._serial = 0
        self._dec_search: str | None = None  # the prompt search still in the decoder

    def transcribe(self, pcm: np.ndarray, digits_only: bool = False) -> Transcript:
        if digits_only:
            dec = self._dec
            dec.activate_search("digits")
        else:
            if self._lm is None:
                self._lm = _decoder()
            dec = self._lm
        words = _decode(dec, pcm, self._cmn0)[1]
        return Transcript(" ".join(words), words_to_digits(words), self.name)

    def start_prompt(self, words: tuple[str, ...], bias: float | None = None) -> EngineStream:
        for w in words:
            if self._dec.lookup_word(w) is None:
                raise SttError(f"'{w}' is not in the pocketsphinx dictionary")
        # One prompt search at a time: an attempt that ended without finish() (timed out,
        # aborted) left its search behind, about 0.4 MB each, so drop it before adding one.
        self._drop_stale_search()
        self._serial += 1
        name = f"check{self._serial}"
        try:
            self._dec.add_jsgf_string(
                name, check_grammar(words, self.prompt_bias if bias is None else bias)
            )
        except ValueError as exc:
            raise SttError(f"pocketsphinx refused the prompt grammar: {exc}") from None
        self._dec.activate_search(name)
        self._dec_search = name
        return _PsStream(self, words)

    def _drop_stale_search(self) -> None:
        # Tracked here: Decoder.current_search() crashes when no search was ever activated.
        if self._dec_search is not None:
            self._dec.activate_search("digits")
            self._dec.remove_search(self._dec_search)
            self._dec_search = None


def _decode(dec: Decoder, pcm: np.ndarray, cmn0: str) -> tuple[float, tuple[str, ...]]:
    # Every answer starts from the same cepstral mean, so results never depend on what
    # was decoded before (a carried-over mean changed later answers' words).
    dec.set_cmn(cmn0)
    dec.start_utt()
    dec.process_raw(np.ascontiguousarray(pcm, dtype=np.int16).tobytes(), False, True)
    dec.end_utt()
    return _read(dec)


def _read(dec: Decoder) -> tuple[float, tuple[str, ...]]:
    hyp = dec.hyp()
    if hyp is None:
        return NO_MATCH, ()
    # Grammar searches report null transitions as empty words and silence as <sil>.
    words = tuple(s.word.split("(")[0] for s in dec.seg())  # "zero(2)" -> "zero"
    words = tuple(w for w in words if w and not w.startswith(("<", "[", "+")))
    return 0.0, words


class _PsStream(EngineStream):
    """Buffers the answer and decodes it whole at the end.

    pocketsphinx's live cepstral mean starts from a generic guess and needs several
    utterances to settle (the first answers after start-up decoded as garbage), while a
    whole-utterance decode normalises on the answer itself. The caller bounds the length.
    """

    def __init__(self, engine: PocketsphinxEngine, words: tuple[str, ...]) -> None:
        self.engine, self.words = engine, words
        self.search = engine._dec_search
        self.parts: list[np.ndarray] = []
        self.finished = False

    def push(self, pcm: np.ndarray) -> None:
        self.parts.append(np.asarray(pcm, dtype=np.int16))

    def finish(self) -> tuple[float, str]:
        e = self.engine
        if self.finished:
            raise SttError("finish() called twice")
        self.finished = True
        if e._dec_search != self.search:
            raise SttError("this prompt was replaced by a newer one before it was finished")
        pcm = np.concatenate(self.parts) if self.parts else np.zeros(0, np.int16)
        heard: tuple[str, ...] = ()
        try:
            if len(pcm):
                e._dec.activate_search(self.search)  # transcribe() may have switched it
                _, heard = _decode(e._dec, pcm, e._cmn0)
        finally:
            e._drop_stale_search()
        # Binary by construction: 1 when the prompt is the best path under the prior.
        return (1.0 if heard == self.words else -1.0), " ".join(heard)
