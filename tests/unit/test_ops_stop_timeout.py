"""The systemd units give the daemon more time to stop than its own longest orderly stop:
service.stop_timeout_s (at its configured maximum) for an answer being spoken, plus the
shutdown of the stages. Otherwise systemd SIGKILLs it mid-stop: no `offline`, no
`service_stop` in the audit log. Read from the real files, so the two cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path

import annotated_types

from voxgate.config.service import ServiceConfig

REPO = Path(__file__).resolve().parents[2]
# Closing the stages after the answer: measured at most 2.7 s with the broker unreachable
# (docs/service.md, Benchmarks); room for a slow SD card and a busy board on top.
SHUTDOWN_S = 10.0
UNITS = [
    REPO / "systemd" / "voxgate.service",
    REPO / "ansible" / "roles" / "voxgate" / "templates" / "voxgate-dropin.conf.j2",
]
SPAN = re.compile(r"(\d+(?:\.\d+)?)\s*(us|ms|sec|min|hr|h|s|m)?\s*")
UNIT_S = {"us": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}


def span_s(text: str) -> float:
    """A systemd time span ("10s", "1min 30s", "45") in seconds; infinity as inf."""
    text = text.strip()
    if text == "infinity":
        return float("inf")
    parts = SPAN.findall(text)
    assert parts and SPAN.sub("", text) == "", f"not a time span: {text!r}"
    return sum(float(n) * UNIT_S[u or "s"] for n, u in parts)


def stop_timeouts(unit: Path) -> list[float]:
    """Every value that sets the stop timeout in [Service] (the last one wins in systemd)."""
    found = []
    for line in unit.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() in ("TimeoutStopSec", "TimeoutSec") and value.strip():
            found.append(span_s(value))
    return found


def config_max_stop_s() -> float:
    field = ServiceConfig.model_fields["stop_timeout_s"]
    bounds = [m for m in field.metadata if isinstance(m, (annotated_types.Le, annotated_types.Lt))]
    assert bounds, "service.stop_timeout_s needs an upper bound"
    return float(bounds[0].le if isinstance(bounds[0], annotated_types.Le) else bounds[0].lt)


def test_span_parser() -> None:
    assert span_s("10s") == 10 and span_s("1min 30s") == 90 and span_s("45") == 45
    assert span_s("500ms") == 0.5


def test_the_shipped_unit_sets_a_stop_timeout() -> None:
    assert stop_timeouts(UNITS[0]), "systemd/voxgate.service has no TimeoutStopSec="


def test_units_wait_longer_than_the_longest_orderly_stop() -> None:
    need = config_max_stop_s() + SHUTDOWN_S
    for unit in UNITS:
        values = stop_timeouts(unit)
        if values:  # a drop-in without one keeps the unit's
            assert values[-1] >= need, (
                f"{unit.relative_to(REPO)}: TimeoutStopSec={values[-1]:g} s, but the daemon "
                f"may take service.stop_timeout_s (up to {config_max_stop_s():g} s) plus "
                f"{SHUTDOWN_S:g} s to stop in order; systemd would SIGKILL it first"
            )
