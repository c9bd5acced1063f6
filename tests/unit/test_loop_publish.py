"""The audit's `published` says whether the decision left: False when the link dropped it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from voxgate.config import VoxgateConfig
from voxgate.decision import Issuer, SequenceCounter
from voxgate.mqtt.client import MqttLink
from voxgate.policy import Verdict
from voxgate.service.loop import Daemon
from voxgate.service.notify import Notifier
from voxgate.service.stages import AttemptResult, Link, NoLink, Stages


def daemon_with(link: Link, tmp_path: Path) -> Daemon:
    issuer = Issuer("front-door", SequenceCounter(tmp_path / "seq.json"), ttl_s=5.0)
    unused: Any = None  # _publish_decision reads only the link and make_decision
    d = Daemon(VoxgateConfig(), notifier=Notifier({}))
    d.stages = Stages(
        source=unused,
        embedder=unused,
        scorer=unused,
        link=link,
        make_decision=issuer.from_attempt,
    )
    return d


def result(issued_at: float) -> AttemptResult:
    return AttemptResult(
        device_id="front-door",
        verdict=Verdict("granted", "me", ()),
        claimed_user=None,
        speaker=None,
        liveness=None,
        replay=None,
        challenge=None,
        issued_at=issued_at,
        ttl_s=5.0,
        speech_s=2.0,
    )


def test_a_decision_that_expired_before_it_could_be_sent_is_not_published(
    tmp_path: Path,
) -> None:
    link = MqttLink(VoxgateConfig().mqtt, "front-door", decision_key=b"k" * 32)  # not started
    d = daemon_with(link, tmp_path)
    # Issued 60 s ago with a 5 s validity: MqttLink drops it unsent and says so (False).
    assert d._publish_decision(result(time.time() - 60)) is False
    assert link.stats["decisions_expired"] == 1


def test_a_link_that_returns_nothing_counts_as_published(tmp_path: Path) -> None:
    d = daemon_with(NoLink(), tmp_path)
    assert d._publish_decision(result(time.time())) is True
