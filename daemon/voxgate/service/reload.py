"""What a SIGHUP may change while the daemon runs.

Live: logging, lockout, challenge, vad (from the next idle moment) and service. Everything
else (audio device, models, broker, data_dir, keys) needs a restart: such changes are
reported and not applied, so a half-applied config can never run.
"""

from __future__ import annotations

from dataclasses import dataclass

from voxgate.config import VoxgateConfig

HOT_SECTIONS = ("logging", "lockout", "challenge", "vad", "service")


@dataclass(frozen=True)
class ReloadPlan:
    cfg: VoxgateConfig  # the running config with the live sections replaced
    applied: list[str]
    needs_restart: list[str]


def plan_reload(running: VoxgateConfig, new: VoxgateConfig) -> ReloadPlan:
    changed = [k for k in type(new).model_fields if getattr(new, k) != getattr(running, k)]
    hot = [k for k in changed if k in HOT_SECTIONS]
    cold = [k for k in changed if k not in HOT_SECTIONS]
    cfg = running.model_copy(update={k: getattr(new, k) for k in hot})
    return ReloadPlan(cfg, hot, cold)
