"""Helpers for the speaker subcommands (enroll, verify, identify, users, eval): open the
store, load the embedder and cohort, each failure turned into one clear line on stderr."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class CommandError(Exception):
    """Ends a subcommand with this message on stderr and exit status 1."""


def fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    log.info("command failed: %s", msg)
    return 1


def open_store(cfg: Any) -> Any:
    from voxgate.voiceprints import StoreError, open_store

    try:
        return open_store(cfg)
    except StoreError as exc:
        raise CommandError(str(exc)) from None


def load_embedder(cfg: Any, model: Path | None = None) -> Any:
    try:
        from voxgate.embedding import load_embedder
    except ImportError as exc:
        raise CommandError(f"speaker model support is missing from this build ({exc})") from None
    try:
        return load_embedder(model or cfg.speaker.model, threads=cfg.speaker.threads)
    except Exception as exc:  # embedding.ModelError and friends: say what and where
        raise CommandError(f"cannot load the speaker model: {exc}") from None


def load_cohort(cfg: Any, embedder: Any, required: bool = True) -> Any:
    from voxgate.cohort import CohortError, for_model, model_sha256

    try:
        return for_model(embedder.model_id, cfg.speaker.cohort, model_sha256(embedder))
    except CohortError as exc:
        if required and cfg.speaker.threshold is None:
            raise CommandError(str(exc)) from None
        log.warning("%s; scoring raw cosine against speaker.threshold", exc)
        return None


def read_file(path: str) -> Any:
    from voxgate.audio import AudioError
    from voxgate.audio.file import read_audio

    try:
        pcm = read_audio(path)
    except AudioError as exc:
        raise CommandError(str(exc)) from None
    if len(pcm) == 0:
        raise CommandError(f"{path}: no audio in the file")
    return pcm
