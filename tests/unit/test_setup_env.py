"""scripts/setup-env.sh, which scripts/demo and scripts/test source: the venv step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def need_venv(venv: Path, extras: str) -> subprocess.CompletedProcess[str]:
    # As scripts/demo and scripts/test run it.
    script = f'set -euo pipefail; . scripts/setup-env.sh; VENV="{venv}"; need_venv "{extras}"'
    env = dict(os.environ, PYTHONPATH=str(ROOT / "daemon"), PIP_NO_INDEX="1")
    return subprocess.run(
        ["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_a_venv_installed_for_these_extras_is_not_installed_again(tmp_path: Path) -> None:
    # Found reading what README's `scripts/demo` does: every run upgraded pip and setuptools
    # and re-installed the project from the package index, so a second demo on a door or
    # laptop without a network failed at pip. A real venv without pip stands for the
    # installed one: any pip call in it fails, so the second call must make none.
    venv = tmp_path / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    if made.returncode != 0:
        pytest.skip("python -m venv is not available (apt-get install python3-venv)")
    stamp = subprocess.run(
        ["bash", "-c", '. scripts/setup-env.sh; venv_stamp "mic"'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (venv / ".voxgate-install").write_text(stamp)  # what a finished install leaves
    done = need_venv(venv, "mic")
    assert done.returncode == 0 and "pip install" not in done.stdout, done
    # Other extras (or a changed pyproject) install again: here pip is missing, so it fails.
    again = need_venv(venv, "mic,dev")
    assert again.returncode != 0 and ">> pip install -e .[mic,dev]" in again.stdout, again
    assert not (venv / ".voxgate-install").exists()
