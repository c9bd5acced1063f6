"""Helpers for the speaker subcommands (enroll, verify, identify, users, eval): open the
store, load the embedder and cohort, each failure turned into one clear line on stderr."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from voxgate.commands.common import audit_from_command

log = logging.getLogger(__name__)


class CommandError(Exception):
    """Ends a subcommand with this message on stderr and exit status 1."""


def fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    log.info("command failed: %s", msg)
    return 1


def open_store(cfg: Any, *, read_only: bool = False) -> Any:
    """read_only: for commands that only read (list, export), which then work on a
    read-only data folder too."""
    from voxgate.voiceprints import StoreError, open_store

    try:
        return open_store(cfg, read_only=read_only)
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


def load_cohort(cfg: Any, embedder: Any) -> Any:
    """The cohort the daemon would score with (scoring.cohort_for)."""
    from voxgate.scoring import ScoringError, cohort_for

    try:
        return cohort_for(cfg, embedder)
    except ScoringError as exc:
        raise CommandError(str(exc)) from None


def read_file(path: str) -> Any:
    """A take (enroll) or an attempt (verify, identify) as 16 kHz int16, the whole file or
    an error; path `-` reads it from standard input. A file cut short is refused, not read
    as far as it goes: half a take made a voiceprint, and a verdict on half an attempt came
    with one log line that was easy to miss."""
    from voxgate.audio import AudioError
    from voxgate.audio.file import MAX_TAKE_S, STDIN, STDIN_NAME, read_audio

    try:
        pcm = read_audio(path, max_s=MAX_TAKE_S, complete=True)
    except AudioError as exc:
        raise CommandError(str(exc)) from None
    if len(pcm) == 0:
        raise CommandError(f"{STDIN_NAME if path == STDIN else path}: no audio in the file")
    return pcm


def record_change(
    cfg: Any,
    store: Any,
    kind: str,
    name: str,
    model_id: str | None,
    model_sha256: str | None = None,
    *,
    lost: list[str],
    same_voice_as: list[dict[str, Any]] | None = None,
) -> None:
    """After `kind` ("enrolled" or "erased") of `name` on the command line: a line in the
    audit log, and with fleet.enabled the change handed to the fleet. The local change stands
    whatever happens here; problems are printed as warnings."""
    event = {"enrolled": "enrollment", "erased": "erase"}[kind]
    # An erase has no model: its line said "model_id": null, as if one were missing.
    fields: dict[str, Any] = {"model_id": model_id} if model_id is not None else {}
    if same_voice_as:  # the other users the new voiceprint matched (enrollment.same_voice)
        fields["same_voice_as"] = same_voice_as
    # `lost`: looked for before the change, which made (or erased) a voiceprint that
    # open_log would otherwise take for a trace of use (or miss).
    audit = audit_from_command(cfg, event, lost=lost, user=name, via="cli", **fields)
    if cfg.fleet.enabled:
        # The fleet session audits what it applies into the same log (None: it opens it).
        audit_event = audit.append if audit is not None else None
        _to_fleet(cfg, store, kind, name, (model_id, model_sha256), audit_event)


FLEET_WAIT_S = 5.0


def _to_fleet(
    cfg: Any,
    store: Any,
    kind: str,
    name: str,
    model: tuple[str | None, str | None],
    audit_event: Callable[..., Any] | None,
) -> None:
    """Queue the change in the fleet outbox (the sync state file the daemon shares) and try
    to deliver it now over a session of our own; what the broker has not acknowledged stays
    in the outbox, and the running daemon sends it (it checks the outbox every few seconds)."""
    from voxgate.fleet import FleetError, FleetSync

    try:
        model_id, model_sha256 = model
        if model_id is None:
            from voxgate.embedding import load_card

            card = load_card(cfg.speaker.model)
            model_id, model_sha256 = card.id, card.model.sha256
        agent = FleetSync.from_config(
            cfg,
            store,
            model_id=model_id,
            model_sha256=model_sha256,
            client_id=f"voxgate-{cfg.device_id}-cli",
            audit_event=audit_event,
        )
    except Exception as exc:  # FleetError (keys), ModelError (card): say what is wrong
        print(f"warning: not passed to the fleet: {exc}", file=sys.stderr)
        return
    try:
        what = {"enrolled": "enrollment", "erased": "erase"}[kind]  # not "the enrolled of"
        agent.on_local_change(kind, name)
        agent.start()
        if agent.wait_sent(FLEET_WAIT_S):
            print(f"fleet: {name} ({kind}) sent to the broker")
        else:
            print(
                f"fleet: {agent.why_unsent(FLEET_WAIT_S)}; the {what} of {name} waits in "
                f"{agent.state.path} and the daemon sends it once it reaches the broker"
            )
    except FleetError as exc:
        print(f"warning: not passed to the fleet: {exc}", file=sys.stderr)
    finally:
        agent.stop()
