"""How user names compare: the voiceprint store's matching, for every stage that keys by name.

"ALICE", " alice" and "alice" open one voiceprint, so a lockout, a retained MQTT name and
the audit lines of an erased user must treat them as one person too.
"""

from __future__ import annotations

import unicodedata


def fold(name: str) -> str:
    """NFC-normalized, stripped and case-folded."""
    return unicodedata.normalize("NFC", name).strip().casefold()


def look_alike(name: str) -> str:
    """What a name reads as: compatibility forms (full-width letters, ligatures, half-width
    kana, no-break and other spaces) taken as their plain letters, case folded, runs of
    spaces as one. Two names with the same look_alike but a different fold() would be two
    people whose names read the same in every log and list; the store refuses the second
    (matching stays fold(): a stored voiceprint's key is made from it)."""
    plain = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    return " ".join(plain.split())
