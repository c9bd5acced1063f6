"""Kill and restart the broker many times while decisions flow: none lost while connected, none
delivered after expiry, no crash, memory flat (link in this process, actuator in a child)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from broker import Broker
from mqtt_helpers import ActuatorProcess, Recorder, link_config, rss_kb_self, wait_until, write_key
from voxgate.decision import Issuer, SequenceCounter
from voxgate.mqtt.client import MqttLink

DEV = "front-door"
DKEY = b"front-door-decision-key-0123456789"
TOPIC = "voxgate/front-door/decision"
CYCLES = 10


def _body(payload: bytes) -> dict[str, object]:
    return json.loads(json.loads(payload)["body"])


@pytest.mark.slow
def test_broker_restarts(tmp_path: Path, broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="voxgate.mqtt.client")
    counter = SequenceCounter(tmp_path / "seq.json")
    normal = Issuer(DEV, counter, ttl_s=5)
    short = Issuer(DEV, counter, ttl_s=0.3)
    link = MqttLink(link_config(broker), DEV, decision_key=DKEY)
    link.start()
    actuator = ActuatorProcess(tmp_path, broker, {DEV: write_key(tmp_path / "k", DKEY)}).start()
    lock = Recorder(broker, "lock", [TOPIC])
    sent_connected: list[int] = []
    sent_short: list[int] = []
    rss: dict[str, list[int]] = {"link": [], "actuator": []}
    gen = 0  # the recorder's SUBACK count before the last broker restart
    try:
        for cycle in range(CYCLES):
            # Everyone is (back) online: link, our recorder, the actuator's subscription.
            wait_until(lambda: link.connected, 15, "link reconnect")
            actuator.wait_log(r"subscribed to 1 topic", timeout=15, count=cycle + 1)
            wait_until(lambda: lock.subscribed_gen > gen, 15, "recorder resubscribed")  # noqa: B023
            batch = [normal.issue("granted", f"u{cycle}", time.time()) for _ in range(3)]
            for d in batch:
                assert link.publish_decision(d)
                sent_connected.append(d.seq)
            want = {d.seq for d in batch}
            wait_until(
                lambda: want <= {_body(m.payload)["seq"] for m in lock.on(TOPIC)},  # noqa: B023
                10,
                f"cycle {cycle} decisions at the lock",
            )
            wait_until(
                lambda: want <= {int(a["VOXGATE_SEQ"]) for a in actuator.actions()},  # noqa: B023
                10,
                f"cycle {cycle} decisions acted on",
            )
            wait_until(lambda: link.pending_decisions() == 0, 10, "PUBACKs")
            if cycle in (1, CYCLES - 1):
                rss["link"].append(rss_kb_self())
                rss["actuator"].append(actuator.rss_kb())
            # The broker goes away (crash or clean stop); decisions made meanwhile must
            # either go out while still valid or not at all.
            if cycle % 2:
                broker.kill()
            else:
                broker.stop()
            wait_until(lambda: not link.connected, 10, "link to notice")
            for _ in range(2):
                d = short.issue("granted", "late", time.time())
                link.publish_decision(d)
                sent_short.append(d.seq)
            time.sleep(0.5)  # longer than the short decisions live
            gen = lock.subscribed_gen
            broker.start()
        wait_until(lambda: link.connected, 15, "final reconnect")
        time.sleep(0.5)  # let anything paho still held go out (it must not)

        received = [(_body(m.payload), m.at) for m in lock.on(TOPIC)]
        seqs = [b["seq"] for b, _ in received]
        assert set(sent_connected) <= set(seqs), "a decision published while connected was lost"
        assert not set(sent_short) & set(seqs), "an expired decision was delivered"
        late = [(b["seq"], at - b["expires_at"]) for b, at in received if at >= b["expires_at"]]
        assert not late, f"delivered after expiry: {late}"
        assert link.stats["decisions_expired"] == len(sent_short)
        assert "not delivered late" in caplog.text

        acted = actuator.actions()
        assert actuator.alive
        assert {int(a["VOXGATE_SEQ"]) for a in acted} == set(sent_connected)
        assert all(a["acted_at"] < float(a["VOXGATE_EXPIRES_AT"]) for a in acted)
        growth = {k: (v[-1] - v[0]) for k, v in rss.items()}
        print(f"RSS after cycle 1 -> {CYCLES}: {rss} kB, growth {growth} kB")
        assert growth["link"] < 5 * 1024 and growth["actuator"] < 5 * 1024
    finally:
        lock.close()
        link.stop()
        actuator.stop()
