"""A captured signed command sent again after the door restarted and its clock was set back,
on a real mosquitto with real `voxgate run` processes. The door's wall clock is stepped
through tests/integration/stepped_clock.py (the machine's clock is never touched)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from broker import Broker
from mqtt_helpers import DaemonProcess, Recorder, admin_client, wait_until
from stepped_clock import step_to
from test_daemon_e2e import CKEY, DEV, DKEY, door_setup, pause

from voxgate.mqtt.commands import make_command, read_reply

pytest.importorskip("voxgate.embedding")
STEPPED = str(Path(__file__).with_name("stepped_clock.py"))
TOPIC = f"voxgate/{DEV}/cmd/reload"


def _online(config: Path, step_file: Path, rec: Recorder, n: int) -> DaemonProcess:
    """A door process whose status went online for the n-th time on `rec`."""
    daemon = DaemonProcess(config, python_args=(STEPPED, str(step_file)))
    daemon.feed(pause(0.3))
    status = f"voxgate/{DEV}/status"
    wait_until(
        lambda: (
            sum(m.payload == b"online" for m in rec.on(status)) >= n
            or daemon.proc.poll() is not None
        ),
        60,
        f"door online ({n})",
    )
    assert daemon.proc.poll() is None, daemon.log()
    return daemon


def _send(admin: Any, rec: Recorder, payload: bytes) -> dict[str, Any]:
    before = len(rec.on(f"{TOPIC}/result"))
    admin.publish(TOPIC, payload, qos=1).wait_for_publish(5)
    wait_until(lambda: len(rec.on(f"{TOPIC}/result")) > before, 10, "the command's reply")
    return read_reply(rec.on(f"{TOPIC}/result")[before].payload, DKEY)


def test_a_captured_command_does_not_run_again_after_a_restart_and_a_clock_set_back(
    tmp_path: Path, broker: Broker
) -> None:
    """Seen: the door (started with a right clock) refused a command issued before its start
    only by comparing with that start, which follows clock steps: once its clock was set
    back by more than the captured command's age, the copy ran a second time."""
    door = door_setup(tmp_path, broker, reconnect_min_s=0.2, reconnect_max_s=1.0)
    step_file = tmp_path / "clock-step"
    step_to(str(step_file), 0.0)
    rec = Recorder(broker, "admin", [f"voxgate/{DEV}/status", f"{TOPIC}/result"])
    admin = admin_client(broker)
    daemon = _online(door["config"], step_file, rec, 1)
    try:
        issued = time.time()
        captured = make_command(CKEY, DEV, "reload", now=issued)
        first = _send(admin, rec, captured)
        assert (first["ok"], first["error"]) == (True, None), (first, daemon.log())
        assert daemon.close() == 0, daemon.log()

        daemon = _online(door["config"], step_file, rec, 2)
        time.sleep(2.0)  # the new process has run 2 s since its start
        step = issued + 1.0 - time.time()  # the door's clock now reads 1 s after `issued`
        step_to(str(step_file), step)
        again = _send(admin, rec, captured)
        assert (again["ok"], again["error"]) == (False, "replayed"), (again, daemon.log())
        assert again["detail"] == "nonce already used", again
        # The door still obeys a command signed at its (stepped) time.
        fresh = _send(admin, rec, make_command(CKEY, DEV, "reload", now=time.time() + step))
        assert (fresh["ok"], fresh["error"]) == (True, None), (fresh, daemon.log())
        assert daemon.close() == 0, daemon.log()
    finally:
        admin.disconnect()
        admin.loop_stop()
        rec.close()
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    assert (Path(door["doc"]["data_dir"]) / "command-nonces.json").is_file()
