"""How user names compare: the voiceprint store's matching, for every stage that keys by name.

"ALICE", " alice" and "alice" open one voiceprint, so a lockout, a retained MQTT name and
the audit lines of an erased user must treat them as one person too.
"""

from __future__ import annotations

import unicodedata


def fold(name: str) -> str:
    """NFC-normalized, stripped and case-folded."""
    return unicodedata.normalize("NFC", name).strip().casefold()
