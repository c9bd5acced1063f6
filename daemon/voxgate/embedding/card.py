"""Model cards: the YAML beside each model file that says how to feed it.

A card names the model file and its sha256, the front end (features.py), how audio is cut
into network inputs (`windowing`), the input/output tensor names and the embedding size.
The runtime follows the model file's suffix: .onnx -> ONNX Runtime, .tflite -> LiteRT.
Format reference: docs/models.md.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from voxgate.config.loader import read_yaml, yaml_problem
from voxgate.embedding.errors import ModelError
from voxgate.embedding.trim import TrimSpec
from voxgate.features import KaldiFbankConfig, MelPowerConfig

CARD_SUFFIXES = (".yaml", ".yml")
MODEL_SUFFIXES = {".onnx": "onnxruntime", ".tflite": "litert"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    file: str = Field(description="Model file, relative to the card's folder.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the model file.")
    input: str = Field(description="Input tensor name: features (batch, frames, bins).")
    output: str = Field(description="Output tensor name: embeddings (batch, dim).")
    dim: int = Field(ge=2, le=4096, description="Embedding size.")


class WindowingSpec(_Strict):
    type: Literal["sliding", "whole"] = Field(
        description="sliding: fixed windows averaged (GE2E); whole: one input per utterance."
    )
    frames: int = Field(160, ge=1, le=10000, description="sliding: frames per window.")
    hop: int = Field(80, ge=1, le=10000, description="sliding: frames between window starts.")
    min_coverage: float = Field(
        0.75, gt=0, le=1, description="sliding: keep a last, partly filled window this full."
    )
    min_audio_s: float = Field(
        0.5, gt=0, le=60, description="Shorter audio raises TooShort instead of an embedding."
    )
    last: Literal["pad", "end"] = Field(
        "pad",
        description="sliding: the audio after the last full window; pad: one more window, zero "
        "padded, if at least min_coverage full (else dropped); end: one more window that ends "
        "where the audio ends (no padding, nothing dropped).",
    )
    short: Literal["pad", "repeat"] = Field(
        "pad",
        description="sliding: audio shorter than one window; pad: zero padded; repeat: its "
        "frames repeated until the window is full.",
    )
    short_shifts: int = Field(
        1,
        ge=1,
        le=16,
        description="sliding, short: repeat: audio shorter than one window is embedded this "
        "many times, the repeated frames starting at evenly spaced points of the audio "
        "(circular shifts), and the embeddings averaged; 1: once, from its start.",
    )


FrontendSpec = Annotated[MelPowerConfig | KaldiFbankConfig, Field(discriminator="type")]


class ModelCard(_Strict):
    format: Literal[1] = 1
    id: str = Field(min_length=1, description="Stored beside voiceprints: 'name/variant'.")
    description: str = ""
    license: str = Field(min_length=1)
    source: dict[str, Any] = Field(default_factory=dict, description="Where the weights came from.")
    build: dict[str, Any] = Field(default_factory=dict, description="How the file was made.")
    model: ModelSpec
    frontend: FrontendSpec
    windowing: WindowingSpec
    trim: TrimSpec | None = Field(
        None, description="Drop non-speech before embedding (embedding/trim.py); absent = off."
    )
    evaluation: dict[str, Any] = Field(default_factory=dict, description="Measured figures.")
    path: Path | None = Field(None, exclude=True, description="The card file (set on load).")

    @property
    def model_path(self) -> Path:
        base = self.path.parent if self.path else Path.cwd()
        return base / self.model.file

    @property
    def runtime(self) -> str:
        suffix = Path(self.model.file).suffix.lower()
        if suffix not in MODEL_SUFFIXES:
            raise ModelError(
                f"card {self.path}: model.file {self.model.file}: unknown model type "
                f"{suffix!r} (use .onnx or .tflite)"
            )
        return MODEL_SUFFIXES[suffix]


def default_card_path() -> Path:
    """The shipped default model card (package data, also present in a source checkout)."""
    return Path(__file__).resolve().parent.parent / "models" / "ge2e-int8.yaml"


def read_card(path: Path) -> ModelCard:
    """Parse and validate a card; ModelError with the file name when it is unusable."""
    try:
        data = read_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"model card {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ModelError(f"model card {path} is unreadable: {yaml_problem(exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"model card {path} is unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise ModelError(f"model card {path} is not a YAML mapping")
    try:
        card = ModelCard.model_validate({**data, "path": path})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ModelError(f"model card {path} is invalid: {problems}") from None
    if problem := _unsupported(card):
        raise ModelError(f"model card {path} is invalid: {problem}")
    return card


def _unsupported(card: ModelCard) -> str | None:
    """A front end and windowing the embedder cannot combine as the card asks. Each once
    passed the card check and then failed on real audio (kaldi_fbank windows of unequal
    length) or silently left a setting out (kaldi_fbank's mean_norm in sliding windows,
    mel_power's level_dbfs on a whole utterance)."""
    frontend, windowing = card.frontend.type, card.windowing.type
    if frontend == "kaldi_fbank" and windowing == "sliding":
        return (
            "windowing.type: sliding works with frontend type mel_power only; a kaldi_fbank "
            "model (CAM++, ECAPA-TDNN, ResNet) takes the whole utterance: windowing type whole"
        )
    shifts, short = card.windowing.short_shifts, card.windowing.short
    if shifts > 1 and (windowing != "sliding" or short != "repeat"):
        return (
            "windowing.short_shifts: shifts the repeated frames of short audio, so it needs "
            "windowing type sliding with short: repeat; set it to 1 or remove it"
        )
    if windowing == "whole" and getattr(card.frontend, "level_dbfs", None) is not None:
        return (
            "frontend.level_dbfs: applies to sliding windows only; with windowing type whole "
            "set it to null"
        )
    return None


def find_card(model: Path) -> Path:
    """The card for a model: the path itself if it is a card, else a card in the same folder
    whose `model.file` names it."""
    if model.suffix.lower() in CARD_SUFFIXES:
        return model
    if model.suffix.lower() not in MODEL_SUFFIXES:
        # A card saved as .json (or a typo) was taken for a model file with no card beside it.
        raise ModelError(
            f"{model}: neither a model card (.yaml or .yml) nor a model file (.onnx or .tflite)"
        )
    if not model.exists():
        raise ModelError(f"model file {model} does not exist")
    for candidate in sorted(model.parent.glob("*.y*ml")):
        try:
            data = read_yaml(candidate.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and (data.get("model") or {}).get("file") == model.name:
            return candidate
    raise ModelError(
        f"no model card for {model}: put a .yaml card naming it beside it (see docs/models.md)"
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_model_file(card: ModelCard) -> Path:
    """The model file, after checking it exists and matches the card's sha256."""
    path = card.model_path
    if not path.exists():
        raise ModelError(
            f"model file {path} (named by card {card.path}) does not exist; "
            f"expected sha256 {card.model.sha256}"
        )
    if not path.is_file():
        raise ModelError(f"model file {path} (named by card {card.path}) is not a file")
    try:
        actual = sha256_file(path)
    except OSError as exc:  # no read permission, an I/O error: say which file
        raise ModelError(
            f"model file {path} (named by card {card.path}) cannot be read: {exc.strerror or exc}"
        ) from None
    if actual != card.model.sha256:
        raise ModelError(
            f"model file {path} has sha256 {actual}, but card {card.path} expects "
            f"{card.model.sha256}: the file is corrupt or not the one the card describes"
        )
    return path
