"""voxgate devices: list audio inputs PyAudio can open."""

from __future__ import annotations

import argparse
import sys

from voxgate.commands.common import add_parser


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub,
        "devices",
        help="list microphones (audio input devices)",
        examples="""
            voxgate devices
            # then put the name or index into the config:  audio: {device: "ReSpeaker"}
        """,
    )
    p.set_defaults(func=devices_command)


def devices_command(args: argparse.Namespace) -> int:
    from voxgate.audio.base import AudioError
    from voxgate.audio.mic import list_input_devices

    try:
        devices = list_input_devices()
    except AudioError as exc:
        print(f"voxgate devices: {exc}", file=sys.stderr)
        return 1
    if not devices:
        # Where to look next: the card itself, then permissions (no error, just no devices).
        print(
            "voxgate devices: no audio input devices found. Is the microphone plugged in? "
            "`arecord -l` lists the capture devices ALSA sees; a user outside the 'audio' "
            "group sees none (the systemd unit adds it: SupplementaryGroups=audio)",
            file=sys.stderr,
        )
        return 1
    print(f"{'index':>5}  {'channels':>8}  {'rate':>6}  name")
    for d in devices:
        print(f"{d.index:>5}  {d.channels:>8}  {d.default_rate:>6}  {d.name}")
    return 0
