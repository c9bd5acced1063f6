"""`voxgate verify NAME -` and `voxgate identify -`: a recording piped in (`arecord ... -t wav |`,
/dev/stdin, bash's `<(...)`) is scored as the same bytes in a file are; nothing, garbage, a
terminal, a device and an endless pipe on standard input are one clear error each (exit 2).
Real subprocess runs of the CLI, FSDD speech from ../shared/data, the shipped model, a real
store."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.audio_helpers import ALSA_CONF
from tests.integration.test_enroll_two_voices import write_takes
from voxgate.cli import main
from voxgate.evaluation import load_recording

pytest.importorskip("voxgate.embedding")

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Door:
    cfg: Path
    dir: Path
    pcm: np.ndarray  # george's attempt, 16 kHz int16
    wav: Path  # ... as a WAV file
    file_doc: dict  # `voxgate verify george WAV --json` on it


def voxgate(*args: str, stdin: bytes | int | None = None, **kw: object) -> tuple[int, str, str]:
    """One `python -m voxgate ...` child: (exit status, stdout, stderr). `stdin` bytes are
    piped in; a file descriptor is handed over as it is."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    env.pop("CREDENTIALS_DIRECTORY", None)
    env["PYTHONPATH"] = str(REPO / "daemon")
    piped = isinstance(stdin, bytes)
    done = subprocess.run(
        [sys.executable, "-m", "voxgate", *args],
        input=stdin if piped else None,
        stdin=None if piped else (subprocess.DEVNULL if stdin is None else stdin),
        env=env,
        capture_output=True,
        timeout=300,
        **kw,  # type: ignore[call-overload]
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def wav_bytes(pcm: np.ndarray, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, pcm, 16000, format=fmt, subtype="PCM_16")
    return buf.getvalue()


def streamed_wav(pcm: np.ndarray, data_size: int) -> bytes:
    """A 16 kHz mono 16-bit WAV as a writer into a pipe leaves it: it cannot go back to fill
    in the lengths, so its data chunk says `data_size` (arecord: 0x80000000; others 0,
    0x7FFFF000 or 0xFFFFFFFF) and the RIFF size follows from that."""
    fmt = (16).to_bytes(4, "little") + np.array([1, 1], "<u2").tobytes()
    fmt += np.array([16000, 32000], "<u4").tobytes() + np.array([2, 16], "<u2").tobytes()
    riff = ((data_size + 36) & 0xFFFFFFFF).to_bytes(4, "little")
    head = b"RIFF" + riff + b"WAVEfmt " + fmt + b"data" + data_size.to_bytes(4, "little")
    assert len(head) == 44
    return head + pcm.astype("<i2").tobytes()


@pytest.fixture(scope="module")
def door(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Door:
    """george enrolled from 5 FSDD takes; his attempt: 4 other digits of his."""
    tmp = tmp_path_factory.mktemp("door")
    key = tmp / "voiceprint.key"
    assert main(["users", "init-key", str(key)]) == 0
    cfg = tmp / "voxgate.yaml"
    cfg.write_text(
        f"data_dir: {tmp / 'data'}\nspeaker:\n  key_file: {key}\n  enroll_min_speech_s: 6\n"
    )
    assert main(["enroll", "george", "--from", *write_takes(shared_data, tmp, "george", 5),
                 "-c", str(cfg)]) == 0  # fmt: skip
    with open(shared_data / "fsdd" / "manifest.csv", newline="") as f:
        paths = sorted(r["path"] for r in csv.DictReader(f) if r["speaker"] == "george")
    pcm = load_recording(shared_data / "fsdd", ";".join(paths[-4:]))  # not among the takes
    wav = tmp / "attempt.wav"
    wav.write_bytes(wav_bytes(pcm))
    code, out, err = voxgate("verify", "george", str(wav), "--json", "-c", str(cfg))
    assert code == 0, (out, err)  # a match: the piped runs below must give it too
    return Door(cfg, tmp, pcm, wav, json.loads(out))


def test_verify_and_identify_score_piped_bytes_as_the_same_file(door: Door) -> None:
    cfg = str(door.cfg)
    wav = door.wav.read_bytes()
    for name, data in (("-", wav), ("/dev/stdin", wav), ("-", wav_bytes(door.pcm, "FLAC"))):
        code, out, err = voxgate("verify", "george", name, "--json", "-c", cfg, stdin=data)
        assert code == 0, (name, err)
        assert json.loads(out) == door.file_doc, name  # the same score, to the last digit
    # bash's process substitution hands over a FIFO (/dev/fd/63).
    bash = shutil.which("bash")
    if bash is not None:
        line = 'exec "$0" -m voxgate verify george <(cat "$1") --json -c "$2"'
        env = {**os.environ, "PYTHONPATH": str(REPO / "daemon")}
        done = subprocess.run(
            [bash, "-c", line, sys.executable, str(door.wav), cfg],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == door.file_doc
    code, by_file, err = voxgate("identify", str(door.wav), "--json", "-c", cfg)
    assert code == 0 and json.loads(by_file)["user"] == "george", err
    code, piped, err = voxgate("identify", "-", "--json", "-c", cfg, stdin=wav)
    assert code == 0, err
    assert json.loads(piped) == json.loads(by_file)


@pytest.mark.parametrize("data_size", [0x80000000, 0, 0x7FFFF000, 0xFFFFFFFF])
def test_a_wav_streamed_into_the_pipe_without_its_length(door: Door, data_size: int) -> None:
    # 0 was read by libsndfile as a WAV without samples: "no audio in the file".
    code, out, err = voxgate(
        "verify", "george", "-", "--json", "-c", str(door.cfg),
        stdin=streamed_wav(door.pcm, data_size),
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out) == door.file_doc
    assert "cut short" not in err


@pytest.mark.skipif(shutil.which("arecord") is None, reason="needs arecord (alsa-utils)")
def test_arecord_piped_into_verify(door: Door) -> None:
    """`arecord -f S16_LE -r 16000 -t wav | voxgate verify george -` with a real arecord, its
    capture device ALSA's file plugin playing the attempt (no microphone needed)."""
    raw = door.dir / "mic.raw"
    raw.write_bytes(np.concatenate([door.pcm, np.zeros(16000, np.int16)]).astype("<i2").tobytes())
    conf = door.dir / "asound.conf"
    conf.write_text(ALSA_CONF.format(raw=raw))
    arecord = subprocess.Popen(
        ["arecord", "-q", "-D", "voxgate_test_mic", "-f", "S16_LE", "-r", "16000", "-c", "1",
         "-s", str(len(door.pcm)), "-t", "wav"],
        env={**os.environ, "ALSA_CONFIG_PATH": str(conf)},
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert arecord.stdout is not None
    try:
        code, out, err = voxgate(
            "verify", "george", "-", "--json", "-c", str(door.cfg), stdin=arecord.stdout.fileno()
        )
    finally:
        arecord.stdout.close()
        recorded = arecord.wait(60)
    assert code == 0, err
    assert json.loads(out) == door.file_doc
    assert recorded == 0


def _error(err: str, *parts: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(p in lines[0] for p in parts), err


def test_nothing_or_garbage_on_stdin_is_one_clear_error(door: Door) -> None:
    cfg = str(door.cfg)
    code, out, err = voxgate("verify", "george", "-", "-c", cfg, stdin=b"")
    assert code == 2
    _error(err, "standard input: nothing was piped in (0 bytes); pipe a WAV or FLAC recording")
    code, out, err = voxgate("identify", "-", "--json", "-c", cfg, stdin=b"")
    assert code == 2 and "nothing was piped in" in json.loads(out)["error"]
    # Raw PCM (arecord without -t wav) has no header; text is no audio either.
    for garbage in (door.pcm.astype("<i2").tobytes(), b"hello, this is no recording\n"):
        code, out, err = voxgate("verify", "george", "-", "-c", cfg, stdin=garbage)
        assert code == 2
        _error(err, "standard input: not a readable WAV/FLAC recording (", "add -t wav")
        assert "BytesIO" not in err
    # A header with no samples after it.
    code, out, err = voxgate("verify", "george", "-", "-c", cfg, stdin=wav_bytes(door.pcm[:0]))
    assert code == 2
    _error(err, "standard input: no audio in the file")


def test_a_terminal_a_device_or_an_endless_pipe_is_refused(door: Door) -> None:
    cfg = str(door.cfg)
    # Nothing piped at all: waiting for a terminal's input would look like a hang.
    parent, child = os.openpty()
    try:
        code, _, err = voxgate("verify", "george", "-", "-c", cfg, stdin=child)
    finally:
        os.close(parent)
        os.close(child)
    assert code == 2
    _error(err, "standard input is a terminal: pipe a recording into it, e.g. arecord")
    with open("/dev/zero", "rb") as zero:
        code, _, err = voxgate("verify", "george", "-", "-c", cfg, stdin=zero.fileno())
    assert code == 2
    _error(err, "standard input is a device, not a recording")
    code, _, err = voxgate("verify", "george", "/dev/zero", "-c", cfg)
    assert code == 2
    _error(err, "/dev/zero: is a device, not an audio file")
    # An endless writer is read up to the cap, then refused.
    bash = shutil.which("bash")
    if bash is None:
        return
    line = 'exec "$0" -m voxgate verify george <(cat /dev/zero) -c "$1"'
    env = {**os.environ, "PYTHONPATH": str(REPO / "daemon")}
    done = subprocess.run(
        [bash, "-c", line, sys.executable, cfg], env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    _error(done.stderr, ": more than 200 MB piped in", "at most 120 s")


def test_enroll_takes_one_take_from_stdin(door: Door, shared_data: Path) -> None:
    cfg = str(door.cfg)
    takes = write_takes(shared_data, door.dir, "lucas", 5)
    code, out, err = voxgate("enroll", "lucas", "--from", *takes[:4], "-", "-", "-c", cfg)
    assert code == 1
    _error(err, "--from: - (standard input) can hold one take")
    piped = Path(takes[4]).read_bytes()
    code, out, err = voxgate("enroll", "lucas", "--from", *takes[:4], "-", "-c", cfg, stdin=piped)
    assert code == 0, (out, err)
    assert "5 of 5 takes used" in out, out
    # The piped take is called what the read errors call it, not "-".
    assert re.search(r"\n  take  5 standard input +speech", out), out
    assert not re.search(r"take +\d+ - ", out), out
