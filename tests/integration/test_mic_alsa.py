"""The real PyAudio/PortAudio/ALSA path, fed from a file instead of a microphone.

ALSA's `file` PCM plugin with `infile` plays a raw file into whatever opens the PCM for
capture. The config is loaded through ALSA_CONFIG_PATH in a child process, so neither the
user's ALSA setup nor this test process is touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.audio_helpers import ALSA_CONF, espeak

pytest.importorskip("pyaudio", reason="PyAudio is not installed (pip install 'voxgate[mic]')")

READER = r"""
import json, sys
import numpy as np
from voxgate.audio.base import AudioError
from voxgate.audio.mic import MicSource, list_input_devices
want, rate, n = sys.argv[1], int(sys.argv[2]) if sys.argv[2] != "none" else None, int(sys.argv[3])
realtime = sys.argv[5] == "1"
try:
    src = MicSource(want, rate, realtime=realtime)
except AudioError as exc:
    print(json.dumps({"error": str(exc)}))
    sys.exit(0)
import time
frames = []
t0 = time.monotonic()
for f in src.frames(30):
    assert f.dtype == np.int16 and len(f) == 480
    frames.append(f)
    if len(frames) == n:
        break
src.close()
np.save(sys.argv[4], np.concatenate(frames))
print(json.dumps({"rate": src.rate, "name": src.device.name, "seconds": time.monotonic() - t0,
                  "devices": [d.name for d in list_input_devices()]}))
"""


def run_reader(
    tmp_path: Path, raw: Path, device: str, rate: int | None, frames: int, realtime: bool = False
) -> dict:
    if not Path("/usr/share/alsa/alsa.conf").exists():
        pytest.skip("ALSA is not installed (apt-get install libasound2 alsa-utils)")
    conf = tmp_path / "asound.conf"
    conf.write_text(ALSA_CONF.format(raw=raw))
    env = dict(os.environ, ALSA_CONFIG_PATH=str(conf))
    out = tmp_path / "captured.npy"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            READER,
            device,
            str(rate or "none"),
            str(frames),
            str(out),
            "1" if realtime else "0",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if "error" not in result:
        result["audio"] = np.load(out)
    return result


def write_raw(pcm16k: np.ndarray, rate: int, path: Path) -> None:
    from voxgate.audio.convert import float_to_int16, int16_to_float, resample

    path.write_bytes(float_to_int16(resample(int16_to_float(pcm16k), 16000, rate)).tobytes())


@pytest.mark.parametrize("rate", [16000, 44100, 48000])
def test_pyaudio_capture_through_alsa_file_pcm(tmp_path: Path, rate: int) -> None:
    speech = espeak("please open the front door", tmp_path / "s.wav")
    raw = tmp_path / "mic.raw"
    write_raw(speech, rate, raw)
    n = len(speech) // 480 - 2
    # A 44.1/48 kHz-only microphone: we ask for that rate and resample to 16 kHz ourselves.
    result = run_reader(tmp_path, raw, "voxgate_test_mic", rate, n)
    assert result["rate"] == rate and result["name"] == "voxgate_test_mic"
    got = result["audio"]
    assert len(got) == n * 480
    m = len(got) - 2000  # the resampler holds back up to 10 ms at the end
    corr = np.corrcoef(got[:m].astype(float), speech[:m].astype(float))[0, 1]
    assert corr > 0.99


def test_a_microphone_offset_is_removed_as_from_a_file(tmp_path: Path) -> None:
    """A microphone whose silence sits 230 LSB off zero: the capture path removes it to the
    very samples the file path gives for the same audio (audio.convert.remove_dc)."""
    from voxgate.audio.convert import remove_dc

    speech = espeak("please open the front door", tmp_path / "s.wav")
    pcm = np.rint(speech.astype(np.float64) * 0.4 + 230).astype(np.int16)
    raw = tmp_path / "mic.raw"
    raw.write_bytes(pcm.astype("<i2").tobytes())
    n = len(pcm) // 480 - 2
    got = run_reader(tmp_path, raw, "voxgate_test_mic", 16000, n)["audio"]
    assert np.array_equal(got, remove_dc(pcm)[: len(got)])
    assert abs(float(np.mean(got))) < 3


def test_missing_device_lists_the_available_ones(tmp_path: Path) -> None:
    raw = tmp_path / "mic.raw"
    raw.write_bytes(b"\x00" * 32000)
    result = run_reader(tmp_path, raw, "no such microphone", None, 1)
    assert "no input device matches 'no such microphone'" in result["error"]
    assert "voxgate_test_mic" in result["error"]  # the listing names what does exist


def test_realtime_pacing_makes_a_file_pcm_behave_like_a_microphone(tmp_path: Path) -> None:
    speech = espeak("one two three four", tmp_path / "s.wav")
    raw = tmp_path / "mic.raw"
    write_raw(speech, 48000, raw)
    fast = run_reader(tmp_path, raw, "voxgate_test_mic", 48000, 100)
    paced = run_reader(tmp_path, raw, "voxgate_test_mic", 48000, 100, realtime=True)
    # 100 frames of 30 ms: an unpaced file PCM hands them over as fast as the stream opens
    # and reads; a paced one takes (at least) the 3 s they last.
    assert paced["seconds"] >= 100 * 0.03 * 0.95
    assert fast["seconds"] < paced["seconds"] - 1.0
    assert np.array_equal(fast["audio"], paced["audio"])


STOPPER = r"""
import sys, time
from voxgate.audio.mic import MicSource
from voxgate.service.capture import Capture, FrameQueue
for _ in range(int(sys.argv[1])):
    src = MicSource("voxgate_test_mic", 16000)
    frames = FrameQueue(50)
    capture = Capture(src, 30, frames)
    capture.start()
    time.sleep(0.05)
    capture.stop()  # what shutdown does, while the capture thread is inside a read
    capture._thread.join(5)
    assert not capture.alive
    assert frames.received > 0
print("stopped cleanly")
"""


def test_stopping_the_capture_during_a_read_does_not_crash(tmp_path: Path) -> None:
    # MicSource.close() (shutdown's Capture.stop) closed the PortAudio stream and terminated
    # PortAudio under the capture thread's blocked read: the process died with SIGSEGV
    # (exit -11) within a few stops. The reader now releases the stream after its read.
    if not Path("/usr/share/alsa/alsa.conf").exists():
        pytest.skip("ALSA is not installed (apt-get install libasound2 alsa-utils)")
    raw = tmp_path / "mic.raw"
    raw.write_bytes(np.zeros(16000 * 5, np.int16).tobytes())
    conf = tmp_path / "asound.conf"
    conf.write_text(ALSA_CONF.format(raw=raw))
    env = dict(os.environ, ALSA_CONFIG_PATH=str(conf))
    proc = subprocess.run(
        [sys.executable, "-c", STOPPER, "30"], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stopped cleanly" in proc.stdout


def test_guided_enrollment_through_the_alsa_microphone_path(tmp_path: Path) -> None:
    """`voxgate enroll NAME` with `audio.source: mic` (PortAudio/ALSA), fed from the file
    PCM: the prompts, the progress and the stored voiceprint. The other guided-enrollment
    tests read `audio.source: file`, which does not go through MicSource."""
    run = guided_enrollment(tmp_path, 0)
    assert "DC offset" not in run.stdout  # a clean microphone: nothing to say while enrolling


def test_guided_enrollment_says_the_microphone_offset_it_removes(tmp_path: Path) -> None:
    """A microphone 66 LSB off zero: enrolling through it says the offset is removed (the
    takes are fine), without the daemon's advice to re-enroll."""
    run = guided_enrollment(tmp_path, 66)
    said = [s for s in run.stdout.splitlines() if "DC offset" in s]
    assert len(said) == 1, run.stdout
    offset = int(said[0].split("DC offset ")[1].split()[0])
    assert said[0].strip() == f"(microphone DC offset {offset:+d} LSB: removed)"
    assert abs(offset - 66) <= 3, said  # its first second of sound is the noisy pause
    assert "re-enroll" not in run.stdout + run.stderr


def guided_enrollment(tmp_path: Path, offset: int) -> subprocess.CompletedProcess[str]:
    """Guided enrollment of four spoken digit strings through the ALSA microphone path, with
    `offset` LSB added to every sample; asserts it enrolled."""
    if not Path("/usr/share/alsa/alsa.conf").exists():
        pytest.skip("ALSA is not installed (apt-get install libasound2 alsa-utils)")
    import voxgate

    texts = [
        "three nine one four, seven two eight five",
        "six zero two eight, one one five nine",
        "four four seven one, two six three zero",
        "eight five zero two, nine three one seven",
    ]
    pause = np.zeros(16000, np.int16)
    parts = [pause]
    for i, text in enumerate(texts):
        parts += [espeak(text, tmp_path / f"t{i}.wav", "en+m3"), pause]
    noise = np.random.default_rng(3).normal(0, 10, sum(len(p) for p in parts))
    raw = tmp_path / "mic.raw"
    pcm = np.clip(np.concatenate(parts) + noise + offset, -32768, 32767).astype(np.int16)
    write_raw(pcm, 48000, raw)
    conf = tmp_path / "asound.conf"
    conf.write_text(ALSA_CONF.format(raw=raw))
    key = tmp_path / "voiceprint.key"
    cfg = tmp_path / "voxgate.yaml"
    cfg.write_text(
        f"data_dir: {tmp_path / 'data'}\naudio:\n  source: mic\n  device: voxgate_test_mic\n"
        f"speaker:\n  key_file: {key}\n  enroll_min_speech_s: 6\n"
    )
    env = dict(
        os.environ,
        ALSA_CONFIG_PATH=str(conf),
        PYTHONPATH=str(Path(voxgate.__file__).parents[1]),
    )

    def voxgate_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "voxgate", *args], env=env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip

    assert voxgate_cli("users", "init-key", str(key)).returncode == 0
    run = voxgate_cli("enroll", "erin", "-c", str(cfg))
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "take 1: say" in out and "progress: 1 of 3 takes" in out, out
    assert "enrolled erin with model ge2e-resemblyzer-0.1.4/int8" in out, out
    listing = voxgate_cli("users", "list", "-c", str(cfg))
    assert "erin" in listing.stdout and "ge2e-resemblyzer-0.1.4/int8" in listing.stdout
    return run


def test_devices_with_no_input_says_what_to_check() -> None:
    # Found running README's `voxgate devices` on a machine without a microphone: it printed
    # only "no audio input devices found" (exit 1), not where to look next.
    if not Path("/usr/share/alsa/alsa.conf").exists():
        pytest.skip("ALSA is not installed (apt-get install libasound2 alsa-utils)")
    env = dict(os.environ, ALSA_CONFIG_PATH="/usr/share/alsa/alsa.conf")  # no user ALSA setup
    done = subprocess.run(
        [sys.executable, "-m", "voxgate", "devices"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode == 0:
        pytest.skip(f"this machine has an audio input: {done.stdout}")
    assert done.returncode == 1
    assert "no audio input devices found" in done.stderr, done
    assert "arecord -l" in done.stderr and "'audio' group" in done.stderr, done.stderr


LOGGING_READER = r"""
import logging, sys
from voxgate.audio.mic import MicSource
from voxgate.logs import JsonFormatter
handler = logging.StreamHandler(sys.stdout)
handler.setFormatter(JsonFormatter())
logging.getLogger().addHandler(handler)
logging.getLogger().setLevel(logging.INFO)
src = MicSource("voxgate_test_mic", 16000)
for i, _ in enumerate(src.frames(30)):
    if i == int(sys.argv[1]):
        break
src.close()
"""


def dc_lines(tmp_path: Path, pcm: np.ndarray) -> list[dict]:
    """The daemon's log lines (JSON) that carry a DC offset, for `pcm` through the ALSA
    microphone path."""
    if not Path("/usr/share/alsa/alsa.conf").exists():
        pytest.skip("ALSA is not installed (apt-get install libasound2 alsa-utils)")
    raw = tmp_path / "mic.raw"
    raw.write_bytes(pcm.astype("<i2").tobytes())
    conf = tmp_path / "asound.conf"
    conf.write_text(ALSA_CONF.format(raw=raw))
    env = dict(os.environ, ALSA_CONFIG_PATH=str(conf))
    proc = subprocess.run(
        [sys.executable, "-c", LOGGING_READER, str(len(pcm) // 480 - 2)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(s) for s in proc.stdout.splitlines() if s.startswith("{")]
    return [x for x in lines if "dc_offset_lsb" in x]


def fsdd_speech(shared_data: Path, speaker: str = "lucas", takes: int = 8) -> np.ndarray:
    """A few seconds of one fsdd speaker's real recordings, one after another."""
    import csv

    from voxgate.audio.file import read_audio

    with (shared_data / "fsdd" / "manifest.csv").open() as f:
        paths = [r["path"] for r in csv.DictReader(f) if r["speaker"] == speaker][:takes]
    return np.concatenate([read_audio(shared_data / "fsdd" / p) for p in paths])


def test_a_microphone_offset_is_logged_once_with_its_value(
    tmp_path: Path, shared_data: Path
) -> None:
    """A microphone whose silence sits 66 LSB off zero: the daemon says so once, as a
    warning that voiceprints enrolled before DC removal hold it (the one-liner in
    docs/speaker-verification.md was the only way to know)."""
    speech = fsdd_speech(shared_data)
    pcm = np.clip(speech.astype(np.int32) + 66, -32768, 32767).astype(np.int16)
    lines = dc_lines(tmp_path, pcm)
    assert len(lines) == 1, lines  # once per stream, not once a second
    line = lines[0]
    assert abs(line["dc_offset_lsb"] - 66) < 3, line
    assert line["level"] == "warning" and line["logger"] == "voxgate.audio.mic"
    assert line["msg"].startswith("microphone DC offset +66 LSB (removed before the VAD)")
    assert "voxgate enroll NAME --replace" in line["msg"]


def test_a_clean_microphone_logs_its_offset_as_information(
    tmp_path: Path, shared_data: Path
) -> None:
    lines = dc_lines(tmp_path, fsdd_speech(shared_data))
    assert len(lines) == 1, lines
    assert lines[0]["level"] == "info", lines
    assert abs(lines[0]["dc_offset_lsb"]) < 3
    assert "re-enroll" not in lines[0]["msg"]
