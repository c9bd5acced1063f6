"""plan_reload: which config changes a SIGHUP applies and which wait for a restart."""

from __future__ import annotations

import pytest

from voxgate.config import VoxgateConfig
from voxgate.service.reload import plan_reload

BASE = VoxgateConfig()


@pytest.mark.parametrize(
    ("change", "applied", "needs_restart"),
    [
        ({}, [], []),
        ({"lockout": {"max_failures": 3}}, ["lockout"], []),
        ({"logging": {"level": "debug"}, "vad": {"aggressiveness": 3}}, ["logging", "vad"], []),
        ({"audio": {"source": "stdin"}}, [], ["audio"]),
        ({"challenge": {"length": 6}, "mqtt": {"host": "broker"}}, ["challenge"], ["mqtt"]),
        ({"data_dir": "/srv/voxgate", "service": {"queue_s": 2}}, ["service"], ["data_dir"]),
    ],
)
def test_plan(change: dict, applied: list[str], needs_restart: list[str]) -> None:
    new = VoxgateConfig.model_validate(change)
    plan = plan_reload(BASE, new)
    assert (plan.applied, plan.needs_restart) == (applied, needs_restart)
    for section in applied:
        assert getattr(plan.cfg, section) == getattr(new, section)
    for section in needs_restart:  # the running value stays
        assert getattr(plan.cfg, section) == getattr(BASE, section)
