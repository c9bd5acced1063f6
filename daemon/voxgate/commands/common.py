"""Helpers shared by subcommands: the --config option, config loading, log setup."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sys
import textwrap
from typing import Any

from voxgate.config import ConfigError, VoxgateConfig, load_config


def add_parser(
    sub: argparse._SubParsersAction, name: str, help: str, examples: str, description: str = ""
) -> argparse.ArgumentParser:
    """A subcommand parser whose --help ends with examples."""
    parser = sub.add_parser(
        name,
        help=help,
        description=description or help,
        epilog="examples:\n" + textwrap.indent(textwrap.dedent(examples).strip("\n"), "  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # The deepest command's parser wins (a subcommand's defaults overwrite its parent's):
    # cli.main reports an unknown option with that command's usage, not voxgate's.
    parser.set_defaults(command_parser=parser)
    return parser


def ascii_int(text: str) -> int:
    """argparse type for integer options: ASCII digits 0-9 with an optional '-' only.
    type=int also took other scripts' digits ('--port ٨٠٨٠' was port 8080), '1_000', spaces
    and '+5', none of which the config file, the API or MQTT accept."""
    if not re.fullmatch(r"-?[0-9]{1,18}", text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number (ASCII digits 0-9, at most 18)"
        )
    return int(text)


def ascii_seconds(text: str) -> float:
    """argparse type for durations: a positive decimal in ASCII digits ('20', '2.5').
    type=float took 'nan' (`fleet resend --timeout nan` never timed out), 'inf' and other
    scripts' digits."""
    if not re.fullmatch(r"[0-9]{1,6}(\.[0-9]{1,6})?", text) or float(text) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return float(text)


def add_config_option(parser: argparse.ArgumentParser, *, again: bool = False) -> None:
    """-c/--config on `parser`. again=True on an action whose command takes -c before it
    too: argparse lets a subcommand's defaults overwrite what the parent parsed, so with a
    default of None there, `voxgate users -c FILE list` read the embedded defaults' data
    folder (another door's file, silently)."""
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS if again else None,
        help="device config (YAML); without it the embedded defaults are used",
    )


def config_from_args(args: argparse.Namespace) -> VoxgateConfig | None:
    """Load --config, printing the problems and returning None when it is invalid. The
    config is kept on `args` (`loaded_config`) for the hand-over after a root command: read
    again, a config given as a pipe (`-c <(...)`) was empty, and the defaults' data folder
    was handed over instead of the one the command wrote to."""
    try:
        cfg = load_config(getattr(args, "config", None))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None
    args.loaded_config = cfg
    return cfg


def not_yet(name: str) -> int:
    print(f"voxgate {name}: not yet available in this build", file=sys.stderr)
    return 3


def audit_from_command(
    cfg: Any,
    event: str,
    *,
    what: str | None = None,
    note_loss: bool = True,
    lost: list[str] | None = None,
    **fields: Any,
) -> Any:
    """Append `event` to the audit log for a command line action that stands whatever happens
    here; returns the log, or None when it cannot be opened (a warning says why). The log
    keeps a line it cannot write in memory for a later try, but a command exits now and the
    line would go with it unseen: such lines are printed, to be added by hand. `what`: the
    action's name in that message (default: the event). `note_loss`: a log found lost begins
    with `audit_log_lost` (open_log). Without it the command's new log hid the loss from
    the daemon's next start, which then found a log there. `lost`: what audit.loss_traces
    found before the action changed the files it looks at (an enrollment's voiceprint)."""
    from voxgate.audit import open_log

    try:
        audit = open_log(cfg, note_loss=note_loss, lost=lost)
        audit.append(event, **fields)
        held = audit.held()
    except Exception as exc:  # SecretError, OSError
        print(f"warning: could not write the audit log: {exc}", file=sys.stderr)
        return None
    if held:
        print_unaudited(str(audit.path), what or event, held, "could not be written (see above)")
    return audit


def print_unaudited(where: str, what: str, lines: list[dict[str, Any]], why: str) -> None:
    text = "\n".join(json.dumps(h, sort_keys=True) for h in lines)
    print(
        f"warning: the audit log {where} {why}; this {what} is not in it. The line(s), to add "
        f"by hand:\n{text}",
        file=sys.stderr,
    )


def operator() -> str:
    """Who runs this admin command, for its audit line (`by`): under sudo the person is
    SUDO_USER; getpass falls back to the uid's name."""
    try:
        return os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"
