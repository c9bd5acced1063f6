"""`voxgate actuator --forget DEVICE`: the remedy for a door whose sequence numbers went
backwards, instead of hand-editing the state file. Real processes: a running actuator (no
broker needed: it keeps retrying) holds its lock, and --forget refuses until it is stopped."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from voxgate.actuator import Actuator, load_actuator_config
from voxgate.decision import Issuer, SequenceCounter, sign

KEY = b"integration-forget-decision-key!"
BACK_KEY = b"integration-forget-back-door-key!"
DEV = "front-door"
T0 = 1_790_000_000.0


def _voxgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voxgate", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def lock_cfg(tmp_path: Path) -> Path:
    key = tmp_path / "front-door.key"
    key.write_bytes(KEY)
    back = tmp_path / "back-door.key"  # each door its own key: one key for two is refused
    back.write_bytes(BACK_KEY)
    cfg = tmp_path / "actuator.yaml"
    cfg.write_text(
        "broker: {host: 127.0.0.1, port: 1}\n"  # nothing listens: the actuator just retries
        f"devices: [{{id: {DEV}, key_file: {key}}}, {{id: back-door, key_file: {back}}}]\n"
        f"state_file: {tmp_path / 'state' / 'state.json'}\n"
        "command: {argv: [/bin/true]}\n"
    )
    return cfg


def _state(cfg: Path) -> Path:
    return load_actuator_config(cfg).state_file


def test_forget_is_refused_while_the_actuator_runs_then_frees_the_door(
    lock_cfg: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = _state(lock_cfg)
    state.parent.mkdir()
    state.write_text(
        json.dumps(
            {
                "last_seq": {DEV: 501, "back-door": 7},
                "last_issued_at": {DEV: T0, "back-door": T0 - 5},
            }
        )
    )
    state.chmod(0o640)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "voxgate", "actuator", "-c", str(lock_cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        for line in proc.stderr:  # wait until it runs (and so holds its lock)
            if "actuator started" in line or time.monotonic() > deadline:
                break
        busy = _voxgate("actuator", "-c", str(lock_cfg), "--forget", DEV)
        assert busy.returncode == 2, busy
        assert "another voxgate actuator is running" in busy.stderr
        assert "stop it first" in busy.stderr
        assert json.loads(state.read_text())["last_seq"] == {DEV: 501, "back-door": 7}
        # A second actuator on the same state file is refused too.
        second = _voxgate("actuator", "-c", str(lock_cfg))
        assert second.returncode == 2 and "another voxgate actuator is running" in second.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)

    done = _voxgate("actuator", "-c", str(lock_cfg), "--forget", DEV)
    assert done.returncode == 0, done
    assert f"forgot '{DEV}' (its last accepted seq was 501" in done.stdout
    assert f"forgot door {DEV}: removed its last accepted seq 501" in done.stderr  # the log line
    data = json.loads(state.read_text())
    assert data["last_seq"] == {"back-door": 7}
    assert data["last_issued_at"] == {"back-door": T0 - 5}
    assert [(f["device"], f["last_seq"]) for f in data["forgotten"]] == [(DEV, 501)]
    assert state.stat().st_mode & 0o777 == 0o640  # owner and mode kept
    left = sorted(p.name for p in state.parent.iterdir())  # no backup or temp file
    assert left == ["state.json", "state.json.client-id", "state.json.lock"]

    again = _voxgate("actuator", "-c", str(lock_cfg), "--forget", DEV)
    assert again.returncode == 2
    assert "holds no sequence number for 'front-door' (it holds: back-door)" in again.stderr

    # The door's rewound numbers are accepted again; the record carried on keeps the history.
    cfg = load_actuator_config(lock_cfg)
    lock = Actuator(cfg, keys={DEV: KEY, "back-door": BACK_KEY}, clock=lambda: T0 + 60)
    door = Issuer(DEV, SequenceCounter(state.parent / "door-seq.json", clock=None), ttl_s=5)
    d = door.issue("granted", "alice", T0 + 60)
    assert d.seq == 1
    with caplog.at_level(logging.WARNING):
        assert lock.handle(f"voxgate/{DEV}/decision", sign(d, KEY)) == d
    data = json.loads(state.read_text())
    assert data["last_seq"] == {DEV: 1, "back-door": 7}
    assert data["forgotten"][0]["device"] == DEV


def test_forget_refuses_a_damaged_state_file(lock_cfg: Path) -> None:
    state = _state(lock_cfg)
    state.parent.mkdir()
    state.write_text('{"last_seq": {"front-door": "x"}}')
    r = _voxgate("actuator", "-c", str(lock_cfg), "--forget", DEV)
    assert r.returncode == 2 and "not a map of device to sequence number" in r.stderr
    assert state.read_text() == '{"last_seq": {"front-door": "x"}}'
    assert "Traceback" not in r.stderr
