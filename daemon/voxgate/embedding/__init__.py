"""Speaker embeddings: load a model by its card and turn speech into an L2-normalised vector.

from voxgate.embedding import load_embedder
embedder = load_embedder()            # the shipped GE2E int8 model
vec = embedder.embed(pcm)             # int16 16 kHz mono -> float32 (256,)
s = embedder.stream(); s.push(chunk); ...; vec = s.finish()
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from voxgate.embedding.card import (
    ModelCard,
    check_model_file,
    default_card_path,
    find_card,
    read_card,
)
from voxgate.embedding.embedder import EmbeddingStream, SpeakerEmbedder
from voxgate.embedding.errors import EmbeddingError, ModelError, TooShort
from voxgate.embedding.runtime import open_runtime

__all__ = [
    "EmbeddingError",
    "EmbeddingStream",
    "ModelCard",
    "ModelError",
    "SpeakerEmbedder",
    "TooShort",
    "default_card_path",
    "load_card",
    "load_embedder",
]

log = logging.getLogger(__name__)


def load_card(model: Path | None = None) -> ModelCard:
    """The card for a card path, a model file with a card beside it, or None (the default)."""
    return read_card(find_card(Path(model)) if model is not None else default_card_path())


def load_embedder(model: Path | None = None, threads: int = 1) -> SpeakerEmbedder:
    """Load a speaker model. Raises ModelError (naming the file) when it cannot be used."""
    if not 1 <= threads <= 64:
        raise ValueError(f"threads must be 1..64, not {threads}")
    started = time.perf_counter()
    # No log line here: each caller reports the error once, with its own context.
    card = load_card(model)
    path = check_model_file(card)
    runtime = open_runtime(card.runtime, path, card.model.input, card.model.output, threads)
    embedder = SpeakerEmbedder(card, runtime)
    embedder.self_check()
    log.info(
        "speaker model %s (%s, %s) loaded in %.0f ms",
        card.id,
        path.name,
        runtime.name,
        (time.perf_counter() - started) * 1000,
    )
    return embedder
