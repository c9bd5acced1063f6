"""What the README's and the docs' commands write into the checkout stays out of `git status`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout"
)
@pytest.mark.parametrize(
    "path",
    [
        "eval-fsdd/report.json",  # `voxgate eval ../shared/data/fsdd` (README), default --out
        "eval-out/fsdd/det.png",  # the README's and docs' --out eval-out
        "var/audit.jsonl",  # firmware_config/dev.yaml's data_dir ./var
    ],
)
def test_command_output_is_ignored(path: str) -> None:
    # Running the README's `voxgate eval ../shared/data/fsdd` left eval-fsdd/ untracked.
    res = subprocess.run(
        ["git", "check-ignore", "-q", "--no-index", path], cwd=REPO, capture_output=True
    )
    assert res.returncode == 0, f"{path} is not ignored"
