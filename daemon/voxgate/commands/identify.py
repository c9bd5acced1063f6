"""voxgate identify FILE: which enrolled user is speaking, if any? (1:N, open set)"""

from __future__ import annotations

import argparse

from voxgate.commands.common import add_config_option, add_parser, config_from_args
from voxgate.commands.speaker_common import CommandError
from voxgate.commands.verify import audio_file_help, error, score_file, show


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub,
        "identify",
        help="find which enrolled user speaks in a recording (1:N, may say unknown)",
        description="Score a recording against every enrolled user. The best match is named "
        "only if it clears the threshold for speaker.target_fmr divided by the number of "
        "users (a fixed speaker.threshold is used as it is, for any number of users); "
        "otherwise the answer is 'unknown speaker'. Exit status: 0 identified, "
        '1 unknown, 2 error (as for verify; with --json also {"error": ...} on stdout), '
        "4 retry (too little speech, too noisy or clipped).",
        examples="""
        voxgate identify attempt.wav
        voxgate identify attempt.flac -c /etc/voxgate/voxgate.yaml --json
        arecord -f S16_LE -r 16000 -d 4 -t wav | voxgate identify -
        """,
    )
    p.add_argument("file", metavar="FILE", help=audio_file_help())
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_config_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if cfg is None:
        return error(None, args.json)
    try:
        result, quality = score_file(cfg, args.file, None)
    except CommandError as exc:
        return error(str(exc), args.json)
    return show(result, quality, args.json, cfg.speaker)
