"""Kept attempt audio (only when audit.keep_audio is on): AES-256-GCM files with a retention.

Each attempt's utterance is one file `<unix time>-<nonce>.vxa`: 12-byte random nonce, then
the AES-GCM ciphertext of the raw int16 PCM; the file name is bound in as associated data so
files cannot be swapped. Files older than the retention are deleted at each store() and at
start. Nothing is written in the clear.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from voxgate.voiceprints import hex_text_hint, looks_hex_text

log = logging.getLogger(__name__)

SUFFIX = ".vxa"


class KeepError(Exception):
    pass


def parse_key(raw: bytes) -> bytes:
    """32 raw bytes or 64 hex characters (as stored: a raw key may start or end with a
    whitespace byte)."""
    text = raw.strip()
    if len(text) == 64 and re.fullmatch(rb"[0-9a-fA-F]{64}", text):
        return bytes.fromhex(text.decode())
    if len(raw) == 32:
        return bytes(raw)
    if len(text) == 32:  # raw bytes and a newline, as read before
        return text
    raise KeepError("the audio key must be 32 raw bytes or 64 hex characters")


class AudioKeeper:
    def __init__(self, directory: Path, key: bytes, retention_days: int) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        parsed = parse_key(key)
        self._aead = AESGCM(parsed)
        self._hex_text_key = looks_hex_text(parsed)  # for the wrong-key message; not the key
        self.retention_s = retention_days * 86400.0
        self.purge()

    def store(self, pcm: np.ndarray, tag: str, now: float | None = None) -> Path | None:
        """Encrypt and write one utterance; None (logged) when the disk refuses."""
        now = time.time() if now is None else now
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", tag)[:64]
        path = self.dir / f"{int(now)}-{safe}{SUFFIX}"
        nonce = os.urandom(12)
        blob = nonce + self._aead.encrypt(nonce, pcm.astype("<i2").tobytes(), path.name.encode())
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
        except OSError as exc:
            # A file cut off mid-write is named by no audit line, so erasing its user would
            # never find it: remove it now.
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
            log.error("kept audio %s not written: %s", path, exc)
            return None
        self.purge(now)
        return path

    def load(self, path: Path) -> np.ndarray:
        from cryptography.exceptions import InvalidTag

        blob = Path(path).read_bytes()
        try:
            raw = self._aead.decrypt(blob[:12], blob[12:], Path(path).name.encode())
        except InvalidTag:
            hint = hex_text_hint("The audio key", None) if self._hex_text_key else ""
            raise KeepError(f"{path}: wrong key, renamed or damaged file{hint}") from None
        return np.frombuffer(raw, dtype="<i2").astype(np.int16)

    def purge(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        removed = 0
        for path in self.dir.glob(f"*{SUFFIX}"):
            try:
                born = int(path.name.split("-", 1)[0])
            except ValueError:
                continue
            if now - born > self.retention_s:
                try:
                    path.unlink()
                    removed += 1
                except OSError as exc:
                    log.warning("cannot remove expired audio %s: %s", path, exc)
        if removed:
            log.info("removed %d kept recording(s) past retention", removed)
        return removed


def recordings_of(audit_path: Path, name: str) -> list[Path]:
    """The kept recordings the audit log ties to `name`: decision lines whose `audio` file
    was decided for them or claimed by them. (An attempt nobody was identified or claimed
    for cannot be tied to anyone; it leaves with the retention.)"""
    from voxgate.audit import records_naming

    return recordings_in(records_naming(audit_path, name))


def recordings_in(records: list[dict[str, Any]]) -> list[Path]:
    """The `audio` files of the decision records among `records`."""
    return [
        Path(rec["audio"])
        for rec in records
        if rec.get("event") == "decision" and isinstance(rec.get("audio"), str)
    ]


def erase_recordings(audit_path: Path, audio_dir: Path, name: str) -> int:
    """Delete the kept recordings of an erased user; returns how many. Only `.vxa` files
    in `audio_dir` are touched, whatever a line of the log names."""
    folder = Path(audio_dir).resolve()
    removed = 0
    try:
        paths = recordings_of(audit_path, name)
    except OSError as exc:
        log.error(
            "cannot find the kept recordings of erased user %s: the audit log %s cannot be "
            "read (%s); they are only removed by audit.audio_retention_days",
            name,
            audit_path,
            exc,
        )
        return 0
    for path in paths:
        if path.suffix != SUFFIX or path.resolve().parent != folder:
            continue
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass  # already past the retention
        except OSError as exc:
            log.error("cannot remove the kept recording %s of an erased user: %s", path, exc)
    return removed


def erase_recordings_for(cfg: Any, name: str) -> int:
    """erase_recordings with the paths a VoxgateConfig names (keep_audio on or not: it may
    have been on when the recordings were made)."""
    audio_dir = cfg.audit.audio_dir or cfg.data_dir / "audio"
    if not Path(audio_dir).is_dir():
        return 0
    return erase_recordings(cfg.audit.path or cfg.data_dir / "audit.jsonl", audio_dir, name)


def open_keeper(cfg: Any) -> AudioKeeper | None:
    """The keeper of attempt recordings (audit.keep_audio), or None; raises KeepError or
    SecretError for a missing or unusable audio-key."""
    if not cfg.audit.keep_audio:
        return None
    from voxgate.config.secrets import override_source, read_secret

    key = read_secret("audio-key", cfg.audit.audio_key_file, strip=False)
    assert key is not None
    try:
        parse_key(key)
    except KeepError as exc:  # a damaged or mistyped key: say which one
        where = override_source("audio-key") or str(cfg.audit.audio_key_file)
        raise KeepError(f"{where}: {exc}") from None
    return AudioKeeper(
        cfg.audit.audio_dir or cfg.data_dir / "audio", key, cfg.audit.audio_retention_days
    )
