"""What `systemctl status` shows while the door runs degraded: `voxgate run` as a process
with a real notify socket, real files and, for the store and disk cases, a real mosquitto.

Found by running the daemon under a notify socket while its data folder was full and its
voiceprint file damaged: the log said so, STATUS= kept saying `idle: listening for speech`
(or `decided: granted`), and a microphone giving only zeros (muted) looked like a quiet room.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from broker import Broker
from mqtt_helpers import DaemonProcess, Recorder, wait_until
from small_fs import fill, free, small_fs
from test_daemon_e2e import (
    ATTEMPT,
    DEV,
    _flip_one_voiceprint,
    decisions,
    door_setup,
    enroll,
    pause,
    speech,
    voxgate,
)
from test_source_end import quiet_door_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

from service_standins import NotifyListener

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")


def _last_status(listener: NotifyListener) -> str:
    statuses = listener.statuses()
    return statuses[-1] if statuses else ""


def test_an_input_of_digital_zeros_is_named_in_the_log_and_in_status_until_sound_is_back(
    tmp_path: Path,
) -> None:
    config = quiet_door_config(tmp_path, {"source": "stdin"})
    listener = NotifyListener(tmp_path / "notify")
    daemon = DaemonProcess(config, NOTIFY_SOCKET=str(tmp_path / "notify"))
    try:
        daemon.feed(pause(0.5))
        wait_until(lambda: listener.has("READY=1"), 30, "READY=1")
        # A muted capture switch: every sample 0, for longer than the limit (40 s of audio,
        # written at once: the daemon counts audio, not wall time).
        daemon.feed(np.zeros(40 * 16000, dtype=np.int16))
        daemon.wait_log("digital silence", 20)
        wait_until(lambda: "digital silence" in _last_status(listener), 10, "STATUS says so")
        daemon.feed(pause(1.0))  # a faint room again
        daemon.wait_log("sound again", 20)
        wait_until(lambda: "digital silence" not in _last_status(listener), 10, "STATUS clear")
        assert daemon.close() == 0
    finally:
        listener.close()
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    muted = [line for line in daemon.lines if "has given digital silence" in line]
    assert len(muted) == 1, muted  # once, not once a frame
    assert "WARNING" in muted[0] and "stdin" in muted[0], muted
    assert "Traceback" not in daemon.log()


def test_a_full_data_disk_and_unreadable_voiceprints_show_in_status_until_they_pass(
    tmp_path: Path, broker: Broker
) -> None:
    device = door_setup(tmp_path, broker, reconnect_min_s=0.2, reconnect_max_s=1.0)
    data = Path(device["doc"]["data_dir"])
    with small_fs(data, "2m"):
        done = enroll(device, "bob", "en+m3")
        assert done.returncode == 0, done.stdout + done.stderr
        db = data / "voiceprints.db"
        good = tmp_path / "voiceprints-good.db"
        shutil.copy(db, good)
        listener = NotifyListener(tmp_path / "notify")
        rec = Recorder(broker, "lock", [f"voxgate/{DEV}/#"])
        daemon = DaemonProcess(device["config"], NOTIFY_SOCKET=str(tmp_path / "notify"))
        attempt = np.concatenate([pause(0.5), speech(ATTEMPT, "en+m3"), pause(1.2)])
        seen: list[str] = []

        def decide(n: int) -> None:
            daemon.feed(attempt)
            wait_until(lambda: len(decisions(rec)) >= n, 30, f"decision {n}")
            time.sleep(0.3)  # the state after the decision
            seen.append(_last_status(listener))

        try:
            daemon.feed(pause(0.3))
            wait_until(lambda: listener.has("READY=1"), 30, "READY=1")
            decide(1)
            _flip_one_voiceprint(db)
            decide(2)
            shutil.copy(good, data / "restore.db")  # renamed over it, as a restore does
            (data / "restore.db").replace(db)
            # STATUS= clears without an attempt (it lingered until the next one).
            daemon.feed(pause(7.0))
            wait_until(lambda: "voiceprints" not in _last_status(listener), 15, "restored")
            decide(3)
            fill(data)
            decide(4)
            free(data)
            daemon.feed(pause(2.5))  # housekeeping writes what was held
            # The anchor the full disk refused is written again with no new line.
            wait_until(lambda: "audit log" not in _last_status(listener), 10, "STATUS clear")
            # The decision sequence's ceiling too: saved without a decision.
            wait_until(lambda: "sequence" not in _last_status(listener), 10, "sequence saved")
            assert daemon.close() == 0
        finally:
            rec.close()
            listener.close()
            if daemon.proc.poll() is None:
                daemon.proc.kill()
    outcomes = [(d.outcome, d.reasons) for d in decisions(rec)]
    assert outcomes[1] == ("denied", ("store_unreadable",)), outcomes
    ok, unreadable, restored, full = seen
    assert "voiceprints" not in ok and "audit log" not in ok, seen
    assert "voiceprints cannot be read" in unreadable, seen
    assert "voiceprints" not in restored, seen
    assert "audit log cannot be written" in full, seen
    # Numbered from memory: a restart then would rewind the sequence below the lock's.
    assert "decision sequence cannot be saved" in full, seen
    assert "sequence" not in ok and "sequence" not in restored, seen
    assert "Traceback" not in daemon.log()


@pytest.mark.parametrize("sig", ["SIGBUS", "SIGSEGV"])
def test_a_fatal_signal_leaves_every_threads_stack_in_the_log(tmp_path: Path, sig: str) -> None:
    """Found making the data files immutable (chattr +i, as root) under a running daemon and
    then sending erase-user: SQLite's COMMIT wrote to the mmapped voiceprints.db-shm, the
    kernel answered with SIGBUS and the daemon vanished (exit -7) without a line; nothing in
    the journal said where. Python cannot survive a SIGBUS in SQLite's C code, but with
    faulthandler on, the log carries the fatal error and every thread's stack. (A file system
    the kernel remounts read-only after errors does not do this: SQLite gets EROFS and the
    door runs on, checked with ext4's trigger_fs_error.) The kernel's SIGBUS there depends on
    page writeback timing, so the signal is sent here: the handler is the same."""
    import signal

    key = tmp_path / "voiceprint.key"
    assert voxgate("users", "init-key", str(key)).returncode == 0
    doc: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "audio": {"source": "stdin"},
        "speaker": {"key_file": str(key)},
        "mqtt": {"enabled": False},
        "metrics": {"enabled": False},
    }
    config = tmp_path / "voxgate.yaml"
    config.write_text(yaml.safe_dump(doc))
    daemon = DaemonProcess(config)
    try:
        daemon.feed(pause(0.5))
        daemon.wait_log("ready:", 30)
        daemon.proc.send_signal(getattr(signal, sig))
        code = daemon.proc.wait(20)
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    time.sleep(0.3)  # the reader thread takes the last lines
    log = daemon.log()
    assert code == -getattr(signal, sig)  # still fatal: systemd restarts the door
    assert "Fatal Python error" in log, log[-3000:]
    assert "service/loop.py" in log and "service/capture.py" in log, log[-3000:]
