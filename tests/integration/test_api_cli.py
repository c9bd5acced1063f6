"""`voxgate api` and `voxgate fleet keygen/pubkey` as real processes."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flask")

REPO = Path(__file__).resolve().parents[2]
TOKEN = "cli-test-token-0123456789"
# Runs one subcommand module directly, whether or not cli.py lists it yet.
RUNNER = (
    "import argparse, sys, importlib\n"
    "p = argparse.ArgumentParser(prog='voxgate')\n"
    "s = p.add_subparsers()\n"
    "importlib.import_module('voxgate.commands.' + sys.argv[1]).register(s)\n"
    "a = p.parse_args(sys.argv[1:])\n"
    "sys.exit(a.func(a))\n"
)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    env.pop("CREDENTIALS_DIRECTORY", None)
    env["PYTHONPATH"] = str(REPO / "daemon")
    env.update(extra)
    return env


def _voxgate(*args: str, **kw: Any) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _door_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "voxgate.yaml"
    cfg.write_text(f"device_id: door-cli\ndata_dir: {tmp_path}\n")
    return cfg


def _start_api(cfg: Path) -> tuple[subprocess.Popen, int]:
    """`voxgate api` on `cfg` with a token and a voiceprint key; returns it and its port."""
    port = _free_port()
    env = _env(VOXGATE_API_TOKEN=TOKEN, VOXGATE_VOICEPRINT_KEY="ab" * 32)
    return _voxgate("api", "-c", str(cfg), "--port", str(port), env=env), port


def test_api_command_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    proc, port = _start_api(_door_config(tmp_path))
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/api/v1/health", headers={"Authorization": f"Bearer {TOKEN}"})
                resp = conn.getresponse()
                break
            except ConnectionRefusedError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "voxgate api did not come up"
                time.sleep(0.1)
        body = json.loads(resp.read())
        assert resp.status == 200 and body["device_id"] == "door-cli" and body["users"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert f"serving on http://127.0.0.1:{port}" in err


def _request(port: int, method: str, path: str, proc: subprocess.Popen) -> tuple[int, Any]:
    """One request to a `voxgate api` process, waiting for it to listen."""
    deadline = time.monotonic() + 20
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request(method, path, headers={"Authorization": f"Bearer {TOKEN}"})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        except ConnectionRefusedError:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "voxgate api did not come up"
            time.sleep(0.1)


def test_an_erase_through_the_standalone_api_is_audited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`voxgate api` on its own erased voiceprints without a line in the audit log, while the
    daemon's API, `voxgate users erase` and the MQTT command all write one."""
    import numpy as np

    from voxgate.audit import open_log
    from voxgate.config import load_config
    from voxgate.voiceprints import open_store

    cfg = _door_config(tmp_path)
    monkeypatch.setenv("VOXGATE_VOICEPRINT_KEY", "ab" * 32)
    with open_store(load_config(cfg)) as store:
        store.add_user("alice", np.ones((3, 256)), "test-model/1", {"takes": 3})
    # As `voxgate enroll` leaves it: a voiceprint without any log reads as a lost log.
    open_log(load_config(cfg)).append("enrollment", user="alice", via="cli")
    proc, port = _start_api(cfg)
    try:
        status, body = _request(port, "DELETE", "/api/v1/users/alice", proc)
        assert status == 200, body
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    audit = tmp_path / "audit.jsonl"
    assert audit.exists(), "no audit log written"
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    erases = [e for e in events if e["event"] == "admin_erase"]
    assert len(erases) == 1 and erases[0]["user"] == "alice" and erases[0]["via"] == "api"
    proc = _voxgate("audit", "verify", str(audit), env=_env())
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, out + err


def test_the_standalone_api_without_the_voiceprint_key_serves_what_does_not_need_it(
    tmp_path: Path,
) -> None:
    """`voxgate api` refused to start without the voiceprint key, although health, decisions
    and config read no voiceprint: an integrator had to hand the biometric key to a process
    that only shows decisions. Now those work, and the user endpoints say which key is
    missing (503 voiceprint_key_missing) instead of the server not being there at all."""
    key_file = tmp_path / "voiceprint.key"  # named, never made
    cfg = tmp_path / "voxgate.yaml"
    cfg.write_text(
        f"device_id: door-cli\ndata_dir: {tmp_path}\nspeaker: {{key_file: {key_file}}}\n"
    )
    port = _free_port()
    proc = _voxgate("api", "-c", str(cfg), "--port", str(port), env=_env(VOXGATE_API_TOKEN=TOKEN))
    try:
        status, body = _request(port, "GET", "/api/v1/health", proc)
        assert status == 200 and body["status"] == "ok", body
        assert "users" not in body and str(key_file) in body["voiceprints"], body
        status, body = _request(port, "GET", "/api/v1/decisions", proc)
        assert status == 200 and body["events"] == [], body
        status, body = _request(port, "GET", "/api/v1/config", proc)
        assert status == 200 and body["device_id"] == "door-cli", body
        for method, path in (
            ("GET", "/api/v1/users"),
            ("GET", "/api/v1/users/alice/export"),
            ("DELETE", "/api/v1/users/alice"),
        ):
            status, body = _request(port, method, path, proc)
            assert status == 503 and body["error"] == "voiceprint_key_missing", (path, body)
            assert "voiceprint-key" in body["message"] and str(key_file) in body["message"]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "no voiceprint key" in err and "Traceback" not in err, err


def test_api_command_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    cfg = tmp_path / "voxgate.yaml"
    cfg.write_text(f"data_dir: {tmp_path}\napi: {{token_file: {tmp_path / 'missing'}}}\n")
    proc = _voxgate("api", "-c", str(cfg), env=_env(VOXGATE_VOICEPRINT_KEY="ab" * 32))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "api-token" in err and "not found" in err


def test_fleet_keygen_and_pubkey(tmp_path: Path) -> None:
    key = tmp_path / "signing-key"
    proc = _voxgate("fleet", "keygen", str(key), env=_env())
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    pub = out.strip()
    assert len(pub) == 64 and int(pub, 16) >= 0
    assert key.stat().st_mode & 0o777 == 0o600
    proc = _voxgate("fleet", "pubkey", str(key), env=_env())
    assert proc.communicate(timeout=30)[0].strip() == pub
    # Never overwrites a key.
    proc = _voxgate("fleet", "keygen", str(key), env=_env())
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "exists" in err
    # A damaged key file is reported.
    key.write_text("not a key\n")
    proc = _voxgate("fleet", "pubkey", str(key), env=_env())
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "64 hex" in err


def test_the_standalone_api_on_a_door_whose_audit_log_was_lost_records_the_loss(
    tmp_path: Path,
) -> None:
    """Opening the log made an empty one: `voxgate api` started (and stopped, changing
    nothing) after the log and its anchor were lost left a log the daemon's next start took
    for a new one, and the loss was seen nowhere."""
    from voxgate.config.service import LockoutConfig
    from voxgate.lockout import LockoutBook

    LockoutBook(tmp_path / "lockout.db", LockoutConfig()).close()  # the daemon has run
    proc, port = _start_api(_door_config(tmp_path))
    try:
        status, _ = _request(port, "GET", "/api/v1/health", proc)
        assert status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "history is lost" in err, err
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert [json.loads(x)["event"] for x in lines] == ["audit_log_lost"], lines
