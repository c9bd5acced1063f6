"""Errors raised by the embedding stage."""

from __future__ import annotations


class EmbeddingError(ValueError):
    """Base class: the audio or the model cannot give an embedding."""


class ModelError(EmbeddingError):
    """A model card or model file is missing, corrupt, or does not match its sha256."""


class TooShort(EmbeddingError):
    """Too little audio to fill even one analysis window."""
