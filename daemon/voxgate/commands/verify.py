"""voxgate verify NAME FILE: is the speaker in FILE the enrolled user NAME? (1:1)"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from voxgate.commands.common import add_config_option, add_parser, config_from_args
from voxgate.commands.speaker_common import (
    CommandError,
    fail,
    load_cohort,
    load_embedder,
    open_store,
    read_file,
)

# grep's convention: a script can tell "not this person" (1) from "could not check" (2).
EXIT_MATCH, EXIT_NO_MATCH, EXIT_ERROR, EXIT_RETRY = 0, 1, 2, 4


def audio_file_help() -> str:
    """What read_file takes: "any rate" was said, and a 4 kHz or 10-minute file was then
    refused. The figures are the limits read_audio enforces (the cap on piped bytes was
    written out here, free to drift from its constant)."""
    from voxgate.audio.file import MAX_TAKE_S, piped_cap_text, rates_text

    return (
        f"WAV/FLAC (or OGG) recording, {rates_text()}, any channels, at most {MAX_TAKE_S:g} s; "
        f"- reads it from standard input (at most {piped_cap_text()} piped)"
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub,
        "verify",
        help="check a recording against one enrolled user (1:1)",
        description="Score a WAV/FLAC recording against the voiceprint of NAME, with the "
        "threshold set for speaker.target_fmr. Exit status: 0 match, 1 no match (also for a "
        "NAME not enrolled), 2 error (unreadable or cut-short file, unreadable config, no "
        "voiceprint store or key, model or cohort that cannot be loaded; with --json also "
        '{"error": ...} on stdout), 4 retry (too little speech, too noisy or clipped to decide).',
        examples="""
        voxgate verify alice attempt.wav
        voxgate verify alice attempt.flac -c /etc/voxgate/voxgate.yaml --json
        arecord -f S16_LE -r 16000 -d 4 -t wav | voxgate verify alice -
        """,
    )
    p.add_argument("name", metavar="NAME", help="the claimed user")
    p.add_argument("file", metavar="FILE", help=audio_file_help())
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_config_option(p)
    p.set_defaults(func=run)


def score_file(cfg: Any, path: str, claimed: str | None) -> tuple[Any, Any]:
    """(SpeakerResult, Quality) for one recording; claimed=None identifies (1:N)."""
    from voxgate.embedding.errors import TooShort
    from voxgate.quality import assess
    from voxgate.scoring import Scorer, ScoringError
    from voxgate.voiceprints import StoreError

    pcm = read_file(path)
    embedder = load_embedder(cfg)
    cohort = load_cohort(cfg, embedder)
    quality = assess(pcm, cfg.vad)
    try:
        emb = embedder.embed(pcm)
    except TooShort:  # less audio than the model takes: too little speech, as in the daemon
        emb = None
    except Exception as exc:  # a model failure on odd audio
        raise CommandError(f"{path}: cannot embed ({exc})") from None
    store = open_store(cfg)
    try:
        scorer = Scorer(store, embedder, cfg.speaker, cohort)
        if emb is None:  # a retry with no score, as the daemon gives (policy: no_speech)
            return scorer.unscored(claimed, quality), quality
        if claimed is None:
            return scorer.identify(emb, quality), quality
        return scorer.verify(emb, claimed, quality), quality
    except (ScoringError, StoreError) as exc:  # StoreError: a voiceprint fails authentication
        raise CommandError(str(exc)) from None
    finally:
        store.close()


NO_VOICEPRINT = ("unknown_user", "no_users", "model_mismatch")


def snr_level(quality: Any, speaker: Any) -> tuple[float, str]:
    """The SNR level this recording was gated at, and its setting's name: an SNR measured
    in pauses and one estimated from a recording cut to its speech have different levels,
    and the line printed only "SNR 18 dB" whichever applied."""
    if quality.snr_from_pauses:
        return speaker.min_snr_db, "speaker.min_snr_db"
    return speaker.min_snr_db_no_pauses, "speaker.min_snr_db_no_pauses"


def show(result: Any, quality: Any, as_json: bool, speaker: Any) -> int:
    from voxgate.quality import clipped_text, db_text

    level, setting = snr_level(quality, speaker)
    if as_json:
        doc = {
            **result.__dict__,
            "speech_s": quality.speech_s,
            # No speech, no SNR measured (quality.too_noisy), as the text says: its number
            # is an artefact of the frames (-110 dB for a short tone).
            "snr_db": quality.snr_db if quality.speech_s > 0 else None,
            "snr_from_pauses": quality.snr_from_pauses,
            "snr_needed_db": level,
            "clipped": quality.clipped,
            "clipped_max": speaker.max_clipped,
        }
        # No score (unknown user, model mismatch) is -inf inside; JSON has no infinity.
        doc = {k: None if isinstance(v, float) and not math.isfinite(v) else v
               for k, v in doc.items()}  # fmt: skip
        print(json.dumps(doc))
    else:
        # "unknown speaker" is identify's open-set verdict; a retry judged no voice at all.
        who = result.user or ("unknown speaker" if result.quality_ok else "speaker not judged")
        verdict = "MATCH" if result.accepted else ("RETRY" if not result.quality_ok else "NO MATCH")
        print(f"{verdict}: {who}")
        if math.isfinite(result.score):
            print(
                f"  score {result.score:.3f} (threshold {result.threshold:.3f}), "
                f"cosine {result.raw_cosine:.3f}"
            )
        elif "model_mismatch" in result.reasons:
            # Not 'no voiceprint': there is one, made by another model (the log line says which).
            print(
                "  no score: enrolled with another speaker model; re-enroll with this one "
                f"(threshold {result.threshold:.3f})"
            )
        elif any(r in NO_VOICEPRINT for r in result.reasons):
            print(f"  no score: no voiceprint to compare with (threshold {result.threshold:.3f})")
        else:  # shorter than the model's shortest input
            print(f"  no score: too little audio for the model (threshold {result.threshold:.3f})")
        speech = f"  net speech {quality.speech_s:.1f} s (needs {speaker.min_speech_s:g}), "
        if quality.speech_s <= 0:  # no speech, no SNR: it reads 0 dB (quality.too_noisy)
            print(speech + "SNR not measured (no speech)")
        else:
            how = "in its pauses" if quality.snr_from_pauses else "without pauses to measure"
            print(
                speech
                + f"SNR {db_text(quality.snr_db, level)} dB {how} (needs {level:g}: {setting})"
            )
        # Said beside the other measures: a RETRY for `clipped` must show how much and the
        # setting, as the SNR line does for `too_noisy`.
        print(
            f"  clipped {clipped_text(quality.clipped, speaker.max_clipped)} % of samples "
            f"(at most {100 * speaker.max_clipped:g} %: speaker.max_clipped)"
        )
        if result.reasons:
            print(f"  reasons: {', '.join(result.reasons)}")
    if result.accepted:
        return EXIT_MATCH
    return EXIT_RETRY if not result.quality_ok else EXIT_NO_MATCH


def _not_enrolled(cfg: Any, name: str) -> str:
    """'no user NAME enrolled', with the enrolled name it reads the same as, if any."""
    from voxgate.voiceprints import StoreError, not_enrolled_text

    try:
        with open_store(cfg, read_only=True) as store:
            return not_enrolled_text(name, store.reads_as(name))
    except (CommandError, StoreError):  # said by score_file already, if it matters
        return not_enrolled_text(name, None)


def error(message: str | None, as_json: bool) -> int:
    """Exit 2, the message on stderr (config_from_args printed its own: None) and, for a
    script reading --json, as an object on stdout (it got no output at all and failed to
    parse it)."""
    if message is not None:
        fail(message)
    if as_json:
        print(json.dumps({"error": message or "the config could not be loaded (see stderr)"}))
    return EXIT_ERROR


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if cfg is None:
        return error(None, args.json)
    try:
        result, quality = score_file(cfg, args.file, args.name)
    except CommandError as exc:
        return error(str(exc), args.json)
    if "unknown_user" in result.reasons:
        print(f"error: {_not_enrolled(cfg, args.name)}", file=sys.stderr)
    return show(result, quality, args.json, cfg.speaker)
