"""`voxgate lockout list|clear` against a real daemon (`voxgate run --source stdin`, real
mosquitto, real lockout and audit files): a stranger's guesses lock the door, `clear --door`
lifts it without a restart and the next attempt is judged again; a user's lock carried over
from a previous run is cleared by a name spelled in another case. Before this command the
only way was to stop the daemon and move lockout.db aside, which lifted every lock."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import test_daemon_e2e as e2e
import yaml
from broker import Broker
from mqtt_helpers import Recorder, child_env, wait_until

from voxgate.config.service import LockoutConfig
from voxgate.lockout import LockoutBook

device = e2e.device  # the fixture: a door's config on the real broker

pytestmark = pytest.mark.skipif(
    __import__("shutil").which("espeak-ng") is None, reason="needs espeak-ng for test speech"
)


def _popen(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "voxgate", *args],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run_beside(daemon: e2e.DaemonProcess, *args: str) -> tuple[int, str, str]:
    """Run a command while feeding the daemon room noise: its housekeeping (where it
    takes clears) runs on audio time."""
    proc = _popen(*args)
    while proc.poll() is None:
        daemon.feed(e2e.pause(0.5))
        time.sleep(0.1)
    out, err = proc.communicate()
    return proc.returncode, out, err


def _decisions(device: dict[str, Any]) -> list[dict[str, Any]]:
    return [x for x in e2e.audit_lines(device) if x["event"] == "decision"]


def _attempt(daemon: e2e.DaemonProcess, device: dict[str, Any], voice: str) -> dict[str, Any]:
    n = len(_decisions(device))
    daemon.feed(np.concatenate([e2e.pause(0.5), e2e.speech(e2e.ATTEMPT, voice), e2e.pause(1.2)]))
    wait_until(lambda: len(_decisions(device)) > n, 30, "a decision")
    return _decisions(device)[-1]


def _locked_on_mqtt(rec: Recorder) -> list[str] | None:
    """The keys the last retained `lockout` message lists."""
    got = rec.on(f"voxgate/{e2e.DEV}/lockout")
    return [x["key"] for x in json.loads(got[-1].payload)["locked"]] if got else None


def test_clear_lifts_a_running_daemons_lock_without_a_restart(
    device: dict[str, Any], broker: Broker
) -> None:
    doc = device["doc"]
    doc["lockout"] = {"max_failures": 3, "device_max_failures": 2, "initial_s": 3600}
    config = e2e.write_config(device["dir"], doc)
    cfg = str(config)
    data = Path(doc["data_dir"])
    data.mkdir(parents=True, exist_ok=True)
    # A lock on alice left by a previous run (read at start, held in the daemon's memory).
    book = LockoutBook(data / "lockout.db", LockoutConfig(**doc["lockout"]))
    for _ in range(3):
        book.record("alice", False)
    book.reset(None)  # her failures counted for the door too; only her lock is wanted
    book.close()

    rec = Recorder(broker, "lock", [f"voxgate/{e2e.DEV}/lockout"])
    daemon = e2e.DaemonProcess(config)
    try:
        daemon.feed(e2e.pause(0.3))
        daemon.wait_log("ready")
        # Nobody is enrolled: a stranger's two guesses lock the door for an hour.
        first = _attempt(daemon, device, "en+f2")
        assert first["reasons"] == ["no_match"], first
        _attempt(daemon, device, "en+f2")
        daemon.wait_log("lockout: device after 2 consecutive failures")
        wait_until(lambda: _locked_on_mqtt(rec) == ["device", "user:alice"], 10, "both on MQTT")

        code, out, err = _run_beside(daemon, "lockout", "list", "--json", "-c", cfg)
        assert code == 0, err
        listed = json.loads(out)
        locked = {k["key"]: k for k in listed["keys"] if k["locked"]}
        assert set(locked) == {"device", "user:alice"}, listed
        assert locked["device"]["until"] > time.time() + 3000
        assert locked["user:alice"]["failures"] == 3
        assert listed["door"]["window_failures"] == 2

        # While locked, speech starts no attempt the door judges.
        n = len(_decisions(device))
        daemon.feed(np.concatenate([e2e.pause(0.5), e2e.speech(e2e.ATTEMPT, "en+f2")]))
        daemon.feed(e2e.pause(2.0))
        time.sleep(1.0)
        assert all("locked_out" in d["reasons"] for d in _decisions(device)[n:]), daemon.log()

        code, out, err = _run_beside(
            daemon, "lockout", "clear", "--door", "--reason", "stranger dealt with", "-c", cfg
        )
        assert code == 0, err
        assert "cleared the door: 2 consecutive failure(s), 2 within the window" in out, out
        assert "the running daemon has applied it" in out, out
        daemon.wait_log("lockout: device cleared by")
        wait_until(lambda: _locked_on_mqtt(rec) == ["user:alice"], 10, "the door's lock gone")

        # No restart: the next attempt is judged (no_match, not locked_out).
        after = _attempt(daemon, device, "en+f2")
        assert after["reasons"] == ["no_match"], after

        code, out, err = _run_beside(daemon, "lockout", "clear", "ALICE", "-c", cfg)
        assert code == 0, err
        assert "cleared 'alice': 3 consecutive failure(s)" in out, out
        assert "the running daemon has applied it" in out, out
        daemon.wait_log("lockout: user:alice cleared by")
        wait_until(lambda: _locked_on_mqtt(rec) == [], 10, "no lock on MQTT")

        code, out, err = _run_beside(daemon, "lockout", "list", "--json", "-c", cfg)
        listed = json.loads(out)
        assert [k["key"] for k in listed["keys"]] == ["device"], listed  # the one new failure
        assert not listed["keys"][0]["locked"] and listed["keys"][0]["failures"] == 1
        assert listed["door"]["window_failures"] == 1
        assert listed["pending_clears"] == []
        assert daemon.close() == 0, daemon.log()
    finally:
        rec.close()
        if daemon.proc.poll() is None:
            daemon.proc.kill()

    cleared = [x for x in e2e.audit_lines(device) if x["event"] == "lockout-clear"]
    assert [(x["key"], x.get("user"), x["via"]) for x in cleared] == [
        ("device", None, "cli"),
        ("user:alice", "alice", "cli"),
    ]
    assert cleared[0]["window_failures"] == 2 and cleared[0]["reason"] == "stranger dealt with"
    assert cleared[1]["failures"] == 3
    assert yaml.safe_load(config.read_text())["lockout"]["device_max_failures"] == 2
    # The daemon's memory, written through at its stop, holds no lock either.
    again = LockoutBook(data / "lockout.db", LockoutConfig(**doc["lockout"]))
    assert not again.state("alice").locked


def test_on_a_read_only_disk_list_works_and_clear_says_why_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A door whose data folder went read-only (an SD card the kernel remounted): `list`
    still shows the locks, `clear` exits 73 naming the file and leaves it as it was."""
    import subprocess as sp

    from small_fs import small_fs

    from voxgate.cli import main

    data = tmp_path / "data"
    config = tmp_path / "voxgate.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(data), "lockout": {"max_failures": 2}}))
    with small_fs(data, "1m"):
        book = LockoutBook(data / "lockout.db", LockoutConfig(max_failures=2))
        book.record("mia", False)
        book.record("mia", False)
        book.close()
        before = (data / "lockout.db").read_bytes()
        sp.run(["mount", "-o", "remount,ro", str(data)], check=True)
        assert main(["lockout", "list", "--json", "-c", str(config)]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [k["user"] for k in listed["keys"] if k["locked"]] == ["mia"]
        assert main(["lockout", "clear", "mia", "--wait", "0.2", "-c", str(config)]) == 73
        err = capsys.readouterr().err
        assert f"lockout state {data / 'lockout.db'}" in err and "read-only" in err, err
        assert (data / "lockout.db").read_bytes() == before


def test_a_daemon_started_on_a_read_only_disk_takes_a_clear_once_it_is_writable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The daemon's book opened the file read-only (the disk was, at its start) and enforces
    from memory; once the disk is writable again, a clear the command writes must reach it
    (it looked at the file only at its next failure, so the lock stayed)."""
    import subprocess as sp

    from small_fs import small_fs

    from voxgate.cli import main

    data = tmp_path / "data"
    config = tmp_path / "voxgate.yaml"
    cfg = LockoutConfig(max_failures=2, initial_s=3600)
    config.write_text(yaml.safe_dump({"data_dir": str(data), "lockout": {"max_failures": 2}}))
    with small_fs(data, "1m"):
        first = LockoutBook(data / "lockout.db", cfg)
        first.record("noor", False)
        first.record("noor", False)
        first.close()
        sp.run(["mount", "-o", "remount,ro", str(data)], check=True)
        book = LockoutBook(data / "lockout.db", cfg)  # the daemon, started read-only
        assert book.state("noor").locked
        sp.run(["mount", "-o", "remount,rw", str(data)], check=True)
        assert main(["lockout", "clear", "noor", "--wait", "0.2", "-c", str(config)]) == 0
        capsys.readouterr()
        (taken,) = book.take_clears()
        assert taken.entry.key == "user:noor"
        assert not book.state("noor").locked
        book.close()
