"""Every `voxgate ... --help` a user can reach ends with examples of that very command."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from voxgate.cli import build_parser


def leaves(parser: argparse.ArgumentParser, name: str) -> Iterator[tuple[str, str]]:
    """(command, epilog) of every command that runs something (no further ACTION)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield name, parser.epilog or ""
    for action in subs:
        for sub_name, sub in action.choices.items():
            yield from leaves(sub, f"{name} {sub_name}")


def test_every_command_help_ends_with_its_own_examples() -> None:
    # `voxgate config check --help`, `voxgate audit verify --help` and the four `voxgate fleet`
    # actions showed only their usage: no description, no example (found running --help of
    # every command the README and docs name).
    missing = []
    for name, epilog in leaves(build_parser(), "voxgate"):
        lines = [ln.strip() for ln in epilog.splitlines()]
        if (
            not lines
            or lines[0] != "examples:"
            or not any(ln.startswith(name + " ") or ln == name for ln in lines[1:])
        ):
            missing.append(name)
    assert missing == []


def test_api_help_curl_reaches_the_server_its_example_starts() -> None:
    # `voxgate api --help` started the API on --port 9800 with the token from the file
    # `token`, then showed curl on port 9722 with $TOKEN, a variable nothing set: pasted in
    # order, curl got 'connection refused'.
    (epilog,) = [e for name, e in leaves(build_parser(), "voxgate") if name == "voxgate api"]
    lines = [ln.strip() for ln in epilog.splitlines()]
    (server,) = [ln for ln in lines if "VOXGATE_API_TOKEN=$(cat token)" in ln]
    port = server.split("--port")[1].split()[0]
    (curl,) = [ln for ln in lines if ln.startswith("curl ")]
    assert f"http://127.0.0.1:{port}/" in curl
    assert 'Bearer $(cat token)"' in curl


def _help(path: str) -> str:
    parser = build_parser()
    for word in path.split()[1:]:
        (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = action.choices[word]
    return parser.format_help()


def test_speaker_commands_help_says_exit_status_and_enrollment_needs() -> None:
    # Walkthrough of the speaker commands: verify and identify said what their exit codes
    # mean, enroll, users list/erase/export and eval did not (list exits 1 with users listed
    # when a row is damaged; export exits 1 only when nothing is held). enroll named the
    # settings it needs but not their values, and its --from example gave 5 takes, which
    # with door-like digit strings (2-3 s of speech each) falls short of the default 20 s.
    from voxgate.config.speaker import SpeakerConfig

    for name in (
        "voxgate enroll",
        "voxgate verify",
        "voxgate identify",
        "voxgate users list",
        "voxgate users erase",
        "voxgate users export",
        "voxgate eval",
    ):
        assert "exit status:" in " ".join(_help(name).lower().split()), name
    enroll = " ".join(_help("voxgate enroll").split())
    fields = SpeakerConfig.model_fields
    assert f"default {fields['enroll_min_takes'].default}" in enroll
    assert f"default {fields['enroll_min_speech_s'].default:g} s" in enroll
    assert "t8.wav" in enroll
    assert "(default: 100)" in " ".join(_help("voxgate eval").split())


def test_help_examples_do_not_start_key_commands_on_a_shipped_config_without_a_key() -> None:
    # `voxgate api --help` started the API with `-c firmware_config/dev.yaml`: pasted as
    # printed, it stopped with "secret 'voiceprint-key' not found" (dev.yaml names no key;
    # the API opens the voiceprints at start). `voxgate run` with it starts (keys are read
    # when a voiceprint is), so only commands that need the key are held to this.
    import re
    from pathlib import Path

    from voxgate.config import load_config

    root = Path(__file__).resolve().parents[2]
    needs_key = ("api", "enroll", "verify", "identify", "users list", "users export")
    wrong = []
    for _name, epilog in leaves(build_parser(), "voxgate"):
        for line in epilog.splitlines():
            m = re.search(r"voxgate (\S+(?: \S+)?) .*-c (firmware_config/\S+\.yaml)", line)
            if m is None or not m.group(1).startswith(needs_key):
                continue
            if load_config(root / m.group(2)).speaker.key_file is None:
                wrong.append(line.strip())
    assert wrong == []


def test_the_piped_input_cap_in_the_help_is_the_one_enforced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # verify's and identify's help said "at most 200 MB piped" as literal text, beside the
    # constant the reader enforces: a new cap would have left the help saying the old one.
    import io
    import sys

    from voxgate.audio import AudioError
    from voxgate.audio.file import read_audio

    monkeypatch.setattr("voxgate.audio.file.MAX_PIPED_BYTES", 1_500_000)
    for name in ("voxgate verify", "voxgate identify", "voxgate enroll"):
        said = " ".join(_help(name).split())
        assert "at most 1.5 MB piped" in said and "200 MB" not in said, (name, said)

    class Stdin:  # a pipe of 2 MB on standard input
        buffer = io.BytesIO(bytes(2_000_000))

    monkeypatch.setattr(sys, "stdin", Stdin())
    with pytest.raises(AudioError, match=r"^standard input: more than 1\.5 MB piped in"):
        read_audio("-")
