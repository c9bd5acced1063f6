"""voxgate config check: validate a device config and print it resolved."""

from __future__ import annotations

import argparse
import io
import sys

import yaml

from voxgate.config import ConfigError, VoxgateConfig, load_config


def register(sub: argparse._SubParsersAction) -> None:
    from voxgate.commands.common import add_parser

    p = add_parser(
        sub,
        "config",
        help="check a config file",
        examples="""
            voxgate config check firmware_config/pi4.yaml
            voxgate config check --quiet /etc/voxgate/voxgate.yaml && echo valid
            sudo CREDENTIALS_DIRECTORY=/etc/voxgate/credentials \\
                voxgate config check --deep /etc/voxgate/voxgate.yaml
        """,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = add_parser(
        actions,
        "check",
        help="validate FILE; print the resolved config or errors",
        description="Validate FILE against the config schema. Valid: print every setting with "
        "the defaults filled in (exit 0). Invalid: print each problem with its line and key "
        "path (exit 1). The schema check reads no other file.\n\n"
        "--deep also runs what `voxgate run` checks at start: it loads the speaker model and "
        "its cohort and the speech engine, reads every key and credential the config "
        "enables, opens the voiceprint database and the other data files (copies of them: "
        "the door's files are not changed), and looks up the audio input, without reading "
        "audio, connecting to the broker or listening on a port. Every problem is printed "
        "with its config key, the path and what is wrong, and the exit code `voxgate run` "
        "would stop with (exit 1 if any). Run it once the keys are installed, before "
        "`systemctl enable --now voxgate`, as root with CREDENTIALS_DIRECTORY pointing at "
        "the files the unit loads (docs/service.md).",
        examples="""
            voxgate config check firmware_config/dev.yaml
            voxgate config check --quiet /etc/voxgate/voxgate.yaml && echo valid
            sudo CREDENTIALS_DIRECTORY=/etc/voxgate/credentials \\
                /opt/voxgate/bin/voxgate config check --deep /etc/voxgate/voxgate.yaml
        """,
    )
    check.add_argument("file", metavar="FILE", help="YAML config to validate")
    check.add_argument("-q", "--quiet", action="store_true", help="print nothing when valid")
    check.add_argument(
        "--deep",
        action="store_true",
        help="also load the models, keys, data files and audio input it names, as "
        "`voxgate run` does at start (as slow as its start: the models load)",
    )
    check.set_defaults(func=check_command)


def check_command(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.deep:
        return deep_check(args.file, cfg, quiet=args.quiet)
    if not args.quiet:
        print(f"# {args.file}: valid; every setting, defaults filled in")
        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def deep_check(file: str, cfg: VoxgateConfig, *, quiet: bool) -> int:
    import logging

    from voxgate.service.preflight import CannotCheck, check

    # What the start-up functions warn about (a key file others can read, a command key
    # that is not there) is worth seeing too; their progress is not. With --quiet it is
    # shown only beside problems: "print nothing when valid" printed it for every door that
    # leaves its command key empty, as the install steps do.
    held = io.StringIO()
    handler = logging.StreamHandler(held if quiet else sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    try:
        problems = check(cfg, log_handler=handler)
    except CannotCheck as exc:
        print(f"{file}: cannot check: {exc}", file=sys.stderr)
        return 1
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    if problems:
        if quiet:
            print(held.getvalue(), end="", file=sys.stderr)
        print(
            f"{file}: valid schema, but voxgate run would not start; {len(problems)} problem(s):",
            file=sys.stderr,
        )
        for p in problems:
            print("  " + str(p).replace("\n", "\n    "), file=sys.stderr)
        return 1
    if not quiet:
        print(
            f"{file}: valid; the models, keys, data files and audio input it names load as "
            "at start (no audio read, no broker contacted)"
        )
    return 0
