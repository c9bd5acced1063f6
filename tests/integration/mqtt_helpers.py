"""Helpers for the MQTT integration tests: a recording subscriber and a `voxgate actuator` child."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import yaml
from broker import STANDARD_USERS, Broker

from voxgate.config.mqtt import MqttConfig

REPO = Path(__file__).resolve().parents[2]


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def link_config(broker: Broker, user: str | None = "device", **overrides: Any) -> MqttConfig:
    settings = broker.mqtt_settings(user)
    settings.update({"reconnect_min_s": 0.2, "reconnect_max_s": 1.0})
    settings.update(overrides)
    return MqttConfig.model_validate(settings)


@dataclass
class Received:
    topic: str
    payload: bytes
    at: float
    retain: bool


class Recorder:
    """A subscriber that reconnects by itself and records everything it receives."""

    def __init__(self, broker: Broker, user: str, topics: list[str]) -> None:
        self.messages: list[Received] = []
        self.topics = topics
        self.subscribed_gen = 0  # bumps on every SUBACK after a (re)connect
        self._lock = threading.Lock()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        c.username_pw_set(user, STANDARD_USERS[user])
        if broker.tls:
            c.tls_set(ca_certs=str(broker.ca_file))
        c.reconnect_delay_set(0.05, 0.2)
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        self.connected = False
        c.on_disconnect = lambda *a: setattr(self, "connected", False)
        self.client = c
        c.connect_async(broker.host, broker.port, keepalive=10)
        c.loop_start()
        wait_until(lambda: self.subscribed_gen > 0, 10, "recorder subscription")

    def _on_connect(self, c: mqtt.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
        if not rc.is_failure:
            self.connected = True
            c.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, *args: Any) -> None:
        self.subscribed_gen += 1

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Received(msg.topic, bytes(msg.payload), time.time(), msg.retain))

    def on(self, topic: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def on_prefix(self, prefix: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic.startswith(prefix)]

    def wait_for(
        self, topic: str, pred: Callable[[Received], bool], timeout: float = 5
    ) -> Received:
        found: list[Received] = []

        def check() -> bool:
            found[:] = [m for m in self.on(topic) if pred(m)]
            return bool(found)

        wait_until(check, timeout, f"a matching message on {topic}")
        return found[0]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


RECORD_ACTION = """
import json, os, sys, time
env = {k: v for k, v in os.environ.items() if k.startswith("VOXGATE_")}
env["acted_at"] = time.time()
with open(sys.argv[1], "a") as f:
    f.write(json.dumps(env) + "\\n")
"""


class ActuatorProcess:
    """`python -m voxgate actuator -c FILE` as a child process, its log captured."""

    def __init__(
        self,
        tmp: Path,
        broker: Broker,
        devices: dict[str, Path],
        *,
        user: str = "lock",
        state_file: Path | None = None,
        argv: list[str] | None = None,
    ) -> None:
        """argv: the action; by default a script appending the VOXGATE_* env to `out`."""
        self.out = tmp / "acted.jsonl"
        script = tmp / "record_action.py"
        script.write_text(RECORD_ACTION)
        settings = broker.mqtt_settings(user)
        settings.update({"reconnect_min_s": 0.1, "reconnect_max_s": 0.5})
        cfg = {
            "broker": settings,
            "devices": [{"id": d, "key_file": str(k)} for d, k in devices.items()],
            "state_file": str(state_file or tmp / "actuator-state.json"),
            "command": {"argv": argv or [sys.executable, str(script), str(self.out)]},
        }
        self.config = tmp / "actuator.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> ActuatorProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
        env["PYTHONPATH"] = str(REPO / "daemon")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "voxgate", "actuator", "-c", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        # Until the broker has acknowledged the subscription, a decision published by a test
        # would be dropped (it is not retained): "subscribing to" was too early (a CI flake).
        self.wait_log(r"subscribed to|refused the subscription", 15)
        return self

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def log_count(self, pattern: str) -> int:
        rx = re.compile(pattern)
        return sum(1 for line in list(self.lines) if rx.search(line))

    def wait_log(self, pattern: str, timeout: float = 5, count: int = 1) -> None:
        def seen() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError("actuator exited:\n" + "\n".join(self.lines[-30:]))
            return self.log_count(pattern) >= count

        try:
            wait_until(seen, timeout, f"actuator log /{pattern}/ x{count}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nlog:\n" + "\n".join(self.lines[-30:])) from None

    def actions(self) -> list[dict[str, Any]]:
        import json

        if not self.out.exists():
            return []
        # The action program may be mid-write: only lines it has finished count.
        text = self.out.read_text()
        done = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in done.splitlines() if line]

    def rss_kb(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def admin_client(broker: Broker, user: str = "admin") -> mqtt.Client:
    """A paho client of one of the broker's standard users, connected over TLS and looping."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.username_pw_set(user, STANDARD_USERS[user])
    c.tls_set(ca_certs=str(broker.ca_file))
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def write_key(path: Path, key: bytes) -> Path:
    path.write_bytes(key + b"\n")
    path.chmod(0o600)
    return path


def rss_kb_self() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    env.pop("CREDENTIALS_DIRECTORY", None)
    env["PYTHONPATH"] = str(REPO / "daemon")
    env.update(extra)
    return env


class DaemonProcess:
    """`voxgate run -c CONFIG --source stdin` as a child; audio is written to its stdin."""

    def __init__(self, config: Path, *, python_args: tuple[str, ...] = (), **env: str) -> None:
        """`python_args`: put before `-m voxgate` (e.g. stepped_clock.py and its file)."""
        self.lines: list[str] = []
        argv = ["-m", "voxgate", "run", "-c", str(config), "--source", "stdin"]
        self.proc = subprocess.Popen(
            [sys.executable, *python_args, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=child_env(**env),
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def log(self) -> str:
        return "\n".join(self.lines)

    def feed(self, pcm: np.ndarray) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(pcm.astype("<i2").tobytes())
        self.proc.stdin.flush()

    def wait_log(self, text: str, timeout: float = 30) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None and text not in self.log():
                raise AssertionError(f"daemon exited ({self.proc.returncode}):\n{self.log()}")
            return text in self.log()

        try:
            wait_until(seen, timeout, f"daemon log {text!r}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log()[-4000:]}") from None

    def close(self, timeout: float = 15) -> int:
        """End of input: the daemon finishes and exits."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"daemon did not exit at end of input:\n{self.log()}") from None
