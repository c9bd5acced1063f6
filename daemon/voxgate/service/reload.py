"""What a SIGHUP may change while the daemon runs.

Live: logging, lockout, challenge, vad (from the next idle moment) and service. Everything
else (audio device, models, broker, data_dir, keys) needs a restart: such changes are
reported and not applied, so a half-applied config can never run. So do the challenge
settings the stages are built from at start (the mode, espeak, the replay window).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from voxgate.config import VoxgateConfig

HOT_SECTIONS = ("logging", "lockout", "challenge", "vad", "service")
# Fields of hot sections that build_stages reads once (a live mode change denied every
# attempt: policy asked for liveness that no stage had been built to check).
COLD_FIELDS = {
    "challenge": ("mode", "speak", "replay_window_s", "replay_max_stored", "replay_memory_mb")
}


@dataclass(frozen=True)
class ReloadPlan:
    cfg: VoxgateConfig  # the running config with the live sections replaced
    applied: list[str]
    needs_restart: list[str]


def plan_reload(running: VoxgateConfig, new: VoxgateConfig) -> ReloadPlan:
    changed = [k for k in type(new).model_fields if getattr(new, k) != getattr(running, k)]
    cold = [k for k in changed if k not in HOT_SECTIONS]
    update: dict[str, Any] = {}
    for k in (k for k in changed if k in HOT_SECTIONS):
        section, old = getattr(new, k), getattr(running, k)
        fixed = [f for f in COLD_FIELDS.get(k, ()) if getattr(section, f) != getattr(old, f)]
        cold += [f"{k}.{f}" for f in fixed]
        section = section.model_copy(update={f: getattr(old, f) for f in fixed})
        if section != old:
            update[k] = section
    cfg = running.model_copy(update=update)
    return ReloadPlan(cfg, list(update), cold)
