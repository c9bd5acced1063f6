"""Rolling the package back one release: the previous release's code (from git) on the files
this release wrote. PREVIOUS is the last commit before replay.db's schema 2 and fleet.db's
tie-break column; the tests skip where the checkout has no history (a shallow clone)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest

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
