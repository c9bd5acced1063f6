"""A second model dropped in by its card alone, as docs/models.md tells an integrator to, and
the cards a user plausibly gets wrong: `voxgate enroll` / `verify` with real FSDD takes, a real
ONNX model (models/build_fbank_demo.py), real files. Each wrong card must stop the command
with one line naming the card or file and the field, never a traceback or a wrong score."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.integration.test_enroll_two_voices import write_takes
from tests.unit.test_embedding import build_fbank_demo
from voxgate.cli import main

pytest.importorskip("voxgate.embedding")

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "daemon" / "voxgate" / "models"


def docs_card(model: Path, dim: int) -> str:
    """The card of docs/models.md's "Dropping in a CAM++ / ECAPA-TDNN / ResNet34 ONNX model",
    word for word, with what the docs say to fill in (file, sha256sum, output size)."""
    text = (REPO / "docs" / "models.md").read_text()
    section = text.split("## Dropping in a CAM++")[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block, "docs/models.md lost its example card"
    card = block.group(1).replace("campp.onnx", model.name)
    card = card.replace("<output of: sha256sum campp.onnx>", sha256(model))
    return re.sub(r"dim: \d+", f"dim: {dim}", card)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def dropin(shared_data: Path, tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """(card, config, takes): the demo fbank model under another name with a card written
    from the docs, a config pointing at it (fixed threshold: no cohort ships for it), and
    george's FSDD takes."""
    build_fbank_demo(tmp_path / "build")
    model = tmp_path / "models" / "campp.onnx"
    model.parent.mkdir()
    shutil.copy(tmp_path / "build" / "fbank-demo.onnx", model)
    card = model.with_suffix(".yaml")
    card.write_text(docs_card(model, dim=32))
    key = tmp_path / "voiceprint.key"
    assert main(["users", "init-key", str(key)]) == 0
    cfg = tmp_path / "voxgate.yaml"
    cfg.write_text(
        f"data_dir: {tmp_path / 'data'}\nspeaker:\n  model: {card}\n  key_file: {key}\n"
        "  enroll_min_speech_s: 6\n  threshold: 0.5\n"
    )
    return card, cfg, write_takes(shared_data, tmp_path, "george", 6)


def refused(
    cfg: Path, takes: list[str], capsys: pytest.CaptureFixture[str], *expected: str
) -> None:
    """enroll and verify both stop at loading the model, with an error that names `expected`."""
    capsys.readouterr()
    assert main(["enroll", "george", "--from", *takes[:5], "-c", str(cfg)]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "enrolled george" not in out
    (line,) = [x for x in err.splitlines() if x.startswith("error: ")]
    assert "cannot load the speaker model" in line
    for word in expected:
        assert word in line, (word, line)
    assert main(["verify", "george", takes[5], "-c", str(cfg)]) == 2
    out, err = capsys.readouterr()
    assert "MATCH" not in out and all(w in err for w in expected)


def test_a_card_written_from_the_docs_enrolls_and_verifies(
    dropin: tuple[Path, Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    _, cfg, takes = dropin
    assert main(["enroll", "george", "--from", *takes[:5], "-c", str(cfg)]) == 0
    assert "enrolled george with model campp-voxceleb/float" in capsys.readouterr().out
    main(["verify", "george", takes[5], "-c", str(cfg), "--json"])
    assert '"raw_cosine": ' in capsys.readouterr().out  # scored (random weights: any score)


def test_an_unreadable_model_file_is_named(
    dropin: tuple[Path, Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """A model file that exists but cannot be read gave `error: cannot load the speaker
    model: [Errno 22] Invalid argument`, naming neither the file nor the card. The file:
    /proc/self/clear_refs, write-only (reading it fails as root too)."""
    unreadable = Path("/proc/self/clear_refs")
    if not unreadable.is_file():
        pytest.skip("no /proc/self/clear_refs (not Linux)")
    card, cfg, takes = dropin
    text = card.read_text()
    card.write_text(text.replace("file: campp.onnx", f"file: {unreadable}"))
    refused(cfg, takes, capsys, str(unreadable), str(card), "cannot be read")
    (card.parent / "folder.onnx").mkdir()
    card.write_text(text.replace("file: campp.onnx", "file: folder.onnx"))
    refused(cfg, takes, capsys, "folder.onnx", str(card), "is not a file")
    shutil.copy(card.parent / "campp.onnx", card.parent / "campp.pt")
    card.write_text(text.replace("file: campp.onnx", "file: campp.pt"))
    refused(cfg, takes, capsys, str(card), "model.file campp.pt", "unknown model type")


def test_an_fbank_card_with_sliding_windows_is_refused_at_load(
    dropin: tuple[Path, Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """`windowing: {type: sliding}` on a kaldi_fbank model (the shipped GE2E card used as the
    template) passed the load and then every take was rejected ("all input arrays must have
    the same shape": snip-edges frames leave the last window short), and mean_norm was never
    applied in windows. Now the card is refused, naming the field."""
    card, cfg, takes = dropin
    card.write_text(card.read_text().replace("type: whole", "type: sliding"))
    refused(cfg, takes, capsys, str(card), "windowing.type", "whole")


def test_a_whole_utterance_mel_card_with_a_level_is_refused(
    dropin: tuple[Path, Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """`windowing: {type: whole}` with mel_power ignored `level_dbfs` (applied per window
    only): the shipped float model then gave cosine 0.74 between a take and the same take
    20 dB quieter, against 0.96 with its windows. Refused now; with `level_dbfs: null` the
    card says what happens and loads."""
    card, cfg, takes = dropin
    data = yaml.safe_load((SHIPPED / "ge2e-float.yaml").read_text())
    data["windowing"] = {"type": "whole"}
    data.pop("trim")
    shutil.copy(SHIPPED / data["model"]["file"], card.parent)
    card.write_text(yaml.safe_dump(data))
    refused(cfg, takes, capsys, str(card), "frontend.level_dbfs", "null")
    data["frontend"]["level_dbfs"] = None
    card.write_text(yaml.safe_dump(data))
    assert main(["enroll", "george", "--from", *takes[:5], "-c", str(cfg)]) == 0


def test_a_card_saved_as_json_is_not_taken_for_a_model_file(
    dropin: tuple[Path, Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """A card saved as campp.json was taken for a model file: "no model card for
    campp.json: put a .yaml card naming it beside it"."""
    card, cfg, takes = dropin
    json_card = card.with_suffix(".json")
    json_card.write_text(json.dumps(yaml.safe_load(card.read_text())))
    cfg.write_text(cfg.read_text().replace(str(card), str(json_card)))
    refused(cfg, takes, capsys, str(json_card), "neither a model card (.yaml or .yml)")


def refused_as_another_model(
    cfg: Path,
    take: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    *logged: str,
) -> None:
    """verify george and identify, as JSON and as text: no score, reason model_mismatch,
    and the log lines say `logged`."""
    for command in (["verify", "george"], ["identify"]):
        capsys.readouterr()
        caplog.clear()
        assert main([*command, take, "-c", str(cfg), "--json"]) == 1
        result = json.loads(capsys.readouterr().out)
        assert result["reasons"] == ["model_mismatch"] and result["score"] is None, command
        assert all(text in caplog.text for text in logged), (command, caplog.text)
        assert main([*command, take, "-c", str(cfg)]) == 1
        out = capsys.readouterr().out
        assert "enrolled with another speaker model; re-enroll" in out, (command, out)


def test_switching_models_refuses_to_score_and_says_re_enroll(
    dropin: tuple[Path, Path, list[str]],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """george enrolled with the dropped-in model, then speaker.model back to the default:
    verify printed "no score: no voiceprint to compare with" (there is one, of another
    model), and identify answered reason no_users with no word of re-enrolling."""
    card, cfg, takes = dropin
    assert main(["enroll", "george", "--from", *takes[:5], "-c", str(cfg)]) == 0
    text = cfg.read_text()
    cfg.write_text(text.replace(f"  model: {card}\n", "").replace("  threshold: 0.5\n", ""))
    refused_as_another_model(
        cfg, takes[5], capsys, caplog, "re-enroll: voxgate enroll george --replace"
    )


def test_another_file_under_the_same_card_id_is_refused_too(
    dropin: tuple[Path, Path, list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """New weights put in under the same card id (the file replaced, the card's sha256
    updated as docs/models.md says) make other embeddings, but only the id was kept with a
    voiceprint: george's old voiceprint was scored by the new model as if it were its own."""
    card, cfg, takes = dropin
    assert main(["enroll", "george", "--from", *takes[:5], "-c", str(cfg)]) == 0
    model = card.with_suffix(".onnx")
    build_fbank_demo(tmp_path / "retrained", seed=8)
    shutil.copy(tmp_path / "retrained" / "fbank-demo.onnx", model)
    card.write_text(docs_card(model, dim=32))  # the same id, the new file's sha256
    refused_as_another_model(
        cfg, takes[5], capsys, caplog, "another file of model", "voxgate enroll george --replace"
    )
    # Re-enrolled with the new file, george is scored again.
    assert main(["enroll", "george", "--replace", "--from", *takes[:5], "-c", str(cfg)]) == 0
    capsys.readouterr()
    main(["verify", "george", takes[5], "-c", str(cfg), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert "model_mismatch" not in result["reasons"] and result["score"] is not None
