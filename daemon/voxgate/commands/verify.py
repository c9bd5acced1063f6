"""voxgate verify (stub until its stage lands)."""

from __future__ import annotations

import argparse

from voxgate.commands.common import add_config_option, add_parser, not_yet


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub, "verify", help="verify (not yet available)", examples="voxgate verify --help"
    )
    add_config_option(p)
    p.set_defaults(func=lambda args: not_yet("verify"))
