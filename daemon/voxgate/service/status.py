"""What the daemon sends systemd as STATUS= (what `systemctl status voxgate` shows): its
state, what the door is waiting for, and what keeps it from working fully, each for as long
as it lasts (docs/service.md, "systemd")."""

from __future__ import annotations

from typing import Any

from voxgate.service.states import State

STATUS = {
    State.IDLE: "idle: listening for speech",
    State.LISTENING: "listening: someone is speaking",
    State.CHALLENGE: "challenge: waiting for the spoken answer",
    State.VERIFYING: "verifying: finishing embedding and transcript",
    State.DECIDED: "decided",
}
# An input giving nothing but zeros for this long is muted or dead, not a quiet room: a
# working microphone always has a noise floor. Counted in audio, so a pipe read faster than
# real time is judged the same.
ZEROS_S = 30.0


def problems(
    *, muted: bool, store_unreadable: bool, audit: Any, lockout: Any, sequence: Any
) -> tuple[str, ...]:
    """What keeps the door from working fully. `audit`: the AuditLog, `lockout`: the
    LockoutBook, `sequence`: the decision SequenceCounter; each None when there is none."""
    found = []
    if muted:
        found.append(f"audio input is digital silence (all zeros for {ZEROS_S:.0f} s+)")
    if store_unreadable:
        found.append("voiceprints cannot be read (attempts denied; see the log)")
    if audit is not None and audit.failing:
        found.append("audit log cannot be written (lines held in memory; see the log)")
    if lockout is not None and lockout.unsaved:
        found.append("lockout state cannot be saved (enforced from memory; see the log)")
    if sequence is not None and sequence.unsaved:
        found.append("decision sequence cannot be saved (numbered from memory; see the log)")
    return tuple(found)


def status_line(state: State, why: str, found: tuple[str, ...], mqtt_down: bool) -> str:
    """The STATUS= text: the state (with why, for a decision), then each problem."""
    text = "; ".join([STATUS[state] + (f": {why}" if why else ""), *found])
    if mqtt_down:
        text += "; MQTT broker not connected (decisions are not reaching the lock)"
    return text
