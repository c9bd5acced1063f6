"""`voxgate COMMAND --help` examples name files of this repository only where they exist."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

from voxgate.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
REPO_PATH = re.compile(r"\b(?:firmware_config|tests|benchmarks|models|docs|ansible|systemd)/\S+")


def parsers(parser: argparse.ArgumentParser, name: str = "voxgate") -> Iterator[tuple[str, str]]:
    yield name, parser.epilog or ""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from parsers(sub, f"{name} {sub_name}")


def test_repo_paths_in_help_examples_exist() -> None:
    # `voxgate run --help` showed `--file tests/data/attempt.flac`, a file the repository
    # does not have (found running every example).
    seen = 0
    for name, epilog in parsers(build_parser()):
        for path in REPO_PATH.findall(epilog):
            seen += 1
            assert (REPO / path.rstrip(".,;:)")).exists(), f"{name} --help: {path}"
    assert seen  # firmware_config/pi4.yaml and friends are named
