"""Every topic voxgate uses, built in one place (the tree is documented in docs/mqtt.md)."""

from __future__ import annotations

import re

COMMANDS = ("attempt", "enroll-start", "enroll-finish", "reload", "erase-user")
# "offline" is the daemon's last word on a clean stop (status says the same via the will).
STATES = ("idle", "listening", "challenge", "verifying", "decided", "offline")
_LEVEL = re.compile(r"^[^#+/]+$")
# The QoS the door publishes the topics Home Assistant reads with; the discovery configs
# give HA the same (docs/mqtt.md, "Topic tree"). The event summary stays at most once: a
# dashboard event sent twice after a reconnect would show one entry as two.
STATE_QOS = 1
USER_QOS = 1
EVENT_QOS = 0


class Topics:
    """Topic names for one device under `<prefix>/<device_id>/`."""

    def __init__(self, prefix: str, device_id: str, discovery_prefix: str | None = None) -> None:
        for name, level in (("prefix", prefix), ("device_id", device_id)):
            if not _LEVEL.match(level):
                raise ValueError(f"{name} {level!r} must be one topic level without + # /")
        self.prefix = prefix
        self.device_id = device_id
        self.discovery_prefix = discovery_prefix
        self.base = f"{prefix}/{device_id}"

    @property
    def status(self) -> str:
        """Retained 'online' / 'offline' (the last will)."""
        return f"{self.base}/status"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def challenge(self) -> str:
        return f"{self.base}/challenge"

    @property
    def decision(self) -> str:
        """Signed decisions, QoS 1, not retained: what locks act on."""
        return f"{self.base}/decision"

    @property
    def decision_refused(self) -> str:
        """A lock's report of a decision it did not act on (mqtt.refusal); never acted on."""
        return f"{self.base}/decision/refused"

    @property
    def event(self) -> str:
        """Unsigned decision summary for dashboards (Home Assistant event entity)."""
        return f"{self.base}/event"

    @property
    def user(self) -> str:
        """Retained name of the last identified user (Home Assistant sensor)."""
        return f"{self.base}/user"

    @property
    def lockout(self) -> str:
        return f"{self.base}/lockout"

    def command(self, name: str) -> str:
        return f"{self.base}/cmd/{name}"

    def command_result(self, name: str) -> str:
        return f"{self.base}/cmd/{name}/result"

    @property
    def command_filter(self) -> str:
        """Subscription for every command (one level, so replies are not echoed back)."""
        return f"{self.base}/cmd/+"

    def command_name(self, topic: str) -> str | None:
        """'reload' for '<base>/cmd/reload'; None for anything else."""
        head = f"{self.base}/cmd/"
        if not topic.startswith(head):
            return None
        name = topic[len(head) :]
        return name if name and "/" not in name else None

    def discovery(self, component: str, object_id: str) -> str:
        if self.discovery_prefix is None:
            raise ValueError("discovery is disabled")
        return f"{self.discovery_prefix}/{component}/{self.device_id}/{object_id}/config"


def device_from_decision_topic(prefix: str, topic: str) -> str | None:
    """The device id in '<prefix>/<device>/decision', else None."""
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] == prefix and parts[2] == "decision" and parts[1]:
        return parts[1]
    return None
