"""voxgate run: the daemon (what systemd starts)."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import logging
import sys
from typing import TYPE_CHECKING

from voxgate.commands.common import add_config_option, add_parser

if TYPE_CHECKING:
    from voxgate.config import VoxgateConfig
    from voxgate.service.loop import Daemon

EX_CONFIG = 78

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub,
        "run",
        help="run the daemon: listen, challenge, verify, publish decisions",
        description="Run the voxgate daemon in the foreground. Under systemd it reports "
        "READY/WATCHDOG/STATUS over $NOTIFY_SOCKET; SIGTERM stops it (exit 0), SIGHUP "
        "reloads the config file (an invalid one is refused and the old one kept). Exit "
        "codes: 78 invalid config or missing secret, 69 a model or stage cannot load or "
        "another daemon runs on data_dir, "
        "73 data_dir not writable, 74 audio input failed.",
        examples="""
            voxgate run -c /etc/voxgate/voxgate.yaml
            voxgate run -c dev.yaml --file attempt.flac    # a recording, then exit (a decision
                                                            # needs challenge.mode: off)
            voxgate run -c dev.yaml --file door.wav --realtime --loop # paced like a microphone
            arecord -q -f S16_LE -r 16000 -c 1 | voxgate run -c dev.yaml --source stdin
        """,
    )
    add_config_option(p)
    p.add_argument(
        "--source", choices=["file", "stdin", "mic"], help="override audio.source from the config"
    )
    p.add_argument("--file", metavar="PATH", help="read this WAV/FLAC (implies --source file)")
    p.add_argument(
        "--realtime", action="store_true", help="pace file/stdin input like a microphone"
    )
    p.add_argument("--loop", action="store_true", help="replay --file forever")
    p.set_defaults(func=run_command)


def resolve_config(args: argparse.Namespace) -> VoxgateConfig:
    """The config with command-line overrides applied, or a ConfigError."""
    from voxgate.config import ConfigError, VoxgateConfig, load_config

    cfg = load_config(args.config)
    args.loaded_config = cfg  # for the hand-over after a root run: a piped config reads once
    audio: dict[str, object] = {}
    if args.file:
        audio.update(source="file", path=args.file)
    if args.source:
        audio["source"] = args.source
    if args.realtime:
        audio["realtime"] = True
    if args.loop:
        source = audio.get("source", cfg.audio.source)
        if source != "file":  # other sources ignored the flag without a word
            why = f"--loop replays a file: give --file PATH (the source is {source})"
            raise ConfigError("command line", [why])
        audio["loop"] = True
    if not audio:
        return cfg
    data = cfg.model_dump()
    data["audio"].update(audio)
    try:
        return VoxgateConfig.model_validate(data)
    except ValueError as exc:
        problems = [str(e.get("msg", e)) for e in getattr(exc, "errors", lambda: [])()]
        raise ConfigError("command line", problems or [str(exc)]) from None


def build_daemon(args: argparse.Namespace, cfg: VoxgateConfig) -> Daemon:
    """The daemon for `cfg`; a reload reads the file and applies the same overrides, so
    --source/--file are not taken for config changes that need a restart."""
    from voxgate.service.loop import Daemon

    return Daemon(cfg, config_path=args.config, load=lambda _path: resolve_config(args))


def run_command(args: argparse.Namespace) -> int:
    from voxgate.config import ConfigError
    from voxgate.logs import setup_logging

    try:
        cfg = resolve_config(args)
    except ConfigError as exc:
        print(f"voxgate run: {exc}", file=sys.stderr)
        return EX_CONFIG
    setup_logging(cfg.logging)
    # A fatal signal inside C code (SIGBUS from SQLite's mmapped -shm when the kernel refuses
    # a page, SIGSEGV in a native library) ended the daemon without a line: systemd saw
    # status=7/BUS and the journal held nothing that said where. faulthandler writes the
    # fatal error and every thread's stack to stderr (the journal), then dies as before.
    with contextlib.suppress(RuntimeError, ValueError, OSError):  # no usable stderr: no dump
        faulthandler.enable(all_threads=True)
    code = build_daemon(args, cfg).run()
    if code:
        print(f"voxgate run: stopped with exit code {code} (see the log above)", file=sys.stderr)
    return code
