"""Home Assistant MQTT discovery: what a door looks like in HA.

Three entities, all tied to one HA device and made unavailable by the retained `status`:
- event  `<device> decision`: fires on every decision (event_type granted/denied/retry), from
  the unsigned `event` summary; dashboards only, never for actuation;
- sensor `<device> last user`: the last user granted access (retained `user` topic);
- sensor `<device> state`: idle / listening / challenge / verifying / decided.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from voxgate.decision import OUTCOMES
from voxgate.mqtt.topics import EVENT_QOS, STATE_QOS, USER_QOS, Topics


def entity_slug(device_id: str) -> str:
    """The door's part of its HA ids (entity ids allow only [a-z0-9_]).

    '-' becomes '_', so front-door and front_door would share every unique_id and HA would
    drop one door. A device_id with no '_' keeps the plain slug, as before (DNS hostnames
    cannot hold '_', and the examples use '-'); one with '_' adds 8 hex digits of the sha256
    of the raw device_id, so no two device_ids share ids."""
    slug = device_id.replace("-", "_")
    if "_" in device_id:
        slug += "_" + hashlib.sha256(device_id.encode()).hexdigest()[:8]
    return slug


def _common(t: Topics, version: str, domain: str, object_id: str, name: str) -> dict[str, Any]:
    slug = f"voxgate_{entity_slug(t.device_id)}_{object_id}"
    return {
        "name": name,
        "unique_id": slug,
        # HA 2025.10 replaced object_id with default_entity_id ("<domain>.<slug>").
        "default_entity_id": f"{domain}.{slug}",
        "availability_topic": t.status,
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": {
            "identifiers": [f"voxgate_{t.device_id}"],
            "name": f"voxgate {t.device_id}",
            "manufacturer": "voxgate",
            "model": "voice access gate",
            "sw_version": version,
        },
        "origin": {"name": "voxgate", "sw_version": version},
    }


def configs(t: Topics, version: str) -> dict[str, dict[str, Any]]:
    """Discovery topic -> config payload (as a dict)."""
    event = _common(t, version, "event", "decision", "Decision")
    event.update(
        {
            "state_topic": t.event,
            "event_types": list(OUTCOMES),
            "icon": "mdi:account-lock",
            "qos": EVENT_QOS,
        }
    )
    # HA subscribes at `qos` (its default 0): without it a QoS 1 update reached it at QoS 0.
    user = _common(t, version, "sensor", "last_user", "Last user")
    user.update({"state_topic": t.user, "icon": "mdi:account-check", "qos": USER_QOS})
    state = _common(t, version, "sensor", "state", "State")
    state.update({"state_topic": t.state, "icon": "mdi:microphone-message", "qos": STATE_QOS})
    return {
        t.discovery("event", "decision"): event,
        t.discovery("sensor", "last_user"): user,
        t.discovery("sensor", "state"): state,
    }


def messages(t: Topics, version: str) -> list[tuple[str, bytes]]:
    """(topic, payload) pairs to publish retained on every connect."""
    return [
        (topic, json.dumps(cfg, separators=(",", ":"), sort_keys=True).encode())
        for topic, cfg in configs(t, version).items()
    ]
