"""The embedder: shipped default, streaming == batch, bad input, bad model files, other cards."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from tests.audio_helpers import speak
from voxgate.embedding import (
    EmbeddingError,
    ModelError,
    TooShort,
    default_card_path,
    load_card,
    load_embedder,
)

if TYPE_CHECKING:
    from voxgate.embedding import SpeakerEmbedder

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "daemon" / "voxgate" / "models"


SENTENCE = "The quick brown fox jumps over the lazy dog, and then it runs far away home."


@pytest.fixture(scope="module")
def embedder() -> SpeakerEmbedder:
    return load_embedder()


def build_fbank_demo(out: Path, seed: int = 7) -> Path:
    pytest.importorskip("onnx", reason="building the test model needs onnx (the dev extra)")
    spec = importlib.util.spec_from_file_location(
        "build_fbank_demo", REPO / "models" / "build_fbank_demo.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_fbank_demo"] = module
    spec.loader.exec_module(module)
    return module.build(out, seed)


def test_default_model_loads_and_embeds(embedder: SpeakerEmbedder) -> None:
    assert embedder.model_id.startswith("ge2e-resemblyzer-")
    assert embedder.model_id.endswith("/int8")
    assert embedder.dim == 256
    assert embedder.card.path == default_card_path()
    v = embedder.embed(speak(SENTENCE, "en-us"))
    assert v.dtype == np.float32 and v.shape == (256,)
    assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5)


def test_same_voice_scores_higher_than_other_voice(embedder: SpeakerEmbedder) -> None:
    a = embedder.embed(speak(SENTENCE, "en-us"))
    b = embedder.embed(speak("Please open the front door for me, I live here.", "en-us"))
    c = embedder.embed(speak("Please open the front door for me, I live here.", "en-us+f3"))
    assert float(a @ b) > float(a @ c)


@pytest.mark.parametrize("chunk", [480, 1600, 7777])
def test_stream_equals_embed(embedder: SpeakerEmbedder, chunk: int) -> None:
    pcm = speak(SENTENCE, "en-us")
    batch = embedder.embed(pcm)
    stream = embedder.stream()
    seen_before_finish = 0
    for i in range(0, pcm.size, chunk):
        stream.push(pcm[i : i + chunk])
        seen_before_finish = stream.windows_done
    # The windows that filled while "speaking" were computed then, not at finish().
    assert seen_before_finish >= len(embedder.window_starts(pcm.size)) - 2
    streamed = stream.finish()
    assert 1.0 - float(batch @ streamed) < 1e-5


def test_stream_rejects_use_after_finish(embedder: SpeakerEmbedder) -> None:
    s = embedder.stream()
    s.push(speak(SENTENCE, "en-us"))
    s.finish()
    with pytest.raises(EmbeddingError):
        s.push(np.zeros(160, np.int16))
    with pytest.raises(EmbeddingError):
        s.finish()


def test_window_plan(tmp_path: Path) -> None:
    # The shipped cards: full windows end to end, then one ending at the audio's end.
    e = load_embedder()
    assert e.window_starts(16000 * 3) == [0, 141]  # 301 frames: last window 141..300
    assert e.window_starts(25600) == [0, 1]  # 161 frames (centred frames reach the end)
    assert e.window_starts(25600 + 12800) == [0, 81]
    assert e.window_starts(16000 * 5) == [0, 160, 320, 341]
    assert e.window_starts(12000) == [0]  # no full window: one window (filled, see below)
    # 50 % overlap and `last: pad` (the card format's defaults, as upstream cuts windows).
    text = (SHIPPED / "ge2e-int8.yaml").read_text()
    text = text.replace("  last: end\n", "").replace("  short: repeat\n", "")
    text = text.replace("  hop: 160\n", "")
    (tmp_path / "pad.yaml").write_text(text)
    (tmp_path / "ge2e-resemblyzer-int8.onnx").symlink_to(SHIPPED / "ge2e-resemblyzer-int8.onnx")
    p = load_embedder(tmp_path / "pad.yaml")
    assert p.card.windowing.last == "pad" and p.card.windowing.short == "pad"
    assert p.window_starts(16000 * 3) == [0, 80, 160]  # last window 87 % full: kept
    assert p.window_starts(25600) == [0]
    assert p.window_starts(25600 + 12800) == [0, 80]
    assert p.window_starts(25600 + 12800 + 1000) == [0, 80]  # next one only 54 % full
    assert p.window_starts(12000) == [0]  # no full window: the partial one is used


def test_too_short_raises(embedder: SpeakerEmbedder, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO"), pytest.raises(TooShort, match="needs at least"):
        embedder.embed(np.zeros(4000, np.int16))
    assert "0.25 s of audio" in caplog.text
    s = embedder.stream()
    s.push(np.ones(100, np.int16))
    with pytest.raises(TooShort):
        s.finish()
    with pytest.raises(TooShort):
        embedder.embed(np.zeros(0, np.int16))


def test_silence_and_clipping_stay_finite(embedder: SpeakerEmbedder) -> None:
    silent = embedder.embed(np.zeros(32000, np.int16))
    assert np.all(np.isfinite(silent))
    assert np.linalg.norm(silent) == pytest.approx(1.0, abs=1e-5)
    speech = speak(SENTENCE, "en-us")
    clipped = np.clip(speech.astype(np.int32) * 20, -32768, 32767).astype(np.int16)
    v = embedder.embed(clipped)
    assert np.all(np.isfinite(v))
    # Float input with NaN/inf is cleaned rather than poisoning the embedding.
    noisy = speech.astype(np.float32) / 32768
    noisy[100:200] = np.nan
    assert np.all(np.isfinite(embedder.embed(noisy)))


def test_stereo_array_is_rejected(embedder: SpeakerEmbedder) -> None:
    with pytest.raises(EmbeddingError, match="mono"):
        embedder.embed(np.zeros((16000, 2), np.int16))


# --- bad model files --------------------------------------------------------------------------


def copy_shipped(tmp_path: Path, card: str = "ge2e-int8.yaml") -> Path:
    data = load_card(SHIPPED / card)
    shutil.copy(SHIPPED / card, tmp_path / card)
    shutil.copy(data.model_path, tmp_path / data.model.file)
    return tmp_path / card


def test_missing_card(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The error names the file; its callers report it, so it is not logged here as well
    (the CLI printed it twice: a log line, then `error:`)."""
    with caplog.at_level("ERROR"), pytest.raises(ModelError, match="does not exist") as err:
        load_embedder(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(err.value)
    assert caplog.text == ""


def test_missing_model_file_names_file_and_sha(tmp_path: Path) -> None:
    card = copy_shipped(tmp_path)
    expected = load_card(card).model.sha256
    (tmp_path / load_card(card).model.file).unlink()
    with pytest.raises(ModelError) as err:
        load_embedder(card)
    assert "ge2e-resemblyzer-int8.onnx" in str(err.value)
    assert expected in str(err.value)


def test_corrupt_model_file_fails_sha_check(tmp_path: Path) -> None:
    card = copy_shipped(tmp_path)
    info = load_card(card)
    blob = bytearray(info.model_path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    info.model_path.write_bytes(bytes(blob))
    with pytest.raises(ModelError) as err:
        load_embedder(card)
    msg = str(err.value)
    assert str(info.model_path) in msg and info.model.sha256 in msg and "corrupt" in msg


def test_garbage_model_with_matching_sha(tmp_path: Path) -> None:
    import hashlib

    card = copy_shipped(tmp_path)
    info = load_card(card)
    info.model_path.write_bytes(b"this is not an onnx file")
    sha = hashlib.sha256(b"this is not an onnx file").hexdigest()
    card.write_text(card.read_text().replace(info.model.sha256, sha))
    with pytest.raises(ModelError, match="ONNX Runtime cannot load"):
        load_embedder(card)


def test_card_with_unknown_key_or_wrong_tensor(tmp_path: Path) -> None:
    card = copy_shipped(tmp_path)
    text = card.read_text()
    card.write_text(text.replace("windowing:\n", "windowing:\n  colour: blue\n"))
    with pytest.raises(ModelError, match="colour"):
        load_embedder(card)
    card.write_text(text.replace("input: mels", "input: features"))
    with pytest.raises(ModelError, match="no input tensor 'features'"):
        load_embedder(card)
    card.write_text("just a string")
    with pytest.raises(ModelError, match="not a YAML mapping"):
        load_embedder(card)
    # A date PyYAML cannot build and deep nesting were a ValueError / RecursionError traceback.
    card.write_text(text + "built: 2024-13-01\n")
    with pytest.raises(ModelError, match=r"unreadable: line \d+: not valid YAML: .*month"):
        load_embedder(card)
    card.write_text("model: " + "[" * 5000)
    with pytest.raises(ModelError, match="nested too deeply"):
        load_embedder(card)


def test_card_that_does_not_fit_the_model(tmp_path: Path) -> None:
    card = copy_shipped(tmp_path)
    text = card.read_text()
    card.write_text(text.replace("dim: 256", "dim: 192"))
    with pytest.raises(ModelError, match="says dim 192"):
        load_embedder(card)
    card.write_text(text.replace("sample_rate: 16000", "sample_rate: 8000"))
    with pytest.raises(ModelError, match="8000 Hz"):
        load_embedder(card)
    card.write_text(text.replace("n_mels: 40", "n_mels: 80"))
    with pytest.raises(ModelError, match=r"rejects input \(1, 160, 80\)"):
        load_embedder(card)


def test_model_file_without_card(tmp_path: Path) -> None:
    shutil.copy(SHIPPED / "ge2e-resemblyzer-int8.onnx", tmp_path / "x.onnx")
    with pytest.raises(ModelError, match="no model card"):
        load_embedder(tmp_path / "x.onnx")


def test_model_file_with_card_beside_it_is_found() -> None:
    e = load_embedder(SHIPPED / "ge2e-resemblyzer-float.onnx")
    assert e.model_id.endswith("/float")


def test_a_fixed_batch_export_gets_its_windows_one_by_one(tmp_path: Path) -> None:
    """The float model exported with batch fixed at 1 (as an export without dynamic axes
    is): it loaded, passed the one-window probe, then every utterance of 2+ windows failed
    in ONNX Runtime ('index: 0 Got: 3 Expected: 1'). Now its windows go one by one."""
    onnx = pytest.importorskip("onnx", reason="editing the model needs onnx (the dev extra)")
    import hashlib

    shipped = load_card(SHIPPED / "ge2e-float.yaml")
    model = onnx.load(shipped.model_path)
    for value in [*model.graph.input, *model.graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_param")
        dim.dim_value = 1
    onnx.save(model, tmp_path / "batch1.onnx")
    sha = hashlib.sha256((tmp_path / "batch1.onnx").read_bytes()).hexdigest()
    text = shipped.path.read_text().replace(shipped.model.file, "batch1.onnx")
    (tmp_path / "batch1.yaml").write_text(text.replace(shipped.model.sha256, sha))
    one = load_embedder(tmp_path / "batch1.yaml")
    pcm = speak(SENTENCE, "en-us")
    assert len(one.window_starts(one.speech_of(pcm).size)) >= 3
    want = load_embedder(SHIPPED / "ge2e-float.yaml").embed(pcm)
    assert float(one.embed(pcm) @ want) > 1 - 1e-6
    stream = one.stream()
    for i in range(0, pcm.size, 480):
        stream.push(pcm[i : i + 480])
    assert float(stream.finish() @ want) > 1 - 1e-6


# --- a model with another front end, from its card alone ----------------------------------------


def test_fbank_whole_utterance_model(tmp_path: Path) -> None:
    card = build_fbank_demo(tmp_path)
    e = load_embedder(tmp_path / "fbank-demo.onnx")
    assert e.card.frontend.type == "kaldi_fbank"
    assert e.dim == 32
    pcm = speak(SENTENCE, "en-us")
    v = e.embed(pcm)
    assert v.shape == (32,) and np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5)
    s = e.stream()
    for i in range(0, pcm.size, 1234):
        s.push(pcm[i : i + 1234])
    assert 1.0 - float(v @ s.finish()) < 1e-5
    # Mean normalisation makes a whole-utterance fbank model blind to a fixed gain.
    louder = np.clip(pcm.astype(np.int32) * 2, -32768, 32767).astype(np.int16)
    assert float(v @ e.embed(louder)) > 0.999
    with pytest.raises(TooShort):
        e.embed(pcm[:4000])
    assert load_card(card).model.input == "feats"
