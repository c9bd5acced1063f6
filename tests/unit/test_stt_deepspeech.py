"""DeepSpeech path on LiteRT with the tiny test model (models/deepspeech/tiny.tflite).

The tiny model has DeepSpeech 0.9.3's tensors but random weights: these tests check the
plumbing (names/shapes read from the file, context windows, 16-step chunks, LSTM state
carried across chunks, CTC decoding, errors), not recognition accuracy.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from voxgate.config.stt import SttConfig
from voxgate.stt import SttError, digits_to_words, load_recognizer
from voxgate.stt.mfcc import DEEPSPEECH, mfcc

pytest.importorskip("ai_edge_litert")

MODEL = Path(__file__).resolve().parents[2] / "models" / "deepspeech" / "tiny.tflite"
WEIGHTS = MODEL.with_name("tiny_weights.npz")


def reference_log_probs(pcm: np.ndarray) -> np.ndarray:
    """The tiny network in plain numpy over the whole utterance at once (no chunks)."""
    w = dict(np.load(WEIGHTS))
    feats = mfcc(pcm, DEEPSPEECH)
    pad = np.concatenate([np.zeros((9, 26)), feats, np.zeros((9, 26))])
    windows = np.stack([pad[t : t + 19] for t in range(len(feats))])
    x = np.maximum(windows.reshape(len(feats), -1) @ w["w_in"] + w["b_in"], 0)
    state = w["w_h"].shape[0]
    c = np.zeros(state)
    h = np.zeros(state)
    out = []

    def sig(v: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-v))

    for t in range(len(x)):
        i, j, f, o = np.split(x[t] @ w["w_x"] + h @ w["w_h"] + w["b"], 4)
        c = sig(f + 1.0) * c + sig(i) * np.tanh(j)
        h = sig(o) * np.tanh(c)
        y = h @ w["w_out"] + w["b_out"]
        out.append(y - np.log(np.exp(y - y.max()).sum()) - y.max())
    return np.array(out)


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    env = np.abs(np.sin(np.linspace(0, 9 * np.pi, n)))
    return (rng.normal(0, 4000, n) * env).astype(np.int16)


@pytest.fixture(scope="module")
def cfg() -> SttConfig:
    return SttConfig(backend="deepspeech", deepspeech_model=MODEL)


def test_model_shapes_are_read_from_the_file(cfg: SttConfig) -> None:
    rec = load_recognizer(cfg)
    m = rec.engine.model  # type: ignore[attr-defined]
    assert (m.steps, m.context, m.n_input, m.classes) == (16, 9, 26, 29)
    assert m.state_shape == (1, 8)  # the tiny model's state, not the real model's 2048


@pytest.mark.parametrize("piece", [160, 480, 7777])
def test_streamed_chunks_equal_the_whole_utterance_network(cfg: SttConfig, piece: int) -> None:
    from voxgate.stt.deepspeech_backend import AcousticStream

    rec = load_recognizer(cfg)
    pcm = speechlike(2.3)  # 114 frames: 7 full chunks and a partial one
    stream = AcousticStream(rec.engine.model)  # type: ignore[attr-defined]
    for i in range(0, len(pcm), piece):
        stream.push(pcm[i : i + piece])
    got = stream.finish()
    want = reference_log_probs(pcm)
    assert got.shape == want.shape
    assert np.allclose(got, want, atol=1e-3)


def test_prompt_check_and_transcribe_run_end_to_end(cfg: SttConfig) -> None:
    rec = load_recognizer(cfg)
    pcm = speechlike(2.0)
    res = rec.check_prompt(pcm, digits_to_words("4711"))
    assert res.method == "deepspeech"
    assert res.score <= 0.0 and res.threshold == cfg.deepspeech_threshold
    assert res.ok == (res.score >= res.threshold)
    t = rec.transcribe(pcm, digits_only=True)
    assert t.engine == "deepspeech"
    assert t.digits is None or t.digits.isdigit()


def test_silence_is_a_retry_not_a_crash(cfg: SttConfig) -> None:
    res = load_recognizer(cfg).check_prompt(np.zeros(16000, np.int16), digits_to_words("12"))
    assert not res.ok and res.retry and res.reason == "no_speech"


def test_missing_model_is_a_config_error(tmp_path: Path) -> None:
    cfg = SttConfig(backend="deepspeech", deepspeech_model=tmp_path / "nope.tflite")
    with pytest.raises(SttError, match="does not exist"):
        load_recognizer(cfg)
    with pytest.raises(SttError, match="deepspeech_model is not set"):
        load_recognizer(SttConfig.model_construct(backend="deepspeech", deepspeech_model=None))


def test_wrong_checksum_is_a_config_error() -> None:
    cfg = SttConfig(backend="deepspeech", deepspeech_model=MODEL, deepspeech_sha256="0" * 64)
    with pytest.raises(SttError, match="sha256"):
        load_recognizer(cfg)
    right = hashlib.sha256(MODEL.read_bytes()).hexdigest()
    ok = SttConfig(backend="deepspeech", deepspeech_model=MODEL, deepspeech_sha256=right)
    assert load_recognizer(ok).name == "deepspeech"


@pytest.mark.parametrize("size", [0, 100, 20000])
def test_truncated_or_foreign_file_is_a_config_error(tmp_path: Path, size: int) -> None:
    bad = tmp_path / "cut.tflite"
    bad.write_bytes(MODEL.read_bytes()[:size])
    with pytest.raises(SttError, match=r"not a usable \.tflite|not a DeepSpeech"):
        load_recognizer(SttConfig(backend="deepspeech", deepspeech_model=bad))


def test_deepspeech_without_a_model_fails_config_check(tmp_path: Path) -> None:
    """`stt.backend: deepspeech` without `stt.deepspeech_model` passed `voxgate config check`
    and then stopped the daemon at start (exit 69): the check now names the setting."""
    from voxgate.cli import main

    cfg = tmp_path / "voxgate.yaml"
    cfg.write_text("stt: {backend: deepspeech}\n")
    assert main(["config", "check", str(cfg)]) != 0
    cfg.write_text(f"stt: {{backend: deepspeech, deepspeech_model: {MODEL}}}\n")
    assert main(["config", "check", str(cfg)]) == 0


def test_a_folder_given_as_the_model_is_named_as_such(tmp_path: Path) -> None:
    """`deepspeech_model: /var/lib/voxgate/models` (the folder, not the file) was reported
    as a model that 'does not exist', sending the user to download a file they have."""
    with pytest.raises(SttError, match=r"is a folder, not the \.tflite file"):
        load_recognizer(SttConfig(backend="deepspeech", deepspeech_model=tmp_path))


def test_a_checksum_in_capitals_is_the_same_checksum() -> None:
    """Tools differ in case (PowerShell's Get-FileHash prints capitals): the same sha256 in
    capitals was refused as a config error ('should match pattern')."""
    right = hashlib.sha256(MODEL.read_bytes()).hexdigest()
    cfg = SttConfig(backend="deepspeech", deepspeech_model=MODEL, deepspeech_sha256=right.upper())
    assert cfg.deepspeech_sha256 == right
    assert load_recognizer(cfg).name == "deepspeech"
