"""A stalled loop stops the watchdog pings (so systemd would restart it); capture keeps going
and drops the oldest audio, counted in the metrics. STATUS= tells when the broker is gone."""

from __future__ import annotations

import shutil
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

from service_standins import (
    NotifyListener,
    RecordingLink,
    espeak,
    silence,
    standin_stages,
    wait_until,
    write_wav,
)

from voxgate.audio.file import FileSource
from voxgate.config import VoxgateConfig
from voxgate.service.loop import Daemon
from voxgate.service.notify import Notifier

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")


def looped(path: Path, **extra: object) -> VoxgateConfig:
    return VoxgateConfig.model_validate(
        {
            "data_dir": str(path.parent / "data"),
            "audio": {"source": "file", "path": str(path), "realtime": True, "loop": True},
            **extra,
        }
    )


def test_stalled_loop_stops_pinging_and_capture_drops_oldest(tmp_path: Path) -> None:
    speech = np.concatenate([silence(0.3), espeak("four seven one nine two"), silence(1.0)])
    path = write_wav(tmp_path / "speech.wav", speech)
    listener = NotifyListener(tmp_path / "notify")
    cfg = looped(path, challenge={"mode": "off"}, service={"queue_s": 0.5}, metrics={"port": 0})
    stages = standin_stages(FileSource(path, realtime=True, loop=True), {}, challenge=False)
    gate = threading.Event()  # cleared: the embedder's push() blocks = a stuck stage
    stages.embedder.stall = gate
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "200000"}
    d = Daemon(cfg, stage_factory=lambda c: stages, notifier=Notifier(env))
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    try:
        assert wait_until(lambda: listener.has("READY=1"), 20)
        assert wait_until(lambda: stages.embedder.pushes > 0, 10)  # speech: the stall begins
        stalled_at = time.monotonic()
        time.sleep(1.5)
        assert [p for p in listener.times("WATCHDOG=1") if p > stalled_at + 0.15] == []
        gate.set()
        resumed = time.monotonic()
        assert wait_until(
            lambda: len([p for p in listener.times("WATCHDOG=1") if p > resumed]) >= 3, 5
        )
        # 1.5 s of capture against a 0.5 s queue: about a second of the oldest audio dropped.
        assert d.frames is not None and d.frames.dropped > 20
        assert wait_until(lambda: _metric(d, "voxgate_audio_dropped_seconds_total") > 0.5, 5)
    finally:
        d.request_stop("test over")
        gate.set()
        t.join(10)
        listener.close()
    assert not t.is_alive()
    assert listener.has("STOPPING=1")


def _metric(d: Daemon, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{d.metrics_port}/metrics", timeout=5).read()
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_status_says_when_the_broker_is_unreachable(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "quiet.wav", silence(3.0))
    listener = NotifyListener(tmp_path / "notify")
    link = RecordingLink()
    stages = standin_stages(FileSource(path, realtime=True, loop=True), {}, link)
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
    d = Daemon(
        looped(path, metrics={"enabled": False}), stage_factory=lambda c: stages, notifier=notifier
    )
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    try:
        assert wait_until(lambda: "idle: listening for speech" in listener.statuses(), 20)
        link.connected = False
        assert wait_until(
            lambda: any("MQTT broker not connected" in s for s in listener.statuses()), 5
        )
        link.connected = True
        assert wait_until(lambda: listener.statuses()[-1] == "idle: listening for speech", 5)
    finally:
        d.request_stop("test over")
        t.join(10)
        listener.close()
