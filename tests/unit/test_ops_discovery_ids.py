"""Home Assistant discovery ids: two doors whose device_ids differ only by '-' versus '_'
(front-door, front_door) published the same unique_id, and HA silently dropped one of them.
Distinct device_ids now give distinct ids; the ids of names without '_' (every hostname, and
every example in the docs) are exactly what they were, so their HA entities stay."""

from __future__ import annotations

from voxgate.mqtt import discovery
from voxgate.mqtt.topics import Topics

OBJECTS = ("decision", "last_user", "state")


def ids(device_id: str) -> dict[str, tuple[str, str]]:
    """object -> (unique_id, default_entity_id) as published for this door."""
    configs = discovery.configs(Topics("voxgate", device_id, "homeassistant"), "0.1.0")
    return {
        topic.split("/")[-2]: (cfg["unique_id"], cfg["default_entity_id"])
        for topic, cfg in configs.items()
    }


def test_names_without_underscore_keep_their_ids() -> None:
    # The ids HA registered before this change (pinned: an HA entity is keyed by them).
    assert ids("front-door") == {
        "decision": ("voxgate_front_door_decision", "event.voxgate_front_door_decision"),
        "last_user": ("voxgate_front_door_last_user", "sensor.voxgate_front_door_last_user"),
        "state": ("voxgate_front_door_state", "sensor.voxgate_front_door_state"),
    }
    assert ids("door-hq-lab-1")["state"][0] == "voxgate_door_hq_lab_1_state"
    assert ids("frontdoor")["state"][0] == "voxgate_frontdoor_state"


def test_names_differing_only_in_separators_get_distinct_ids() -> None:
    names = ["front-door", "front_door", "a-b-c", "a_b-c", "a-b_c", "a_b_c", "a--b", "a__b"]
    names += ["a_-b", "a-_b", "frontdoor", "front-door-1", "front_door_1"]
    seen: dict[str, str] = {}
    for name in names:
        for unique_id, entity_id in ids(name).values():
            for key in (unique_id, entity_id):
                assert key not in seen, f"{name} and {seen.get(key)} share {key}"
                seen[key] = name


def test_ids_are_stable_and_valid_entity_ids() -> None:
    for name in ("front_door", "x_1", "a_b-c"):
        first = ids(name)
        assert first == ids(name)
        for unique_id, entity_id in first.values():
            domain, object_id = entity_id.split(".")
            assert domain in ("event", "sensor") and object_id == unique_id
            assert all(c.isascii() and (c.isalnum() or c == "_") for c in object_id)
            assert object_id == object_id.lower()


def test_hyphen_door_and_underscore_door_side_by_side() -> None:
    a, b = ids("front-door"), ids("front_door")
    assert not {u for u, _ in a.values()} & {u for u, _ in b.values()}
    # Nor do they share an HA device (its identifiers keep the raw device_id).
    devices = [
        {tuple(c["device"]["identifiers"]) for c in discovery.configs(t, "0").values()}
        for t in (Topics("voxgate", d, "homeassistant") for d in ("front-door", "front_door"))
    ]
    assert not devices[0] & devices[1]
