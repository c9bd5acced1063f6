"""Prometheus metrics scraped over real HTTP from a running daemon loop."""

from __future__ import annotations

import shutil
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

from prometheus_client.parser import text_string_to_metric_families
from service_standins import (
    MelEmbedder,
    RecordingLink,
    attempt_recording,
    espeak,
    standin_stages,
    wait_until,
)
from socket_helpers import sent_so_far

from voxgate.audio.file import FileSource
from voxgate.config import VoxgateConfig
from voxgate.service.loop import Daemon
from voxgate.service.metrics import Metrics
from voxgate.service.notify import Notifier

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")


def scrape(port: int) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_metrics_from_a_running_daemon(tmp_path: Path) -> None:
    rec = attempt_recording(tmp_path)
    vp = MelEmbedder().embed(espeak("three, eight, two, five, six", voice="en+m3"))
    link = RecordingLink()
    # The same recording over and over: the first pass is granted, the repeats are replays.
    stages = standin_stages(FileSource(rec, loop=True), {"me": vp}, link)
    cfg = VoxgateConfig.model_validate(
        {
            "data_dir": str(tmp_path / "data"),
            "audio": {"source": "file", "path": str(rec), "loop": True},
            "metrics": {"port": 0},
            "service": {"decided_hold_s": 0},
        }
    )
    d = Daemon(cfg, stage_factory=lambda c: stages, notifier=Notifier({}))
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    try:
        assert wait_until(lambda: len(link.of("decision")) >= 3, 30)
        assert d.metrics_port
        m = scrape(d.metrics_port)
    finally:
        d.request_stop("test over")
        t.join(10)
    assert m["voxgate_decisions_total{outcome=granted}"] == 1
    assert m["voxgate_decisions_total{outcome=denied}"] >= 2
    assert m["voxgate_decision_latency_seconds_count"] >= 3
    assert 0 < m["voxgate_decision_latency_seconds_sum"] < 10
    assert m["voxgate_utterances_total"] >= 6  # wake + answer per attempt
    assert m["voxgate_mqtt_connected"] == 1
    assert m["voxgate_audio_dropped_seconds_total"] == 0  # file input waits, never drops
    assert sum(v for k, v in m.items() if k.startswith("voxgate_state{")) == 1
    # After stop the endpoint is gone.
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{d.metrics_port}/metrics", timeout=2)


def test_port_in_use_is_logged_and_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    first = Metrics()
    port = first.serve("127.0.0.1", 0)
    assert port
    try:
        assert Metrics().serve("127.0.0.1", port) is None
        assert "not started" in caplog.text
    finally:
        first.stop()


def test_idle_connections_cannot_exhaust_the_daemons_threads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """prometheus_client's server gave every connection a thread that waited for a request
    line for ever: 100 idle sockets to the metrics port (on by default, no token) made 100
    threads in the daemon, whose unit has TasksMax=64."""
    import socket
    import time

    from voxgate.httplimits import MAX_CONNECTIONS

    m = Metrics()
    port = m.serve("127.0.0.1", 0, request_timeout_s=1.0)
    assert port
    before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
    try:
        time.sleep(0.5)
        assert threading.active_count() - before <= MAX_CONNECTIONS
        # Over the limit: a short 503 and the connection closed, not a thread.
        assert any(sent_so_far(s).startswith(b"HTTP/1.1 503") for s in idle)
        idle[0].settimeout(5)
        assert idle[0].recv(100) == b""  # closed after the request timeout
        for s in idle:
            s.close()
        assert wait_until(lambda: threading.active_count() <= before, 5)
        assert "voxgate_state{voxgate_state=idle}" in scrape(port)
    finally:
        for s in idle:
            s.close()
        m.stop()
    assert "Traceback" not in caplog.text
    # Refusals cost the sender a connection each: not a log line each.
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in refusals]


def test_the_inputs_dc_offset_is_a_gauge(tmp_path: Path, shared_data: Path) -> None:
    """Real speech (fsdd) 66 LSB off zero, looped as the door's input: the offset removed
    shows as voxgate_audio_dc_offset_lsb, read from the source by the loop (the audio
    sources know nothing of metrics)."""
    import csv

    import soundfile as sf

    from voxgate.audio.file import read_audio

    with (shared_data / "fsdd" / "manifest.csv").open() as f:
        paths = [r["path"] for r in csv.DictReader(f) if r["speaker"] == "lucas"][:8]
    speech = np.concatenate([read_audio(shared_data / "fsdd" / p) for p in paths])
    rec = tmp_path / "offset.wav"
    sf.write(rec, np.clip(speech.astype(np.int32) + 66, -32768, 32767).astype(np.int16), 16000)
    stages = standin_stages(FileSource(rec, loop=True), {}, RecordingLink())
    cfg = VoxgateConfig.model_validate(
        {
            "data_dir": str(tmp_path / "data"),
            "audio": {"source": "file", "path": str(rec), "loop": True},
            "metrics": {"port": 0},
        }
    )
    d = Daemon(cfg, stage_factory=lambda c: stages, notifier=Notifier({}))
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    try:
        assert wait_until(lambda: d.metrics_port is not None, 30)
        assert wait_until(
            lambda: scrape(d.metrics_port or 0).get("voxgate_audio_dc_offset_lsb", 0) > 0, 30
        )
        m = scrape(d.metrics_port or 0)
    finally:
        d.request_stop("test over")
        t.join(10)
    assert abs(m["voxgate_audio_dc_offset_lsb"] - 66) < 3, m
