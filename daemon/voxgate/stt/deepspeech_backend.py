"""DeepSpeech 0.9.3 (TFLite) engine on LiteRT, with this project's own front end.

DeepSpeech is archived upstream and its wheels stop at Python 3.9, and its API gives text
only (no per-frame probabilities), so the prompt check runs the same .tflite acoustic graph
directly on LiteRT: MFCC (26 cepstra, 32 ms window, 20 ms step), windows of +-9 frames of
context, 16-step chunks, LSTM state carried from chunk to chunk. Tensor names and shapes are
read from the model file, not assumed. The user supplies the model (docs/challenge.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from voxgate.config.stt import SttConfig
from voxgate.embedding.card import sha256_file
from voxgate.stt import ctc
from voxgate.stt.base import (
    DIGIT_WORDS,
    Engine,
    EngineStream,
    SttError,
    Transcript,
    words_to_digits,
)
from voxgate.stt.mfcc import DEEPSPEECH, mfcc, n_frames

log = logging.getLogger(__name__)

INPUTS = ("input_node", "previous_state_c", "previous_state_h")
OUTPUTS = ("logits", "new_state_c", "new_state_h")
FREE_WORDS = [*DIGIT_WORDS, "oh"]


class AcousticModel:
    """The .tflite acoustic graph: feed (steps, 2C+1, n_input) windows, get probabilities."""

    def __init__(
        self, path: Path, sha256: str | None = None, threads: int = 1, xnnpack: bool = False
    ) -> None:
        path = Path(path)
        if path.is_dir():
            raise SttError(
                f"stt.deepspeech_model {path} is a folder, not the .tflite file: name the file "
                "(e.g. deepspeech-0.9.3-models.tflite) inside it"
            )
        if not path.is_file():
            raise SttError(
                f"stt.deepspeech_model {path} does not exist: download DeepSpeech 0.9.3's "
                "deepspeech-0.9.3-models.tflite (see docs/challenge.md)"
            )
        if sha256 is not None:
            got = sha256_file(path)
            if got != sha256:
                raise SttError(
                    f"stt.deepspeech_model {path}: sha256 {got} differs from "
                    f"stt.deepspeech_sha256 {sha256} (wrong or damaged file)"
                )
        try:
            from ai_edge_litert.interpreter import Interpreter, OpResolverType
        except ImportError:
            raise SttError(
                "backend deepspeech needs ai-edge-litert (pip install voxgate[litert])"
            ) from None
        try:
            # XNNPACK unpacks the int8 weights of the release model to float: ~590 MB
            # resident instead of ~60 MB, for ~25 % faster chunks (docs/challenge.md).
            resolver = (
                OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            )
            self.it = Interpreter(
                model_path=str(path),
                num_threads=threads,
                experimental_op_resolver_type=resolver,
            )
            self.it.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise SttError(
                f"stt.deepspeech_model {path}: not a usable .tflite file ({exc})"
            ) from None
        ins = {d["name"]: d for d in self.it.get_input_details()}
        outs = {d["name"]: d for d in self.it.get_output_details()}
        missing = [n for n in INPUTS if n not in ins] + [n for n in OUTPUTS if n not in outs]
        if missing:
            raise SttError(
                f"stt.deepspeech_model {path}: not a DeepSpeech streaming graph "
                f"(missing tensors {', '.join(missing)}; "
                f"has {', '.join(sorted(ins) + sorted(outs))})"
            )
        shape = [int(x) for x in ins["input_node"]["shape"]]
        if len(shape) != 4 or shape[0] != 1 or shape[2] % 2 != 1:
            raise SttError(
                f"stt.deepspeech_model {path}: input_node shape {shape} is not "
                "[1, steps, 2*context+1, features]"
            )
        self.steps, width, self.n_input = shape[1], shape[2], shape[3]
        self.context = (width - 1) // 2
        self.state_shape = tuple(int(x) for x in ins["previous_state_c"]["shape"])
        self.classes = int(outs["logits"]["shape"][-1])
        if self.n_input != DEEPSPEECH.n_ceps:
            raise SttError(
                f"stt.deepspeech_model {path}: expects {self.n_input} features per "
                f"frame; this front end makes {DEEPSPEECH.n_ceps}"
            )
        if self.classes != len(ctc.ALPHABET) + 1:
            raise SttError(
                f"stt.deepspeech_model {path}: {self.classes} output classes; the "
                f"English alphabet needs {len(ctc.ALPHABET) + 1}"
            )
        self.idx = {n: ins[n]["index"] for n in INPUTS} | {n: outs[n]["index"] for n in OUTPUTS}
        log.info(
            "DeepSpeech model %s: %d steps x %d frames x %d features, state %s",
            path,
            self.steps,
            width,
            self.n_input,
            self.state_shape,
        )

    def zero_state(self) -> tuple[np.ndarray, np.ndarray]:
        z = np.zeros(self.state_shape, dtype=np.float32)
        return z, z.copy()

    def run(
        self, windows: np.ndarray, c: np.ndarray, h: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """windows (n <= steps, 2C+1, n_input) -> probs (n, classes), new c, new h."""
        n = len(windows)
        batch = np.zeros((1, self.steps, *windows.shape[1:]), dtype=np.float32)
        batch[0, :n] = windows
        it = self.it
        it.set_tensor(self.idx["input_node"], batch)
        it.set_tensor(self.idx["previous_state_c"], c)
        it.set_tensor(self.idx["previous_state_h"], h)
        it.invoke()
        probs = it.get_tensor(self.idx["logits"]).reshape(self.steps, -1)[:n].copy()
        return (
            probs,
            it.get_tensor(self.idx["new_state_c"]).copy(),
            it.get_tensor(self.idx["new_state_h"]).copy(),
        )


class AcousticStream:
    """Audio in, per-frame log-probabilities out, computed chunk by chunk while audio arrives."""

    def __init__(
        self, model: AcousticModel, listener: Callable[[np.ndarray], None] | None = None
    ) -> None:
        self.m = model
        self.listener = listener  # gets each chunk's log-probabilities as soon as it exists
        self.buf = np.zeros(0, dtype=np.int16)
        # DeepSpeech starts each stream with `context` zero frames of left context.
        self.frames: list[np.ndarray] = [np.zeros(model.n_input, np.float32)] * model.context
        self.used = 0  # windows already sent to the model
        self.c, self.h = model.zero_state()
        self.out: list[np.ndarray] = []

    def push(self, pcm: np.ndarray) -> None:
        self.buf = np.concatenate([self.buf, np.asarray(pcm, dtype=np.int16)])
        count = n_frames(len(self.buf), DEEPSPEECH)
        if count:
            used = (count - 1) * DEEPSPEECH.step + DEEPSPEECH.win
            self.frames.extend(mfcc(self.buf[:used], DEEPSPEECH).astype(np.float32))
            self.buf = self.buf[count * DEEPSPEECH.step :]
        self._run(final=False)

    def _run(self, final: bool) -> None:
        width = 2 * self.m.context + 1
        ready = len(self.frames) - width + 1 - self.used  # windows with full context
        while ready >= self.m.steps or (final and ready > 0):
            n = min(ready, self.m.steps)
            stack = np.array(self.frames[self.used : self.used + n + width - 1])
            win = np.lib.stride_tricks.sliding_window_view(stack, width, axis=0)
            windows = np.transpose(win, (0, 2, 1))  # (n, width, n_input)
            probs, self.c, self.h = self.m.run(windows, self.c, self.h)
            logp = ctc.to_log_probs(probs)
            self.out.append(logp)
            if self.listener is not None:
                self.listener(logp)
            self.used += n
            ready -= n

    def finish(self) -> np.ndarray:
        """The rest (right context padded with zero frames); (T, classes) log-probabilities."""
        self.frames.extend([np.zeros(self.m.n_input, np.float32)] * self.m.context)
        self._run(final=True)
        if not self.out:
            return np.zeros((0, self.m.classes))
        return np.concatenate(self.out)


def _native_model(path: Path) -> Any:  # a deepspeech.Model (untyped package) or None
    """The upstream `deepspeech-tflite` package, when it imports (Python <= 3.9 only).

    It is used for free transcription only: its API returns text, not the per-frame
    probabilities the prompt check needs, so prompts are always scored on LiteRT.
    Not exercised in this project's CI (no wheel for Python 3.10+).
    """
    try:
        import deepspeech  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        return deepspeech.Model(str(path))
    except (RuntimeError, ValueError) as exc:
        log.warning("deepspeech package present but could not load %s: %s", path, exc)
        return None


class DeepSpeechEngine(Engine):
    name = "deepspeech"

    def __init__(self, cfg: SttConfig) -> None:
        if cfg.deepspeech_model is None:
            raise SttError("stt.backend is deepspeech but stt.deepspeech_model is not set")
        self.cfg = cfg
        self.model = AcousticModel(
            cfg.deepspeech_model, cfg.deepspeech_sha256, xnnpack=cfg.deepspeech_xnnpack
        )
        self._native = _native_model(cfg.deepspeech_model)

    def _log_probs(self, pcm: np.ndarray) -> np.ndarray:
        s = AcousticStream(self.model)
        s.push(pcm)
        return s.finish()

    def transcribe(self, pcm: np.ndarray, digits_only: bool = False) -> Transcript:
        logp = self._log_probs(pcm)
        if digits_only:
            words, _ = ctc.beam_decode(logp, FREE_WORDS, self.cfg.deepspeech_beam)
            text = " ".join(words)
        elif self._native is not None:
            text = self._native.stt(np.asarray(pcm, dtype=np.int16))
        else:
            text = ctc.greedy(logp)
        return Transcript(text, words_to_digits(text.split()), self.name)

    def start_prompt(self, words: tuple[str, ...]) -> EngineStream:
        for w in words:
            ctc.encode(w)  # raises ValueError for characters the model cannot spell
        return _DsStream(self, words)


class _DsStream(EngineStream):
    """Scores the prompt while audio arrives: each model chunk feeds the CTC forward pass
    of the prompt and the constrained beam search at once, so little is left at the end."""

    def __init__(self, engine: DeepSpeechEngine, words: tuple[str, ...]) -> None:
        self.words = words
        self.digits = words_to_digits(words) is not None
        classes = engine.model.classes
        readings = {" ".join(words)}
        if self.digits:  # "zero" may also be said "oh": score the likelier reading
            readings.add(" ".join("oh" if w == "zero" else w for w in words))
        self.prompts = [ctc.Forward(ctc.encode(r), classes) for r in sorted(readings)]
        self.beam = ctc.PrefixBeam(FREE_WORDS, engine.cfg.deepspeech_beam)
        self.frames = 0
        self.stream = AcousticStream(engine.model, self._consume)

    def _consume(self, logp: np.ndarray) -> None:
        self.frames += len(logp)
        for f in self.prompts:
            f.push(logp)
        if self.digits:
            self.beam.push(logp)

    def push(self, pcm: np.ndarray) -> None:
        self.stream.push(pcm)

    def finish(self) -> tuple[float, str]:
        logp = self.stream.finish()
        if self.frames == 0:
            return ctc.NEG, ""
        prompt = max(f.result() for f in self.prompts)
        if self.digits:
            free_words, free = self.beam.result()
            heard = " ".join(free_words)
        else:
            heard = ctc.greedy(logp)
            free = ctc.best_path_log_prob(logp)
        return ctc.prompt_ratio(prompt, free, len(self.words)), heard
