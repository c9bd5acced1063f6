"""On-device speech-to-text for the spoken challenge: phonemes (hama; the default where it runs),
pocketsphinx, DeepSpeech TFLite.

`load_recognizer(cfg)` gives a Recognizer with `transcribe`, `check_prompt` and the streaming
`start(words).push()/.finish()`. Raises SttError for a missing or wrong model.
"""

from __future__ import annotations

import logging

from voxgate.config.stt import SttConfig
from voxgate.stt.base import (
    DIGIT_WORDS,
    LivenessResult,
    PromptStream,
    SttError,
    Transcript,
    digits_to_words,
    words_to_digits,
)
from voxgate.stt.recognizer import Recognizer
from voxgate.stt.templates import DigitTemplates, TemplateError, templates_from_takes

log = logging.getLogger(__name__)


def load_recognizer(cfg: SttConfig | None = None) -> Recognizer:
    cfg = cfg or SttConfig()
    if cfg.backend == "deepspeech":
        from voxgate.stt.deepspeech_backend import DeepSpeechEngine

        return Recognizer(cfg, DeepSpeechEngine(cfg))
    if cfg.backend in ("phonemes", "auto"):
        from voxgate.stt.phoneme_backend import PhonemeEngine

        try:
            return Recognizer(cfg, PhonemeEngine())
        except SttError as exc:
            if cfg.backend == "phonemes":
                raise
            log.warning("speech engine: %s; using pocketsphinx", exc)
    from voxgate.stt.pocketsphinx_backend import PocketsphinxEngine

    return Recognizer(cfg, PocketsphinxEngine(cfg.pocketsphinx_prompt_bias))


__all__ = [
    "DIGIT_WORDS",
    "DigitTemplates",
    "LivenessResult",
    "PromptStream",
    "Recognizer",
    "SttError",
    "TemplateError",
    "Transcript",
    "digits_to_words",
    "load_recognizer",
    "templates_from_takes",
    "words_to_digits",
]
