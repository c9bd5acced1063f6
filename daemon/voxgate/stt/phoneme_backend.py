"""Phoneme engine: the speaker-independent phoneme recogniser that ships inside the PyPI
package `hama` (Apache-2.0; its `asr_waveform` model, run by the package's own native
library), with the digit words spelled in its phoneme set.

The model maps 16 kHz audio to log-probabilities over its IPA tokens, a word-boundary token
and the CTC blank, one row per 20 ms. The prompt check is a likelihood ratio per word: the
probability of the prompt (every spelling and alignment) against that of any digit string,
both summed exactly over small word graphs (`graph`).

The model reads its whole input at once (it looks far in both directions: run in
overlapping windows while the person spoke, it accepted far fewer genuine answers), so an
answer is decoded once the person has stopped: about 80 ms per second of audio on one x86
core, several times that on a Raspberry Pi. The daemon declares the end of an utterance only
after the VAD's hang-over (0.5 s of quiet by default); the decode starts in the background as
soon as a quarter second of quiet follows speech, so in the usual case only the searches are
left when the utterance ends (`_Answer`).
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

import numpy as np

from voxgate.stt import ctc, graph
from voxgate.stt.base import (
    DIGIT_WORDS,
    Engine,
    EngineStream,
    SttError,
    Transcript,
    words_to_digits,
)

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000

# Each digit word as the model's tokens. The model was trained on transcripts phonemised by
# hama's own G2P, which spells some English words oddly ("one" letter by letter, "two" with a
# w), so each word has that spelling (`hama.G2PModel`, checked by the tests) and, where it
# differs, the dictionary one.
LEXICON: dict[str, tuple[str, ...]] = {
    "zero": ("z ɛ ɹ oʊ", "z ɪ ɹ oʊ"),
    "one": ("o n e", "w ʌ n"),
    "two": ("t w oʊ", "t u"),
    "three": ("θ ɹ i",),
    "four": ("f ɔ ɹ",),
    "five": ("f aɪ v",),
    "six": ("s ɪ k s",),
    "seven": ("s ɛ v ə n",),
    "eight": ("eɪ t",),
    "nine": ("n aɪ n",),
}
# "oh" for zero: one vowel, also the end of "two", "no", "go". Read into a prompt's zero it
# let "two" pass for zero (ratio about -1.1 against the threshold -1.4, espeak-ng), so it
# counts only when the best readings with and without "oh" agree on the prompt (_oh_score).
OH = ("oʊ",)
BLOCK = 320  # 20 ms: the unit of the quiet detector
QUIET_RMS = 180.0  # int16 RMS of a block below this is quiet (about -45 dBFS)
QUIET_BLOCKS = 13  # ~0.25 s of quiet after speech starts the background decode
WORD_BOUNDARY = "<wb>"
# What an English spelling may contain: IPA letters and their modifiers, not tone marks,
# digits or spaces (which the G2P gives for words it takes for another language).
PHONE_RE = re.compile(r"^[a-zæçðŋœøɐ-ʯβθχˈˌːʰʲʷ̩̃͡]+$")
BLANK = "<blank>"


def load_model() -> Any:
    """hama's ASR model object (its `session` runs the network). SttError when unusable."""
    try:
        from hama import ASRModel
    except ImportError as exc:
        raise SttError(
            f"stt.backend phonemes needs the 'hama' package, a dependency of voxgate ({exc}); "
            "reinstall voxgate, or pip install hama==1.7.0"
        ) from None
    try:
        return ASRModel()
    except Exception as exc:  # its native library is missing on this platform, or a bad asset
        raise SttError(
            f"stt.backend phonemes: hama cannot load its model here ({exc}); hama ships its "
            "engine for 64-bit Linux (x86_64, aarch64) and macOS only: use stt.backend: "
            "pocketsphinx"
        ) from None


class PhonemeEngine(Engine):
    name = "phonemes"

    def __init__(self, model: Any = None) -> None:
        self.model = model if model is not None else load_model()
        self.session = self.model.session
        tokens = list(self.model.decoder_tokens)
        if not tokens or tokens[-1] != BLANK or WORD_BOUNDARY not in tokens:
            raise SttError("stt.backend phonemes: hama's token list is not the expected one")
        self.classes = len(tokens)
        self.index = index = {t: i for i, t in enumerate(tokens)}
        self.blank = self.classes - 1
        self.boundary = index[WORD_BOUNDARY]
        self._g2p: Any = None
        # ctc.greedy spells in one-character symbols, words split at " ": the word boundary
        # token becomes " ", every other token a private-use character (passphrase logs).
        self.alphabet = "".join(
            " " if t == WORD_BOUNDARY else chr(0xE000 + i) for i, t in enumerate(tokens[:-1])
        )
        self.token_of = dict(zip(self.alphabet, tokens[:-1], strict=True))
        self._spelled: dict[tuple[str, ...], list[int]] = {}
        self.forms: dict[str, list[list[int]]] = {}  # digit word -> its spellings
        for word, forms in LEXICON.items():
            for form in forms:
                missing = [p for p in form.split() if p not in index]
                if missing:
                    raise SttError(f"stt.backend phonemes: the model has no token {missing[0]!r}")
            self.forms[word] = [[index[p] for p in form.split()] for form in forms]
        self.loop = graph.loop_graph(self.forms, self.boundary, self.blank)
        self.oh = [[index[p] for p in form.split()] for form in OH]
        self.loop_oh = graph.loop_graph({**self.forms, "oh": self.oh}, self.boundary, self.blank)
        self._run_lock = threading.Lock()  # one model run at a time (background decodes)
        probe = self.log_probs(np.zeros(SAMPLE_RATE // 2, np.float32))
        if probe.ndim != 2 or probe.shape[1] != self.classes:
            raise SttError(f"stt.backend phonemes: unexpected model output shape {probe.shape}")

    def log_probs(self, audio: np.ndarray) -> np.ndarray:
        """(rows, classes) log-probabilities for float audio in [-1, 1]."""
        wav = np.ascontiguousarray(audio, dtype=np.float32).reshape(1, -1)
        with self._run_lock:
            lp, n = self.session.run(
                ["log_probs", "out_lengths"],
                {"waveform": wav, "waveform_lengths": np.array([wav.shape[1]], np.int64)},
            )
        rows = int(np.asarray(n).reshape(-1)[0])
        return np.asarray(lp, dtype=np.float64)[0, :rows]

    def transcribe(self, pcm: np.ndarray, digits_only: bool = False) -> Transcript:
        logp = self.log_probs(np.asarray(pcm, np.float32) / 32768.0)
        text = " ".join(self.loop.best(logp)[0])
        return Transcript(text, words_to_digits(text.split()), self.name)

    def spell(self, words: tuple[str, ...]) -> list[int]:
        """Token ids of a phrase as hama's G2P spells it, word boundaries between words (the
        passphrase check; digit prompts use LEXICON)."""
        # Letters only: with punctuation ("gate.") hama's G2P switches to another language's
        # rules and spells tone marks, and the phrase was then denied to everyone.
        clean = tuple(w for w in (re.sub(r"[^a-z']", "", w.lower()) for w in words) if w)
        if clean in self._spelled:
            return self._spelled[clean]
        if not clean:
            raise ValueError("the passphrase has no letters to spell")
        if self._g2p is None:
            from hama import G2PModel

            self._g2p = G2PModel()
        labels: list[int] = []
        for word in clean:
            tokens = [a.phoneme for a in self._g2p.predict(word).alignments]
            odd = [t for t in tokens if t not in self.index or not PHONE_RE.match(t)]
            if odd or not tokens:
                raise ValueError(f"the phonemes engine cannot spell {word!r} (got {tokens})")
            if labels:
                labels.append(self.index[WORD_BOUNDARY])
            labels += [self.index[t] for t in tokens]
        self._spelled[clean] = labels
        return labels

    def start_prompt(self, words: tuple[str, ...]) -> EngineStream:
        if all(w in LEXICON for w in words):
            return _PromptStream(self, words)
        return _PhraseStream(self, words)


class _Answer:
    """An answer's audio, and its log-probabilities once it is over.

    While audio comes in, 20 ms blocks are sorted into loud and quiet. When a quarter second
    of quiet follows speech, the audio so far is decoded on a background thread. finish()
    uses that result when nothing loud came after it (the rest is quiet, which only adds
    blank rows), and decodes everything itself otherwise.
    """

    def __init__(self, engine: PhonemeEngine) -> None:
        self.engine = engine
        self.parts: list[np.ndarray] = []
        self.n = 0
        self.loud_end = 0  # sample index just after the last loud block
        self.tail = np.zeros(0, np.int16)  # samples not yet in a whole block
        self.quiet_blocks = 0
        self.thread: threading.Thread | None = None
        self.upto = 0  # samples the background decode covers
        self.result: np.ndarray | None = None

    def push(self, pcm: np.ndarray) -> None:
        pcm = np.asarray(pcm, np.int16)
        self.parts.append(pcm)
        data = np.concatenate([self.tail, pcm]).astype(np.float32)
        whole = len(data) // BLOCK
        start = self.n - len(self.tail)
        self.n += len(pcm)
        self.tail = data[whole * BLOCK :].astype(np.int16)
        if whole:
            rms = np.sqrt((data[: whole * BLOCK].reshape(whole, BLOCK) ** 2).mean(axis=1))
            loud = np.flatnonzero(rms >= QUIET_RMS)
            if len(loud):
                self.loud_end = start + (int(loud[-1]) + 1) * BLOCK
                self.quiet_blocks = whole - 1 - int(loud[-1])
            else:
                self.quiet_blocks += whole
        if (
            self.loud_end > self.upto
            and self.quiet_blocks >= QUIET_BLOCKS
            and (self.thread is None or not self.thread.is_alive())
        ):
            self._start_background()

    def _start_background(self) -> None:
        audio = np.concatenate(self.parts).astype(np.float32) / 32768.0
        self.upto, self.result = len(audio), None

        def decode() -> None:
            try:
                self.result = self.engine.log_probs(audio)
            except Exception as exc:  # finish() then decodes in the foreground
                log.warning("background decode failed: %s", exc)

        self.thread = threading.Thread(target=decode, name="phonemes-decode", daemon=True)
        self.thread.start()

    def log_probs(self) -> np.ndarray | None:
        """The answer's rows; None when there was no audio at all."""
        if self.n == 0:
            return None
        if self.thread is not None:
            self.thread.join()
            if self.result is not None and self.upto >= self.loud_end:
                return self.result
        return self.engine.log_probs(np.concatenate(self.parts).astype(np.float32) / 32768.0)


class _AnswerStream(EngineStream):
    """Buffers the answer (_Answer); finish() scores its rows once the answer is over."""

    def __init__(self, engine: PhonemeEngine, words: tuple[str, ...]) -> None:
        self.engine = engine
        self.words = words
        self.answer = _Answer(engine)

    def push(self, pcm: np.ndarray) -> None:
        self.answer.push(pcm)

    def finish(self) -> tuple[float, str]:
        logp = self.answer.log_probs()
        if logp is None:
            return ctc.NEG, ""
        return self._score(logp)

    def _score(self, logp: np.ndarray) -> tuple[float, str]:
        raise NotImplementedError


class _PromptStream(_AnswerStream):
    def __init__(self, engine: PhonemeEngine, words: tuple[str, ...]) -> None:
        super().__init__(engine, words)
        self.graph = graph.prompt_graph(
            [engine.forms[w] for w in words], list(words), engine.boundary, engine.blank
        )
        self.graph_oh = (
            graph.prompt_graph(
                [engine.forms[w] + (engine.oh if w == "zero" else []) for w in words],
                list(words),
                engine.boundary,
                engine.blank,
            )
            if "zero" in words
            else None
        )

    def _score(self, logp: np.ndarray) -> tuple[float, str]:
        # Every reading counts on both sides (exact sums, no beam): the prompt's probability
        # against that of any digit string; the best digit string is what was heard.
        heard, _ = self.engine.loop.best(logp)
        score = self._ratio(logp, self.graph, self.engine.loop)
        if self.graph_oh is not None:
            return max((score, " ".join(heard)), self._oh_score(logp, heard))
        return score, " ".join(heard)

    def _oh_score(self, logp: np.ndarray, plain: list[str]) -> tuple[float, str]:
        """The prompt with "oh" allowed for zero; NO_READING unless the best reading of the
        answer, "oh" among the digit words, is the prompt itself, and the best reading
        without "oh" (`plain`) heard no other digit where it has an "oh".

        The second condition: real "two", "four" and "eight" (Speech Commands) read as a
        lone "oh" by the loop with "oh" in it, and then passed for zero (6 of 90 clips of
        other digits); the loop without "oh" heard them as what they were. A real "oh" it
        reads as nothing, or as "zero"."""
        assert self.graph_oh is not None
        heard, _ = self.engine.loop_oh.best(logp)
        if words_to_digits(heard) != words_to_digits(self.words):
            return ctc.NO_READING, " ".join(heard)
        if plain not in ([w for w in heard if w != "oh"], [*self.words]):
            return ctc.NO_READING, " ".join(heard)
        return self._ratio(logp, self.graph_oh, self.engine.loop_oh), " ".join(heard)

    def _ratio(
        self, logp: np.ndarray, prompt_graph: graph.WordGraph, loop: graph.WordGraph
    ) -> float:
        prompt = prompt_graph.forward(logp)
        free = loop.forward(logp)
        if prompt > free + 1e-6:
            # Impossible for exact sums (the loop holds the prompt): the loop's best reading
            # was lost to underflow. prompt_ratio would cap this at 0 and accept; deny.
            log.warning("prompt check: prompt %.1f above the digit loop %.1f", prompt, free)
            return ctc.NO_READING
        return ctc.prompt_ratio(prompt, free, len(self.words))


class _PhraseStream(_AnswerStream):
    """A fixed passphrase: its probability against the best path through any tokens."""

    phrase = True

    def __init__(self, engine: PhonemeEngine, words: tuple[str, ...]) -> None:
        super().__init__(engine, words)
        self.labels = engine.spell(words)

    def _score(self, logp: np.ndarray) -> tuple[float, str]:
        prompt = ctc.sequence_log_prob(logp, self.labels)
        free = ctc.best_path_log_prob(logp)
        heard = ctc.greedy(logp, self.engine.alphabet)
        heard = " ".join(
            "".join(self.engine.token_of.get(ch, "") for ch in w) for w in heard.split()
        )
        return ctc.prompt_ratio(prompt, free, len(self.words)), heard


__all__ = ["DIGIT_WORDS", "LEXICON", "OH", "PhonemeEngine"]
