"""voxgate config check: validate a device config and print it resolved."""

from __future__ import annotations

import argparse
import sys

import yaml

from voxgate.config import ConfigError, load_config


def register(sub: argparse._SubParsersAction) -> None:
    from voxgate.commands.common import add_parser

    p = add_parser(
        sub,
        "config",
        help="check a config file",
        examples="""
            voxgate config check firmware_config/pi4.yaml
            voxgate config check --quiet /etc/voxgate/voxgate.yaml && echo valid
        """,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = add_parser(
        actions,
        "check",
        help="validate FILE; print the resolved config or errors",
        description="Validate FILE against the config schema. Valid: print every setting with "
        "the defaults filled in (exit 0). Invalid: print each problem with its line and key "
        "path (exit 1).",
        examples="""
            voxgate config check firmware_config/dev.yaml
            voxgate config check --quiet /etc/voxgate/voxgate.yaml && echo valid
        """,
    )
    check.add_argument("file", metavar="FILE", help="YAML config to validate")
    check.add_argument("-q", "--quiet", action="store_true", help="print nothing when valid")
    check.set_defaults(func=check_command)


def check_command(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"# {args.file}: valid; every setting, defaults filled in")
        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
    return 0
