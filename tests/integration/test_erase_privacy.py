"""Erase really erases, on a real mosquitto: after a user is erased, a new subscriber (Home
Assistant, anyone allowed to read the door's tree) no longer gets their name retained on the
`user` topic, whichever way the daemon learns of the erase, also after a restart."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from broker import Broker
from mqtt_helpers import Recorder, link_config, wait_until

from voxgate.config import VoxgateConfig
from voxgate.config.service import LockoutConfig
from voxgate.decision import Issuer, SequenceCounter
from voxgate.lockout import LockoutBook
from voxgate.mqtt.client import MqttLink
from voxgate.service.users import UserServices
from voxgate.voiceprints import VoiceprintStore

DEV = "front-door"
USER_TOPIC = f"voxgate/{DEV}/user"
STATUS_TOPIC = f"voxgate/{DEV}/status"
DKEY = b"decision-key-for-tests-0123456789"
CKEY = b"command-key-for-tests-0123456789"
KEY = os.urandom(32)


def retained_user(broker: Broker) -> bytes | None:
    """What a client subscribing now gets retained on the `user` topic (None: nothing).
    The broker sends the retained messages of one SUBSCRIBE in the order of its topics, so
    once the retained `status` has arrived, a retained `user` would have arrived before it."""
    late = Recorder(broker, "ha", [USER_TOPIC, STATUS_TOPIC])
    try:
        late.wait_for(STATUS_TOPIC, lambda m: m.retain)
        got = [m.payload for m in late.on(USER_TOPIC) if m.retain]
        return got[0] if got else None
    finally:
        late.close()


@pytest.fixture
def issuer(tmp_path: Path) -> Issuer:
    return Issuer(DEV, SequenceCounter(tmp_path / "seq.json"), ttl_s=5)


@pytest.fixture
def links(broker: Broker) -> Iterator[Callable[[], MqttLink]]:
    made: list[MqttLink] = []

    def make() -> MqttLink:
        link = MqttLink(link_config(broker), DEV, decision_key=DKEY, command_key=CKEY)
        made.append(link)
        link.start()
        wait_until(lambda: link.connected, 10, "link connected")
        return link

    yield make
    for link in made:
        link.stop()


def test_erasing_the_last_granted_user_clears_the_retained_name(
    broker: Broker, links: Callable[[], MqttLink], issuer: Issuer
) -> None:
    link = links()
    assert link.publish_decision(issuer.issue("granted", "Erin", time.time()))
    wait_until(lambda: retained_user(broker) == b"Erin", 5, "the retained grant")
    assert not link.forget_user("someone-else")  # holds another name: left as it is
    assert retained_user(broker) == b"Erin"
    assert link.forget_user("erin")
    wait_until(lambda: retained_user(broker) is None, 5, "the retained name to go")
    # A reconnect does not bring it back.
    broker.stop()
    wait_until(lambda: not link.connected, 10, "the link notices")
    broker.start()
    wait_until(lambda: link.connected, 15, "the link reconnects")
    assert retained_user(broker) is None


def test_a_name_left_retained_by_a_previous_run_is_cleared_when_erased(
    broker: Broker, links: Callable[[], MqttLink], issuer: Issuer
) -> None:
    first = links()
    assert first.publish_decision(issuer.issue("granted", "Erin", time.time()))
    wait_until(lambda: retained_user(broker) == b"Erin", 5, "the retained grant")
    first.stop()
    second = links()  # the daemon restarted: it learns what the broker keeps
    wait_until(lambda: second.last_user == "Erin", 5, "the restarted link to see it")
    assert second.forget_user("ERIN")
    wait_until(lambda: retained_user(broker) is None, 5, "the retained name to go")


def test_daemon_clears_the_name_after_an_erase_by_another_process(
    broker: Broker, links: Callable[[], MqttLink], issuer: Issuer, tmp_path: Path
) -> None:
    """`voxgate users erase erin` beside the running daemon: the daemon's housekeeping sees
    she is gone and clears the retained name (and her lockout entry)."""
    store = VoiceprintStore(tmp_path / "voiceprints.db", KEY)
    store.add_user("Erin", np.eye(3, 8, dtype=np.float32), "test/int8")
    book = LockoutBook(tmp_path / "lockout.db", LockoutConfig())
    link = links()
    users = UserServices(
        VoxgateConfig(data_dir=tmp_path), store, None, lambda e, **f: None, lockout=book, link=link
    )
    assert link.publish_decision(issuer.issue("granted", "Erin", time.time()))
    book.record("erin", ok=False)
    wait_until(lambda: retained_user(broker) == b"Erin", 5, "the retained grant")
    users.housekeeping(now=0.0)
    assert retained_user(broker) == b"Erin"  # still enrolled: kept

    other = VoiceprintStore(tmp_path / "voiceprints.db", KEY)  # the CLI's own connection
    assert other.erase("erin")
    other.close()
    users.housekeeping(now=10.0)
    wait_until(lambda: retained_user(broker) is None, 5, "the retained name to go")
    assert book.users() == []
    store.close()
    book.close()
