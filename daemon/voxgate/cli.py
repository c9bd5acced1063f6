"""The `voxgate` command: one subcommand per job, each in voxgate/commands/<name>.py."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import select
import signal
import sys
import textwrap
from pathlib import Path

from voxgate import __version__
from voxgate.blas import one_blas_thread
from voxgate.logs import command_line_warnings

# Before any command module (and so numpy) is imported: OpenBLAS reads it only then.
one_blas_thread()

# Order is the order --help lists them in.
COMMANDS = [
    "run",
    "enroll",
    "verify",
    "identify",
    "users",
    "lockout",
    "eval",
    "bench",
    "config",
    "devices",
    "actuator",
    "audit",
    "api",
    "fleet",
    "demo",
]

# Commands that set up logging of their own; the others' libraries' warnings are printed as
# "warning: <message>" lines (logs.command_line_warnings).
OWN_LOGGING = {"run", "api", "actuator", "config"}
PLAIN_WARNINGS = set(COMMANDS) - OWN_LOGGING

DESCRIPTION = textwrap.dedent(
    """\
    voxgate: on-device voice biometrics for door access.

    It listens to a microphone, finds speech, checks who is speaking against enrolled
    voiceprints and what they said against a one-time spoken challenge, then publishes a
    signed decision over MQTT. Everything runs on the device.
    """
)

EPILOG = textwrap.dedent(
    """\
    examples:
      voxgate config check firmware_config/pi4.yaml   validate a device config
      voxgate devices                                  list microphones
      voxgate run -c firmware_config/dev.yaml          run the daemon
      voxgate COMMAND --help                           details and examples for one command
    """
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voxgate",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"voxgate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"voxgate.commands.{name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["run"]:
        # Before the heavy imports below: a SIGHUP during the daemon's start must not kill it.
        from voxgate.service.early_hup import hold

        hold()
    parser = build_parser()
    args, unknown = parser.parse_known_args(args_in)
    if unknown:
        # parse_args() said it with voxgate's own usage ("COMMAND ..."), which shows none of
        # the options `voxgate users list --json` could have meant.
        command_parser = getattr(args, "command_parser", parser)
        command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        plain = args.command in PLAIN_WARNINGS
        with command_line_warnings() if plain else contextlib.nullcontext():
            status = int(args.func(args) or 0)
        sys.stdout.flush()  # here, where a closed pipe can still be caught
        return status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        if not _stdout_gone():  # another pipe or socket: a real error, with its traceback
            raise
        # The reader went away (`voxgate users list | head -1`): stop quietly, as a command
        # killed by SIGPIPE would, and keep the exit flush from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    finally:
        _hand_over_data_dir(args)


def _stdout_gone() -> bool:
    """Is standard output a pipe whose reader has closed it? (poll reports POLLERR)"""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no descriptor (captured), or closed
        return False


def _hand_over_data_dir(args: argparse.Namespace) -> None:
    """Run as root against a service's data folder: leave no root-owned files in it."""
    if os.geteuid() != 0 or not hasattr(args, "config"):
        return
    from voxgate.config import ConfigError, load_config
    from voxgate.ownership import hand_over

    cfg = getattr(args, "loaded_config", None)
    if cfg is None:
        try:
            cfg = load_config(args.config)
        except ConfigError:
            return
    hand_over(Path(cfg.data_dir))


if __name__ == "__main__":
    sys.exit(main())
