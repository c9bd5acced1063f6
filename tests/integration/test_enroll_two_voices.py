"""`voxgate enroll --from` with the takes of two FSDD speakers: refused, the other voice's
takes named, nothing stored (real audio from ../shared/data, the shipped model, a real store)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import soundfile as sf

from voxgate.cli import main
from voxgate.evaluation import load_recording

pytest.importorskip("voxgate.embedding")


def write_takes(data: Path, out: Path, speaker: str, count: int) -> list[str]:
    """`count` 4-digit takes of one FSDD speaker as WAV files (as the protocol's takes)."""
    root = data / "fsdd"
    with open(root / "manifest.csv", newline="") as f:
        paths = sorted(r["path"] for r in csv.DictReader(f) if r["speaker"] == speaker)
    files = []
    for i in range(count):
        wav = out / f"{speaker}{i + 1}.wav"
        sf.write(wav, load_recording(root, ";".join(paths[i * 4 : i * 4 + 4])), 16000)
        files.append(str(wav))
    return files


def george_and_lucas(data: Path, tmp: Path, extra: str = "") -> tuple[Path, list[str], list[str]]:
    """A config with a fresh key (plus `extra` speaker lines) and 5 takes each of two FSDD
    speakers, george and lucas."""
    key = tmp / "voiceprint.key"
    assert main(["users", "init-key", str(key)]) == 0
    cfg = tmp / "voxgate.yaml"
    cfg.write_text(
        f"data_dir: {tmp / 'data'}\nspeaker:\n  key_file: {key}\n  enroll_min_speech_s: 6\n" + extra
    )
    return cfg, write_takes(data, tmp, "george", 5), write_takes(data, tmp, "lucas", 5)


def test_cli_refuses_two_voices_and_names_the_takes(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, george, lucas = george_and_lucas(shared_data, tmp_path)
    capsys.readouterr()
    assert main(["enroll", "george", "--from", *george, *lucas, "-c", str(cfg)]) == 1
    out, err = capsys.readouterr()
    assert "sound like a different voice" in err and "not enrolled" in err
    # Said once, in the command's report: the library's "warning: enrollment refused: ..."
    # above it said the same again.
    assert err.count("sound like a different voice") == 1 and "warning:" not in err, err
    # Not "5 of 10 takes used": none is.
    assert "takes used" not in out, out
    assert ": nothing stored; 5 of 10 takes passed their checks" in out, out
    named = [line for line in out.splitlines() if "different voice from the other takes" in line]
    assert len(named) == 5 and (
        all("lucas" in n for n in named) or all("george" in n for n in named)
    )
    capsys.readouterr()
    assert main(["users", "list", "-c", str(cfg)]) == 0
    assert "george" not in capsys.readouterr().out  # nothing stored

    assert main(["enroll", "george", "--from", *george, "-c", str(cfg)]) == 0  # one voice


def test_cli_counts_a_take_given_twice_once(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`voxgate enroll george --from a.wav a.wav ...` (one recording ten times) was enrolled
    as 10 takes and 25 s of speech; now the copies are named and nothing is stored."""
    key = tmp_path / "voiceprint.key"
    assert main(["users", "init-key", str(key)]) == 0
    cfg = tmp_path / "voxgate.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'data'}\nspeaker:\n  key_file: {key}\n")
    (one,) = write_takes(shared_data, tmp_path, "george", 1)
    capsys.readouterr()
    assert main(["enroll", "george", "--from", *[one] * 10, "-c", str(cfg)]) == 1
    out, err = capsys.readouterr()
    assert "nothing stored; 1 of 10 takes passed their checks" in out, out
    assert out.count("REJECTED: the same recording as take 1") == 9, out
    assert "need 3 good takes, have 1" in err
    assert main(["users", "list", "-c", str(cfg)]) == 0
    assert "george" not in capsys.readouterr().out  # nothing stored


def test_a_configured_cohort_that_cannot_be_read_stops_enroll(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`speaker.cohort` naming a missing file (a typo): `voxgate verify` and the daemon
    refuse to score with it, but `voxgate enroll` logged "no cohort, takes not checked for
    two voices", skipped that check and stored 5 takes of george and 5 of lucas as one
    person. Now it stops before any take, naming the cohort file, as verify does."""
    missing = tmp_path / "cohort-typo.npz"
    cfg, george, lucas = george_and_lucas(shared_data, tmp_path, f"  cohort: {missing}\n")
    capsys.readouterr()
    assert main(["enroll", "george", "--from", *george, *lucas, "-c", str(cfg)]) == 1
    out, err = capsys.readouterr()
    assert f"error: cohort file missing: {missing}" in err and "takes used" not in out
    assert main(["verify", "george", george[0], "-c", str(cfg)]) == 2  # the same refusal
    assert f"error: cohort file missing: {missing}" in capsys.readouterr().err
    assert main(["users", "list", "-c", str(cfg)]) == 0
    assert "george" not in capsys.readouterr().out  # nothing stored


def test_the_api_refuses_to_enroll_with_a_configured_cohort_it_cannot_use(
    shared_data: Path, tmp_path: Path
) -> None:
    """The standalone `voxgate api` loads no cohort at start; with `speaker.cohort` naming a
    missing file its enrollment logged "no cohort, takes not checked for two voices" and
    stored 5 takes of george and 5 of lucas as one person (201). Now: 503
    `cohort_unavailable`, naming the file, and nothing stored."""
    pytest.importorskip("flask")
    from test_api import Client

    from voxgate.api import ApiServer, UserAdmin, create_app
    from voxgate.config import parse_config
    from voxgate.embedding import load_embedder
    from voxgate.voiceprints import VoiceprintStore

    missing = tmp_path / "cohort-typo.npz"
    cfg = parse_config(
        f"device_id: door-test\ndata_dir: {tmp_path}\n"
        f"speaker: {{enroll_min_speech_s: 6, cohort: {missing}}}\n"
    )
    store = VoiceprintStore(tmp_path / "voiceprints.db", bytes(range(32)))
    admin = UserAdmin(store, cfg.speaker, cfg.vad, load_embedder)
    server = ApiServer(create_app(cfg, admin, b"t" * 32), "127.0.0.1", 0, poll_interval=0.05)
    server.start()
    try:
        takes = write_takes(shared_data, tmp_path, "george", 5)
        takes += write_takes(shared_data, tmp_path, "lucas", 5)
        files = [(f"t{i}.wav", Path(t).read_bytes()) for i, t in enumerate(takes)]
        status, reply, _ = Client(server.port, "t" * 32).upload("/api/v1/users/george", files)
        assert status == 503, reply
        assert reply["error"] == "cohort_unavailable"
        assert f"cohort file missing: {missing}" in reply["message"]
        assert store.users() == []
    finally:
        server.stop()
        store.close()
