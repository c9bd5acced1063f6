"""The broker fixture itself: TLS, passwords, ACL and restarts behave like a real deployment."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
import pytest
from broker import STANDARD_USERS, Broker

if TYPE_CHECKING:
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode


def _client(broker: Broker, user: str | None, password: str | None = None) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if user is not None:
        c.username_pw_set(user, password if password is not None else STANDARD_USERS[user])
    if broker.tls:
        c.tls_set(ca_certs=str(broker.ca_file))
    return c


def _connect_rc(c: mqtt.Client, broker: Broker) -> int:
    done = threading.Event()
    result: list[int] = []

    def on_connect(
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        result.append(reason_code.value)
        done.set()

    c.on_connect = on_connect
    c.connect(broker.host, broker.port)
    c.loop_start()
    assert done.wait(5), "no CONNACK"
    return result[0]


def test_tls_password_connect(broker: Broker) -> None:
    c = _client(broker, "device")
    try:
        assert _connect_rc(c, broker) == 0
    finally:
        c.disconnect()
        c.loop_stop()


def test_wrong_password_refused(broker: Broker) -> None:
    c = _client(broker, "device", "not-the-password")
    try:
        assert _connect_rc(c, broker) != 0
    finally:
        c.loop_stop()


def test_untrusted_ca_refused(broker: Broker, make_broker: Callable[..., Broker]) -> None:
    other = make_broker(tls=True, start=False)  # a different CA
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=str(other.ca_file))
    with pytest.raises(ssl.SSLError):
        c.connect(broker.host, broker.port)


def test_acl_blocks_intruder_publish(broker: Broker) -> None:
    got: list[bytes] = []
    subscribed = threading.Event()
    lock = _client(broker, "lock")
    lock.on_message = lambda c, u, m: got.append(m.payload)
    lock.on_subscribe = lambda *a: subscribed.set()
    intruder = _client(broker, "intruder")
    device = _client(broker, "device")
    try:
        _connect_rc(lock, broker)
        lock.subscribe("voxgate/door/decision", qos=1)
        assert subscribed.wait(5)
        _connect_rc(intruder, broker)
        intruder.publish("voxgate/door/decision", b"forged", qos=1).wait_for_publish(5)
        _connect_rc(device, broker)
        device.publish("voxgate/door/decision", b"real", qos=1).wait_for_publish(5)
        for _ in range(100):
            if got:
                break
            time.sleep(0.02)
        time.sleep(0.2)  # give a forged message that slipped through time to show up
        assert got == [b"real"]
    finally:
        for c in (lock, intruder, device):
            c.disconnect()
            c.loop_stop()


def test_restart_keeps_port(broker: Broker) -> None:
    port = broker.port
    broker.restart(hard=True)
    assert broker.port == port and broker.running
    c = _client(broker, "device")
    try:
        assert _connect_rc(c, broker) == 0
    finally:
        c.disconnect()
        c.loop_stop()
    broker.stop()
    assert not broker.running


def test_mutual_tls(make_broker: Callable[..., Broker]) -> None:
    b = make_broker(tls=True, require_client_cert=True)
    cert, key = b.client_cert("door-1")
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=str(b.ca_file), certfile=str(cert), keyfile=str(key))
    try:
        assert _connect_rc(c, b) == 0
    finally:
        c.disconnect()
        c.loop_stop()
