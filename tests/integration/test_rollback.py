"""Rolling the package back one release: the previous release's code (from git) on the files
this release wrote. PREVIOUS is the last commit before replay.db's schema 2 and fleet.db's
tie-break column; the tests skip where the checkout has no history (a shallow clone)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest

from voxgate.fleet import SyncState
from voxgate.replay import ReplayDetector

REPO = Path(__file__).resolve().parents[2]
PREVIOUS = "5ee0147"


@pytest.fixture(scope="module")
def previous(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The previous release's `daemon` folder, unpacked from git."""
    try:
        tar = subprocess.run(
            ["git", "-C", str(REPO), "archive", PREVIOUS, "daemon"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip(f"no git history with {PREVIOUS} here")
    root = tmp_path_factory.mktemp("previous")
    with tarfile.open(fileobj=BytesIO(tar)) as t:
        t.extractall(root, filter="data")
    yield root / "daemon"


def _run_previous(previous: Path, code: str) -> str:
    """Run `code` with the previous release's package; its output (it must not fail)."""
    env = dict(os.environ, PYTHONPATH=str(previous))
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert str(previous) in out.stdout  # the old package ran, not this one
    return out.stdout


def _answer(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(16000 * 2) * 3000).astype(np.int16)


def test_the_previous_release_opens_the_replay_store_this_release_wrote(
    previous: Path, tmp_path: Path
) -> None:
    """replay.db was marked schema 2: the previous release refused it ('schema version 2 is
    not supported') and the door did not start after a package rollback."""
    path = tmp_path / "replay.db"
    det = ReplayDetector(path, window_s=10**6)
    det.check_and_add(_answer(1), now=1000.0, user="alice")
    det.close()
    out = _run_previous(
        previous,
        f"""
        import numpy as np, voxgate
        from voxgate.replay import ReplayDetector
        print(voxgate.__file__)
        det = ReplayDetector({str(path)!r}, window_s=10**6)
        rng = np.random.default_rng(1)
        again = (rng.standard_normal(16000 * 2) * 3000).astype(np.int16)
        print("replay", det.check_and_add(again, now=1001.0).is_replay)
        rng = np.random.default_rng(2)
        other = (rng.standard_normal(16000 * 2) * 3000).astype(np.int16)
        print("other", det.check_and_add(other, now=1002.0).is_replay)
        det.close()
        """,
    )
    assert "replay True" in out and "other False" in out
    # Forward again: this release reads every row and still drops what was alice's; the
    # rows the previous release wrote name nobody (they leave with the window).
    det = ReplayDetector(path, window_s=10**6)
    assert det.count() == 3
    assert det.forget("alice") == 1
    assert det.count() == 2
    assert det.check_and_add(_answer(2), now=1003.0, keep=False).is_replay
    det.close()


def _docs_snippet() -> str:
    """The script docs/service.md gives for dropping fleet.db's tie-break columns."""
    text = (REPO / "docs" / "service.md").read_text()
    found = re.search(r"sudo python3 - /var/lib/voxgate/fleet.db <<'EOF'\n(.*?)\nEOF\n", text, re.S)
    assert found, "docs/service.md lost the fleet.db rollback script"
    return found.group(1)


def test_the_documented_fleet_state_rollback_lets_the_previous_release_write_it(
    previous: Path, tmp_path: Path
) -> None:
    """fleet.db gained a tiebreak column in three tables: the previous release's positional
    inserts failed ('table users has 5 columns but 4 values were supplied'). The script in
    docs/service.md drops the columns and keeps every row."""
    path = tmp_path / "fleet.db"
    state = SyncState(path)
    state.set_user("tag-a", (5, "tb"), "voiceprint", held=True)
    state.set_grant("tag-a", "staff", (5, "tb"), "voiceprint")
    state.queue("voxgate-fleet/staff/tag-a", b"sealed", (5, "tb"))
    state.close()
    probe = f"""
        import voxgate
        from voxgate.fleet import SyncState
        print(voxgate.__file__)
        s = SyncState({str(path)!r})
        print("read", s.user("tag-a"), s.grant("tag-a", "staff"), len(s.outbox()))
        s.set_user("tag-b", 6, "erase", held=False)
        s.set_grant("tag-b", "staff", 6, "erase")
        s.queue("voxgate-fleet/staff/tag-b", b"tomb", 6)
        print("wrote")
        """
    before = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(probe)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(previous)),
        timeout=120,
    )
    assert "5 columns but 4 values" in before.stderr  # what the rollback met
    subprocess.run([sys.executable, "-", str(path)], input=_docs_snippet(), text=True, check=True)
    assert not path.with_name("fleet.db-wal").exists()  # nothing left owned by root
    out = _run_previous(previous, probe)
    assert "read (5, 'voiceprint', True) (5, 'voiceprint') 1" in out and "wrote" in out
    # Forward again: the columns come back; the rows count as written before tie-breaks.
    state = SyncState(path)
    assert state.user("tag-a") == (5, "voiceprint", True, "")
    assert state.user("tag-b") == (6, "erase", False, "")
    assert [(t, o) for t, _, o in state.outbox()] == [
        ("voxgate-fleet/staff/tag-a", (5, "")),
        ("voxgate-fleet/staff/tag-b", (6, "")),
    ]
    state.close()


def test_a_replay_store_marked_2_by_a_development_build_is_marked_1_again(
    tmp_path: Path,
) -> None:
    import sqlite3

    path = tmp_path / "replay.db"
    det = ReplayDetector(path, window_s=10**6)
    det.check_and_add(_answer(1), now=1000.0, user="alice")
    det.close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=2")
    db.close()
    det = ReplayDetector(path, window_s=10**6)
    assert det.check_and_add(_answer(1), now=1001.0, keep=False).is_replay
    assert det.forget("alice") == 1
    det.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    db.close()


def test_the_previous_release_opens_the_lockout_state_this_release_wrote(
    previous: Path, tmp_path: Path
) -> None:
    """lockout.db gained a table of the door's failure times (the door's window count, which
    no success clears). The previous release must still open the file and enforce what it
    knows (the consecutive counts and the locks); rolled forward again, the window is kept."""
    import time

    from voxgate.config.service import LockoutConfig
    from voxgate.lockout import LockoutBook

    path = tmp_path / "lockout.db"
    cfg = LockoutConfig(device_max_failures=3, device_window_failures=4, device_window_s=600)
    t = time.time()
    book = LockoutBook(path, cfg)
    book.record("bob", ok=False, now=t - 100)
    book.record("bob", ok=True, now=t - 90)  # starts the consecutive count over, not the window
    book.record("mallory", ok=False, now=t - 50)
    book.record(None, ok=False, now=t - 40)
    book.close()
    out = _run_previous(
        previous,
        f"""
        import voxgate
        from voxgate.config.service import LockoutConfig
        from voxgate.lockout import LockoutBook
        print(voxgate.__file__)
        b = LockoutBook({str(path)!r}, LockoutConfig(device_max_failures=3))
        print("count", b.state(None, {t - 30}).device_failures)
        print("locked", b.record(None, ok=False, now={t - 20}).state.scope)
        b.close()
        """,
    )
    assert "count 2" in out and "locked device" in out
    # Forward again: the previous release's lock holds; its failure is not in the window.
    book = LockoutBook(path, cfg)
    st = book.state(None, t)
    assert st.locked and st.scope == "device" and st.until == pytest.approx(t + 10)
    assert (st.device_failures, st.device_window_failures) == (3, 3)
    book.close()
