"""How user names compare: the voiceprint store's matching, for every stage that keys by name.

"ALICE", " alice" and "alice" open one voiceprint, so a lockout, a retained MQTT name and
the audit lines of an erased user must treat them as one person too.
"""

from __future__ import annotations

import unicodedata
from itertools import pairwise

# ZERO WIDTH NON-JOINER and ZERO WIDTH JOINER (category Cf) are part of how many Persian,
# Urdu, Hindi and Malayalam names are spelled, so a name may hold them; every other
# category-C character stays refused (bidi overrides can make a name read as another).
JOINERS = frozenset("\u200c\u200d")


def name_problem(name: str) -> str | None:
    """Why `name` (NFC-normalized and stripped) cannot be a user name for its characters;
    None when it can. The one rule for every path that checks a name."""
    if any(unicodedata.category(c).startswith("C") and c not in JOINERS for c in name):
        return (
            "user name must not contain control characters, direction overrides or other "
            "invisible characters (only a zero width joiner or non-joiner may join two letters)"
        )
    # A joiner joins two letters: at an end, or beside another, it only hides in the name.
    ends = name[:1] + name[-1:]
    if any(c in JOINERS for c in ends) or any(
        a in JOINERS and b in JOINERS for a, b in pairwise(name)
    ):
        return (
            "a zero width joiner or non-joiner (U+200D, U+200C) in a user name must stand "
            "between two other characters, one at a time"
        )
    return None


def fold(name: str) -> str:
    """NFC-normalized, stripped and case-folded: which voiceprint a name opens."""
    return unicodedata.normalize("NFC", name).strip().casefold()


def without_joiners(text: str) -> str:
    return "".join(c for c in text if c not in JOINERS)


def person_key(name: str) -> str:
    """fold() without zero width joiners: the key of a claimed name's lockout and replay
    counts. A joiner does not show, so "al<ZWNJ>ice" reads as "alice" and must count as
    her (no fresh lockout bucket by inserting one); the store refuses the second of two
    such names (look_alike), so one key never covers two enrolled people."""
    return without_joiners(fold(name))


def look_alike(name: str) -> str:
    """What a name reads as: compatibility forms (full-width letters, ligatures, half-width
    kana, no-break and other spaces) taken as their plain letters, case folded, runs of
    spaces as one. Two names with the same look_alike but a different fold() would be two
    people whose names read the same in every log and list; the store refuses the second
    (matching stays fold(): a stored voiceprint's key is made from it)."""
    plain = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    # Joiners dropped: invisible, they would make a second user whose name reads the same.
    return " ".join(without_joiners(plain).split())
