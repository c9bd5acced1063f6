"""The Recognizer the daemon uses: an engine plus the per-user template check.

Order of checks for one answer: enough speech? not too long? then, for digit prompts that
the user's enrolled templates cover, the template aligner decides; otherwise the engine's
likelihood-ratio score does.
"""

from __future__ import annotations

import logging

import numpy as np

from voxgate.config.stt import SttConfig
from voxgate.stt.base import (
    NO_SPEECH,
    PROMPT_MISMATCH,
    TOO_LONG,
    TOO_SHORT,
    Engine,
    LivenessResult,
    PromptStream,
    SttError,
    Transcript,
    check_pcm,
    words_to_digits,
)
from voxgate.stt.dtw import StreamingAligner
from voxgate.stt.mfcc import SAMPLE_RATE
from voxgate.stt.templates import DigitTemplates, FrontEnd

log = logging.getLogger(__name__)

WRONG_COUNT = "wrong_digit_count"


class Recognizer:
    def __init__(self, cfg: SttConfig, engine: Engine) -> None:
        self.cfg = cfg
        self.engine = engine

    @property
    def name(self) -> str:
        return self.engine.name

    def transcribe(self, pcm: np.ndarray, digits_only: bool = True) -> Transcript:
        return self.engine.transcribe(check_pcm(pcm), digits_only=digits_only)

    def start(
        self, words: tuple[str, ...], user_templates: DigitTemplates | None = None
    ) -> PromptStream:
        if not words:
            raise ValueError("empty prompt")
        return _Stream(self, tuple(w.lower() for w in words), user_templates)

    def check_words(self, words: tuple[str, ...]) -> None:
        """Raise SttError when the engine cannot score a prompt of these words (a word not in
        its dictionary, letters it cannot spell): for a passphrase, checked at start-up and
        at a reload instead of aborting every attempt."""
        try:
            self.engine.start_prompt(tuple(w.lower() for w in words)).finish()
        except (SttError, ValueError) as exc:
            raise SttError(
                f"the {self.name} engine cannot check {' '.join(words)!r}: {exc}"
            ) from None

    def check_prompt(
        self,
        pcm: np.ndarray,
        words: tuple[str, ...],
        user_templates: DigitTemplates | None = None,
    ) -> LivenessResult:
        stream = self.start(words, user_templates)
        stream.push(check_pcm(pcm))
        return stream.finish()


class _Stream(PromptStream):
    def __init__(
        self, rec: Recognizer, words: tuple[str, ...], templates: DigitTemplates | None
    ) -> None:
        self.cfg = rec.cfg
        self.words = words
        self.digits = words_to_digits(words)
        self.engine_name = rec.engine.name
        self.samples = 0
        self.max_samples = int(self.cfg.max_answer_s * SAMPLE_RATE)
        self.front = FrontEnd()
        self.aligner: StreamingAligner | None = None
        if (
            self.cfg.use_templates
            and templates is not None
            and self.digits is not None
            and templates.covers(self.digits)
        ):
            refs, labels = templates.flat()
            self.aligner = StreamingAligner(refs, labels, self.digits)
        elif templates is not None and self.digits is not None:
            log.info("templates do not cover prompt digits; using %s alone", rec.engine.name)
        # The template check decides on its own (and names the digits it heard), so the
        # engine only runs without one: half the CPU, and no engine wait after speech ends.
        self.engine = None if self.aligner else rec.engine.start_prompt(words)

    def push(self, pcm: np.ndarray) -> None:
        pcm = check_pcm(pcm)
        room = self.max_samples - self.samples
        self.samples += len(pcm)
        if room <= 0:
            return  # past the limit: count it, decode nothing (bounded work)
        pcm = pcm[:room]
        feats = self.front.push(pcm)
        if self.aligner is not None and len(feats):
            self.aligner.push(feats)
        if self.engine is not None:
            self.engine.push(pcm)

    def _result(
        self, ok: bool, score: float, thr: float, heard: str | None, reason: str | None, method: str
    ) -> LivenessResult:
        if self.digits is None:
            # A passphrase: what was heard spells the secret (IPA, words); kept nowhere.
            heard = None
        res = LivenessResult(bool(ok), float(score), float(thr), heard, reason, method)
        log.info(
            "prompt check (%s): ok=%s score=%.3f threshold=%.3f heard=%r reason=%s",
            method,
            ok,
            score,
            thr,
            heard,
            reason,
        )
        return res

    def finish(self) -> LivenessResult:
        feats = self.front.flush()
        if self.aligner is not None and len(feats):
            self.aligner.push(feats)
        # A retry is decided before the engine decodes anything: its reading would change
        # nothing, and a long answer took seconds to decode (the phonemes engine reads the
        # whole answer at once). An unfinished engine stream is dropped with it.
        if self.samples > self.max_samples:
            return self._result(False, 0.0, 0.0, None, TOO_LONG, "checks")
        speech_s = self.front.speech_frames * self.front.spec.step / SAMPLE_RATE
        if speech_s < self.cfg.min_speech_s:
            reason: str | None = NO_SPEECH if speech_s < 0.05 else TOO_SHORT
            return self._result(False, 0.0, 0.0, None, reason, "checks")
        score, heard = self.engine.finish() if self.engine else (0.0, None)
        if self.aligner is not None:
            a = self.aligner.finish()
            thr = -self.cfg.template_threshold
            score = -a.margin if a.frames else float("-inf")
            # The margin is per frame, so one digit more or fewer than the prompt cost little:
            # about a quarter of such answers passed (benchmark). The free reading counts.
            wrong_count = self.digits is not None and len(a.free_digits) != len(self.digits)
            ok = score >= thr and not wrong_count
            reason = None if ok else WRONG_COUNT if wrong_count else PROMPT_MISMATCH
            return self._result(ok, score, thr, a.free_digits, reason, "templates")
        # pocketsphinx decides inside its search (score +1/-1, the prior is its threshold).
        thr = {
            "pocketsphinx": 0.0,
            "phonemes": self.cfg.phonemes_phrase_threshold
            if self.engine is not None and self.engine.phrase
            else self.cfg.phonemes_threshold,
        }.get(self.engine_name, self.cfg.deepspeech_threshold)
        ok = score >= thr
        reason = None
        if not ok:
            heard_digits = words_to_digits(tuple((heard or "").split())) if heard else None
            wrong_count = (
                self.digits is not None
                and heard_digits is not None
                and len(heard_digits) != len(self.digits)
            )
            reason = WRONG_COUNT if wrong_count else PROMPT_MISMATCH
        return self._result(ok, score, thr, heard, reason, self.engine_name)
