"""The loop's states and the one place a transition is announced (log, MQTT, metrics, STATUS).

idle       nobody speaking; the VAD runs on every frame
listening  speech has started; its audio is streamed into the stages
challenge  a challenge was issued; waiting for the answer (until it expires)
verifying  the answer ended; finishing the last embedding window and the decoder
decided    a decision was published; shown for a moment, then back to idle
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


class State(str, enum.Enum):
    IDLE = "idle"
    LISTENING = "listening"
    CHALLENGE = "challenge"
    VERIFYING = "verifying"
    DECIDED = "decided"


# Allowed moves; anything else is a bug in the loop and is logged loudly (not raised: the
# door must keep working).
ALLOWED: dict[State, frozenset[State]] = {
    State.IDLE: frozenset({State.LISTENING, State.CHALLENGE}),
    State.LISTENING: frozenset({State.IDLE, State.CHALLENGE, State.VERIFYING}),
    State.CHALLENGE: frozenset({State.IDLE, State.VERIFYING, State.DECIDED}),
    State.VERIFYING: frozenset({State.DECIDED, State.IDLE}),
    State.DECIDED: frozenset({State.IDLE, State.LISTENING, State.CHALLENGE}),
}

Listener = Callable[[State, State, str], None]


class StateMachine:
    def __init__(self) -> None:
        self.state = State.IDLE
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def move(self, new: State, why: str = "") -> None:
        old = self.state
        if new == old:
            return
        if new not in ALLOWED[old]:
            log.error("unexpected state change %s -> %s (%s)", old.value, new.value, why)
        self.state = new
        log.info("state %s -> %s%s", old.value, new.value, f" ({why})" if why else "")
        for listener in self._listeners:
            try:
                listener(old, new, why)
            except Exception:
                log.exception("state listener failed on %s -> %s", old.value, new.value)
