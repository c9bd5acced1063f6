"""voxgate demo: the whole door on one machine, on synthesized speech."""

from __future__ import annotations

import argparse
from pathlib import Path

from voxgate.commands.common import add_parser


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub,
        "demo",
        help="run a door end to end on espeak-ng voices (no microphone needed)",
        description="Start a private mosquitto, enroll a synthetic voice, run the daemon and "
        "the reference lock, then let the enrolled voice, an impostor and a replay try the "
        "door. Needs espeak-ng and mosquitto (scripts/demo installs them).",
        examples="""
            voxgate demo
            voxgate demo --keep ./demo-run     # keep keys, config, logs and audit log
        """,
    )
    p.add_argument(
        "--keep",
        metavar="DIR",
        type=Path,
        help="work in DIR and leave everything there (default: a temp dir)",
    )
    p.set_defaults(func=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    from voxgate.demo import run_demo

    return run_demo(args.keep)
