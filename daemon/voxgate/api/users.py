"""User administration behind the API: list, enroll from uploaded takes, erase, export.

Wraps the voiceprint store and the enrollment checks; `on_change(kind, name)` (kind is
"enrolled" or "erased") lets the fleet sync agent pass each change on to the other doors.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from voxgate.voiceprints import (
    KeyMissing,
    NameTaken,
    StoreError,
    VoiceprintStore,
    enrolled_text,
    normalize_name,
    not_enrolled_text,
)

log = logging.getLogger(__name__)

ChangeHook = Callable[[str, str], None]


class EnrollRefused(Exception):
    """The takes were not good enough; `report` says why, take by take."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


class UserExists(Exception):
    pass


class UnknownUser(Exception):
    pass


class UserAdmin:
    def __init__(
        self,
        store: VoiceprintStore | None,
        speaker_cfg: Any,
        vad_cfg: Any,
        load_embedder: Callable[[], Any],
        on_change: ChangeHook | None = None,
        template_threshold: float | None = None,
        no_store: str | None = None,
    ) -> None:
        """`store` None, `no_store` why (`voxgate api` run without the voiceprint key): every
        use of the store raises KeyMissing with that text (503 for the user endpoints)."""
        self._store = store
        self._no_store = no_store
        self.template_threshold = template_threshold  # stt.template_threshold; None: default
        self.speaker_cfg = speaker_cfg
        self.vad_cfg = vad_cfg
        self._load_embedder = load_embedder
        self._embedder: Any = None
        self._lock = threading.Lock()
        self.on_change = on_change

    @property
    def store(self) -> VoiceprintStore:
        self.need_store()
        assert self._store is not None
        return self._store

    def need_store(self) -> None:
        """KeyMissing when run without the voiceprint key: an enrollment asks before its
        upload is decoded, which otherwise answered a bad take with 400 and a good one only
        after the decoding's CPU, never naming the key that was the problem."""
        if self._store is None:
            raise KeyMissing(self._no_store or "no voiceprint store")

    def embedder(self) -> Any:
        # Loaded on first enrollment: listing or erasing users must not pay for the model.
        with self._lock:
            if self._embedder is None:
                self._embedder = self._load_embedder()
            return self._embedder

    def users(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(u) for u in self.store.users()]

    def enroll(
        self,
        name: str,
        takes: list[np.ndarray],
        replace: bool = False,
        prompts: list[str] | None = None,
    ) -> dict[str, Any]:
        """Enroll from takes; `prompts` (the digits each take says) adds the person's digit
        templates for the spoken challenge."""
        from voxgate.enrollment import TEMPLATES_META, attach_templates, check_takes, same_voice

        name = normalize_name(name)
        if not replace and self.store.has(name):  # a damaged row counts: replace repairs it
            said = enrolled_text(name, self.store.enrolled_name(name))
            raise UserExists(f"{said} (send replace=true to re-enroll)")
        try:
            self.store.check_new_name(name)  # before the takes' CPU, not only at the end
        except NameTaken as exc:
            raise UserExists(str(exc)) from None
        embedder = self.embedder()
        result = check_takes(takes, embedder, self.speaker_cfg, self.vad_cfg)
        report = {
            "takes": [
                {
                    "index": t.index,
                    "accepted": t.accepted,
                    "reason": t.reason,
                    "same_as": t.same_as,  # for a duplicate: the earlier take it repeats
                    "speech_s": round(float(t.quality.speech_s), 2),
                }
                for t in result.takes
            ],
            "speech_s": round(result.speech_s, 2),
            "problems": list(result.problems),
        }
        if not result.ok:
            raise EnrollRefused("; ".join(result.problems), report)
        meta = {"takes": len(result.embeddings), "speech_s": round(result.speech_s, 2)}
        if prompts:
            report["prompt_mismatch_takes"] = attach_templates(
                meta, result, takes, prompts, self.template_threshold
            )
        report["digit_templates"] = TEMPLATES_META in meta
        # Stored anyway (relatives can sound alike); the reply and the audit line say so.
        alike = same_voice(result.embeddings, name, self.store, embedder, self.speaker_cfg)
        report["same_voice_as"] = alike.audit() if alike is not None else []
        if alike is not None:
            log.warning("enrollment of %s over the API: %s", name, alike.text())
        try:
            put = self.store.replace if replace else self.store.add_user
            sha = getattr(embedder, "model_sha256", None)
            vp = put(name, result.embeddings, embedder.model_id, meta, sha)
        except NameTaken as exc:  # the same name in other characters: a conflict, not a 503
            raise UserExists(str(exc)) from None
        except StoreError:
            if not replace and self.store.has(name):  # a concurrent enrollment won the race
                raise UserExists(f"user '{name}' was enrolled meanwhile") from None
            raise
        log.info("enrolled %s over the API (%d takes)", vp.name, len(vp.embeddings))
        self._changed("enrolled", vp.name)
        return {"name": vp.name, "version": vp.version, "model_id": vp.model_id, **report}

    def erase(self, name: str) -> str:
        """Erase the user `name` matches; the name as enrolled (what logs and replies say)."""
        name = normalize_name(name)
        shown = self.store.enrolled_name(name) or name
        if not self.store.erase(name):
            raise UnknownUser(not_enrolled_text(name, self.store.reads_as(name)))
        log.info("erased %s over the API", shown)
        self._changed("erased", shown)
        return shown

    def export(self, name: str) -> dict[str, Any]:
        name = normalize_name(name)
        if self.store.get(name) is None:
            # "Ann  Marie" for "Ann Marie": a data request must find her, not "nobody".
            raise UnknownUser(not_enrolled_text(name, self.store.reads_as(name)))
        return self.store.export(name)

    def _changed(self, kind: str, name: str) -> None:
        if self.on_change is None:
            return
        from voxgate.fleet import tell_fleet

        tell_fleet(self.on_change, kind, name, log)


__all__ = ["EnrollRefused", "StoreError", "UnknownUser", "UserAdmin", "UserExists"]
