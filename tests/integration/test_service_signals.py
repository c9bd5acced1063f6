"""The daemon as a process: READY/WATCHDOG/STATUS/STOPPING over a real notify socket,
SIGHUP reload (bad config kept out), SIGTERM -> offline and exit 0 within 5 s."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

SUPPORT = Path(__file__).resolve().parents[1] / "support"
sys.path.insert(0, str(SUPPORT))

from service_standins import NotifyListener, attempt_recording, wait_until  # noqa: E402

from voxgate.audit import verify  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")


def write_config(path: Path, data_dir: Path, audio: Path, **extra: object) -> None:
    cfg = {
        "data_dir": str(data_dir),
        "audio": {"source": "file", "path": str(audio), "realtime": True, "loop": True},
        "metrics": {"enabled": False},
        **extra,
    }
    path.write_text(yaml.safe_dump(cfg))


def test_daemon_process_lifecycle(tmp_path: Path) -> None:
    audio = attempt_recording(tmp_path)
    conf = tmp_path / "voxgate.yaml"
    data = tmp_path / "data"
    write_config(conf, data, audio)
    listener = NotifyListener(tmp_path / "notify")
    log_path = tmp_path / "daemon.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "daemon"),
        "NOTIFY_SOCKET": str(tmp_path / "notify"),
        "WATCHDOG_USEC": "300000",
    }
    env.pop("WATCHDOG_PID", None)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(SUPPORT / "service_harness.py"),
                str(conf),
                str(tmp_path / "link"),
            ],
            env=env,
            stderr=log,
        )
    try:
        assert wait_until(lambda: listener.has("READY=1"), 30), log_path.read_text()
        assert listener.has("STATUS=starting: ")  # said what it was doing before READY
        # Watchdog from the loop: every ~0.15 s (half of WATCHDOG_USEC).
        time.sleep(1.5)
        pings = [t for t in listener.times("WATCHDOG=1") if t > time.monotonic() - 1.4]
        assert len(pings) >= 5
        assert max(b - a for a, b in itertools.pairwise(pings)) < 0.3 + 0.25  # slack: busy CI

        # An invalid config is refused; the daemon keeps running with the old one.
        conf.write_text("lockout: {max_failures: -3}\n")
        proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "config reload rejected" in log_path.read_text(), 10)
        assert proc.poll() is None
        # A valid one is applied (lockout is a live section; audio needs a restart).
        write_config(conf, data, audio, lockout={"max_failures": 3})
        proc.send_signal(signal.SIGHUP)

        def reloads() -> list[dict]:
            lines = (data / "audit.jsonl").read_text().splitlines()
            return [r for r in map(json.loads, lines) if r["event"] == "config_reload"]

        assert wait_until(lambda: len(reloads()) == 2, 10)
        bad, good = reloads()
        assert bad["ok"] is False and "lockout.max_failures" in bad["problems"][0]
        assert good["ok"] is True and good["applied"] == ["lockout"]
        assert listener.has("RELOADING=1")

        # SIGTERM: STOPPING=1, offline published, exit 0 within 5 s.
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        listener.close()
    assert code == 0, log_path.read_text()
    assert took < 5.0
    assert listener.has("STOPPING=1")
    published = [json.loads(x) for x in (tmp_path / "link").read_text().splitlines()]
    states = [v for k, v in published if k == "state"]
    assert states[0] == "idle" and states[-1] == "offline"
    assert published[-1] == ["stop", None]
    rep = verify(data / "audit.jsonl")
    assert rep.ok, rep.problems
    last = json.loads((data / "audit.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "service_stop" and last["reason"] == "SIGTERM"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "daemon")}
    return subprocess.run(
        [sys.executable, "-m", "voxgate", "run", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
    )


def test_run_with_invalid_config_exits_78_with_the_problems(tmp_path: Path) -> None:
    conf = tmp_path / "bad.yaml"
    conf.write_text("audio:\n  sourc: mic\nlockout: {initial_s: 0}\n")
    res = run_cli("-c", str(conf), cwd=tmp_path)
    assert res.returncode == 78
    assert "line 2: audio.sourc: unknown key" in res.stderr
    assert "lockout.initial_s" in res.stderr


def test_run_with_missing_audio_file_is_a_clear_error(tmp_path: Path) -> None:
    conf = tmp_path / "ok.yaml"
    conf.write_text(f"data_dir: {tmp_path / 'data'}\n")
    res = run_cli("-c", str(conf), "--source", "file", cwd=tmp_path)
    assert res.returncode == 78
    assert "audio.path is not set" in res.stderr


def test_run_with_a_missing_microphone_lists_the_inputs(tmp_path: Path) -> None:
    conf = tmp_path / "mic.yaml"
    conf.write_text(
        f"data_dir: {tmp_path / 'data'}\naudio: {{source: mic, device: no-such-mic-here}}\n"
    )
    res = run_cli("-c", str(conf), cwd=tmp_path)
    assert res.returncode == 74, res.stderr
    # With PyAudio: the device list; without it: how to install it.
    assert "no input device matches 'no-such-mic-here'; available inputs:" in res.stderr or (
        "needs PyAudio" in res.stderr
    )
