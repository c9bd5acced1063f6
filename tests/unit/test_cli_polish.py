"""Small CLI defects found using voxgate as an installer would: each test runs the real
command (in-process, real files) and checks what the user is told."""

from __future__ import annotations

from pathlib import Path

import pytest

from voxgate.cli import main


def _device(tmp_path: Path, extra: str = "") -> Path:
    key = tmp_path / "voiceprint.key"
    assert main(["users", "init-key", str(key)]) == 0
    cfg = tmp_path / "voxgate.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'data'}\nspeaker:\n  key_file: {key}\n{extra}")
    return cfg


@pytest.mark.parametrize("action", [["resend", "alice"], ["revoke", "alice", "--group", "hq_lab"]])
def test_fleet_actions_with_sync_off_point_at_fleet_enabled(
    action: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("VOXGATE_FLEET_KEY", raising=False)
    cfg = _device(tmp_path)
    capsys.readouterr()
    assert main(["fleet", *action, "-c", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert f"fleet sync is off in {cfg} (fleet.enabled: false)" in err
    assert "fleet-key" not in err


def test_audit_show_on_a_missing_log_says_what_creates_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _device(tmp_path)
    capsys.readouterr()
    assert main(["audit", "show", "-c", str(cfg)]) == 1
    err = capsys.readouterr().err
    log = tmp_path / "data" / "audit.jsonl"
    assert err.startswith(f"voxgate audit show: {log}: no such file. The daemon (voxgate run)")
    assert "audit.path" in err and "Errno" not in err
    assert main(["audit", "show", str(tmp_path)]) == 1  # a folder: the reason, not a repr
    assert (
        capsys.readouterr().err == f"voxgate audit show: {tmp_path}: cannot read: Is a directory\n"
    )


def test_config_check_lists_problems_in_file_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "mqtt:\n  port: 99999\naudio:\n  bogus: 1\nvad:\n  nope: 2\n"
        + "# padding\n" * 4
        + 'data_dir: 5\ndevice_id: ""\n'
    )
    assert main(["config", "check", str(cfg)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"{cfg}: invalid config (5 problem(s)):"
    lines = [int(p.split(":")[0].removeprefix("  - line ")) for p in err[1:]]
    assert lines == [2, 4, 6, 11, 12]
    assert err[1].startswith("  - line 2: mqtt.port:") and err[5].startswith(
        "  - line 12: device_id"
    )


@pytest.mark.parametrize(
    ("argv", "bad"),
    [
        (["api", "--port", "٨٠٨٠"], "٨٠٨٠"),  # Arabic-Indic 8080: int() reads it
        (["audit", "show", "-n", "٣", "audit.jsonl"], "٣"),
        (["enroll", "alice", "--max-takes", "²"], "²"),
        (["bench", "--runs", "1_000"], "1_000"),
        (["bench", "--cpu", " 1"], " 1"),
        (["eval", "set", "--top-k", "+5"], "+5"),
    ],
)
def test_integer_options_take_ascii_digits_only(
    argv: list[str], bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The unknown option keeps a command whose number was taken from running at all.
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--no-such-option"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument " in err
    assert f"{bad!r} is not a whole number (ASCII digits 0-9" in err


def test_ascii_int_reads_plain_numbers() -> None:
    import argparse

    from voxgate.commands.common import ascii_int

    assert [ascii_int(t) for t in ("0", "8080", "-1", "007")] == [0, 8080, -1, 7]
    for bad in ("", "-", "٣", "1e3", "0x10", "9" * 19):
        with pytest.raises(argparse.ArgumentTypeError):
            ascii_int(bad)


@pytest.mark.parametrize(
    ("argv", "bad"),
    [
        (["fleet", "resend", "alice", "--timeout", "nan"], "nan"),  # never timed out
        (["fleet", "revoke", "alice", "--timeout", "inf"], "inf"),
        (["bench", "--seconds", "٣"], "٣"),
        (["bench", "--seconds", "0"], "0"),
    ],
)
def test_duration_options_take_positive_ascii_numbers(
    argv: list[str], bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--no-such-option"])
    assert stop.value.code == 2
    assert f"{bad!r} is not a number of seconds above 0" in capsys.readouterr().err


def test_ascii_seconds_reads_plain_decimals() -> None:
    import argparse

    from voxgate.commands.common import ascii_seconds

    assert [ascii_seconds(t) for t in ("20", "2.5", "0.25")] == [20.0, 2.5, 0.25]
    for bad in ("", "nan", "-1", "1e3", ".5", "0.0"):
        with pytest.raises(argparse.ArgumentTypeError):
            ascii_seconds(bad)


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["users", "list", "--bogus"], "usage: voxgate users list [-h] [-c FILE]"),
        (["verify", "alice", "a.wav", "--bogus"], "usage: voxgate verify [-h] [--json]"),
        (["eval", "set", "--quiet"], "usage: voxgate eval [-h] [--out DIR]"),
    ],
)
def test_an_unknown_option_is_shown_with_its_commands_usage(
    argv: list[str], usage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    # Was "usage: voxgate [-h] [--version] COMMAND ...": no option of the command shown.
    assert err.startswith(usage), err
    assert f"voxgate {argv[0]}" in err and f"unrecognized arguments: {argv[-1]}" in err


def test_users_list_keeps_its_columns_for_long_and_wide_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import re
    import unicodedata

    import numpy as np

    from voxgate.config import load_config
    from voxgate.voiceprints import open_store

    cfg = _device(tmp_path)
    emb = np.eye(4, 256, dtype=np.float32)
    with open_store(load_config(str(cfg))) as store:
        store.add_user("bo", emb, "ge2e-resemblyzer-0.1.4/int8")
        store.add_user("Zoë Ångström 李小龍", emb, "ge2e-resemblyzer-0.1.4/int8")
        store.add_user("Maximiliana Evangelina Montgomery", emb, "ge2e-resemblyzer-0.1.4/int8")
        store.add_user("al", emb, "ge2e-resemblyzer-0.1.4/fp16-litert")  # a 34-character id
    capsys.readouterr()
    assert main(["users", "list", "-c", str(cfg)]) == 0
    lines = capsys.readouterr().out.splitlines()

    def cells(text: str) -> int:  # on screen: CJK characters take two cells
        return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)

    # Where the "enrolled" column starts, in terminal cells, on every line.
    starts = {cells(lines[0][: lines[0].index("enrolled")])}
    for line in lines[1:]:
        date = re.search(r"\d{4}-\d\d-\d\d", line)
        assert date, line
        starts.add(cells(line[: date.start()]))
    assert len(starts) == 1, "\n".join(lines)


def test_users_export_gives_each_vector_on_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    import numpy as np

    from voxgate.config import load_config
    from voxgate.voiceprints import open_store

    cfg = _device(tmp_path)
    rng = np.random.default_rng(0)
    emb = rng.random((10, 256)).astype(np.float32)
    emb[0, :3] = [-1.5e-05, 0.0, 1.0]  # a sign and an exponent, as floats print them
    with open_store(load_config(str(cfg))) as store:
        store.add_user("Dana [1, 2]", emb, "ge2e-resemblyzer-0.1.4/int8", {"takes": 10})
    capsys.readouterr()
    assert main(["users", "export", "dana [1, 2]", "-c", str(cfg)]) == 0
    text = capsys.readouterr().out
    doc = json.loads(text)
    # The same document: every number, and a name that looks like an array left as it is.
    assert doc["name"] == "Dana [1, 2]" and doc["meta"] == {"takes": 10}
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    np.testing.assert_allclose(np.array(doc["embeddings"]), unit, rtol=1e-5, atol=1e-6)
    # One line a vector: it was one number a line, 2,800 lines for ten takes.
    assert len(text.splitlines()) < 100, len(text.splitlines())
    assert any(line.strip().startswith("[-1.5") for line in text.splitlines())


def test_export_and_erase_of_a_name_that_reads_as_an_enrolled_one_point_at_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A data request typed with two spaces (or pasted with a no-break space) did not open
    'Ann Marie': export answered that nothing at all was held about the person, and erase
    that nobody of that name was enrolled, while her voiceprint stayed."""
    import numpy as np

    from voxgate.config import load_config
    from voxgate.voiceprints import open_store

    cfg = _device(tmp_path)
    with open_store(load_config(str(cfg))) as store:
        store.add_user("Ann Marie", np.eye(3, 256, dtype=np.float32), "m/1")
    pointed = "but 'Ann Marie' is, a name that reads the same"
    for typed in ("ann  marie", "Ann\u00a0Marie"):
        capsys.readouterr()
        assert main(["users", "export", typed, "-c", str(cfg)]) == 1
        err = capsys.readouterr().err
        assert pointed in err and "nothing else is held" not in err, err
        assert main(["users", "erase", typed, "-c", str(cfg)]) == 1
        assert pointed in capsys.readouterr().err
    assert main(["users", "list", "-c", str(cfg)]) == 0
    assert "Ann Marie" in capsys.readouterr().out  # still there: the message is the truth
    # A name like nobody's is answered as before.
    assert main(["users", "erase", "bob", "-c", str(cfg)]) == 1
    assert capsys.readouterr().err.strip() == "error: no user 'bob' enrolled"


def test_a_name_of_spaces_is_refused_with_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # " " is one character: "user name must be 1-64 characters" read as false.
    cfg = _device(tmp_path)
    capsys.readouterr()
    assert main(["users", "export", "  ", "-c", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "user name must be 1-64 characters, not counting spaces around it" in err


def test_init_key_into_a_folder_or_a_missing_folder_says_which(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "keys"
    folder.mkdir()
    assert main(["users", "init-key", str(folder)]) == 1
    err = capsys.readouterr().err  # was "already exists; not overwriting a key"
    assert f"{folder} is a folder; give the key's file name" in err and "overwriting" not in err
    missing = tmp_path / "nowhere" / "voiceprint.key"
    assert main(["users", "init-key", str(missing)]) == 1
    err = capsys.readouterr().err  # was "[Errno 2] No such file or directory: '...'"
    assert f"the folder {missing.parent} does not exist; create it first" in err, err
    assert "Errno" not in err and list(folder.iterdir()) == []


def test_enroll_with_an_unreadable_take_says_nothing_was_stored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np
    import soundfile as sf

    cfg = _device(tmp_path)
    good = tmp_path / "good.wav"
    sf.write(good, np.random.default_rng(0).normal(0, 0.1, 16000), 16000)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\0\0\0\0WAVEfmt garbage")
    capsys.readouterr()
    assert main(["enroll", "carol", "--from", str(good), str(bad), "-c", str(cfg)]) == 1
    err = capsys.readouterr().err
    # It named the file only: did the other takes count, was carol half enrolled?
    assert f"{bad}: not a readable" in err, err
    assert "; nothing stored for carol: leave that file out or replace it" in err, err


def test_users_list_json_gives_every_user_for_scripts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An integrator's script had only the table to parse (`users list --json` was an
    unknown option): names with spaces and wide characters made columns a parser cannot split."""
    import json

    import numpy as np

    from voxgate.config import load_config
    from voxgate.voiceprints import open_store

    cfg = _device(tmp_path)
    capsys.readouterr()
    assert main(["users", "list", "--json", "-c", str(cfg)]) == 0
    assert json.loads(capsys.readouterr().out) == {"users": [], "unreadable": 0}

    emb = np.eye(3, 256, dtype=np.float32)
    with open_store(load_config(str(cfg))) as store:
        store.add_user("Ann Marie", emb, "ge2e-resemblyzer-0.1.4/int8")
        store.add_user("李小龍", emb[:2], "ge2e-resemblyzer-0.1.4/int8")
    capsys.readouterr()
    assert main(["users", "list", "--json", "-c", str(cfg)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["unreadable"] == 0
    rows = {u["name"]: u for u in doc["users"]}
    assert set(rows) == {"Ann Marie", "李小龍"}
    assert rows["Ann Marie"]["takes"] == 3 and rows["李小龍"]["takes"] == 2
    assert rows["Ann Marie"]["model"] == "ge2e-resemblyzer-0.1.4/int8"
    assert rows["Ann Marie"]["enrolled"].endswith("Z") and rows["Ann Marie"]["version"] >= 1


def test_verify_and_identify_tell_an_error_from_no_match(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 1 was both "not this person" and "could not check" (a missing file, a broken
    config), and with --json an error left stdout empty for the script parsing it."""
    import json

    cfg = _device(tmp_path)
    missing = str(tmp_path / "nowhere.wav")
    capsys.readouterr()
    assert main(["verify", "alice", missing, "-c", str(cfg), "--json"]) == 2
    out, err = capsys.readouterr()
    assert "no such file" in json.loads(out)["error"] and "no such file" in err
    assert main(["identify", missing, "-c", str(cfg)]) == 2
    assert capsys.readouterr().out == ""  # without --json: the message on stderr only
    broken = tmp_path / "broken.yaml"
    broken.write_text("speaker: [\n")
    assert main(["identify", missing, "-c", str(broken), "--json"]) == 2
    assert "config" in json.loads(capsys.readouterr().out)["error"]
