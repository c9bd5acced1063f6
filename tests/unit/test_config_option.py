"""-c/--config is read wherever it is written: before a command's action or after it."""

from __future__ import annotations

import argparse

from voxgate.cli import build_parser


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _takes_config(parser: argparse.ArgumentParser) -> bool:
    return any("--config" in a.option_strings for a in parser._actions)


def test_config_before_the_action_is_not_dropped_by_the_action() -> None:
    """Seen: `voxgate users -c /etc/voxgate/voxgate.yaml list` listed the users of the
    embedded defaults' data folder (the action's own -c default, None, overwrote the one
    given before it), so an administrator read or erased in another door's file."""
    checked = []
    for name, command in _actions(build_parser()).items():
        if not _takes_config(command):
            continue
        for action, sub in _actions(command).items():
            if not _takes_config(sub):
                continue
            # A value for each positional (an optional one too: `lockout clear` needs USER
            # or --door).
            positional = ["x" for a in sub._actions if not a.option_strings and a.nargs != "*"]
            for argv in (
                [name, "-c", "door.yaml", action, *positional],
                [name, action, *positional, "-c", "door.yaml"],
            ):
                args = build_parser().parse_args(argv)
                assert args.config == "door.yaml", argv
            assert build_parser().parse_args([name, action, *positional]).config is None
            checked.append(f"{name} {action}")
    assert {"users list", "users erase", "users export", "lockout list"} <= set(checked)
