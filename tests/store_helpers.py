"""Damage voiceprint rows the way a bad SD card sector would, for tests of the store's
tolerance of them."""

from __future__ import annotations

import sqlite3

from voxgate.voiceprints import VoiceprintStore


def damage_row(store: VoiceprintStore, name: str) -> None:
    """Flip one byte of `name`'s sealed row in place."""
    uid = store._user_id(name)
    con = sqlite3.connect(store.path)
    (sealed,) = con.execute("SELECT sealed FROM voiceprints WHERE id = ?", (uid,)).fetchone()
    bad = bytearray(sealed)
    bad[40] ^= 0xFF
    con.execute("UPDATE voiceprints SET sealed = ? WHERE id = ?", (bytes(bad), uid))
    con.commit()
    con.close()
