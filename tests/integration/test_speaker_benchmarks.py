"""The speaker benchmark scripts on bad input, as a researcher runs them by hand: a last line
on stderr naming the file or option, exit status 1 or 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("voxgate.embedding")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_protocol(tmp_path: Path) -> Path:
    """A data folder whose fsdd has a manifest but no protocol files, and no other set."""
    (tmp_path / "data" / "fsdd").mkdir(parents=True)
    (tmp_path / "data" / "fsdd" / "manifest.csv").write_text("path,speaker,text\n")
    return tmp_path


CASES = [
    ("speaker_eval.py", ["--data", "{tmp}/data", "--sets", "fsdd", "--out", "{tmp}/o"], "enroll"),
    ("speaker_eval.py", ["--data", "{tmp}/data", "--sets", "nosuch"], "nosuch"),
    ("bench_embedding.py", ["--data", "{tmp}/data", "--set", "fsdd"], "enroll.csv"),
    ("bench_embedding.py", ["--data", "{tmp}/data", "--model", "{tmp}/none.yaml"], "none.yaml"),
    ("speaker_variants.py", ["--data", "{tmp}/data", "--out", "{tmp}/o"], "speaker_eval.py"),
    ("speaker_trim_cost.py", ["--data", "{tmp}/data"], "vcc2018_eval"),
    ("embed_breakdown.py", ["--card", "{tmp}/none.yaml"], "none.yaml"),
    ("embed_breakdown.py", ["--cpu", "99999"], "--cpu"),
    ("embed_breakdown.py", ["--runs", "0"], "--runs"),
    ("embed_breakdown.py", ["--seconds", "0.2"], "--seconds"),
]


@pytest.mark.parametrize(("script", "args", "named"), CASES)
def test_bad_input_is_one_line_not_a_traceback(
    no_protocol: Path, script: str, args: list[str], named: str
) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "daemon")}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script)]
        + [a.format(tmp=no_protocol) for a in args],
        capture_output=True,
        text=True,
        env=env,
        cwd=no_protocol,
        timeout=120,
    )
    assert proc.returncode in (1, 2), proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]  # after the library's own log line, if any
    assert line.startswith(f"{script}: ") and named in line


def test_speaker_eval_without_litert_names_the_extra(no_protocol: Path) -> None:
    """--models fp16-litert on an install without the 'litert' extra: a ModelError traceback."""
    tmp_path = no_protocol
    stub = tmp_path / "stub" / "ai_edge_litert"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('not installed (test stand-in)')\n")
    env = {**os.environ, "PYTHONPATH": f"{stub.parent}{os.pathsep}{REPO / 'daemon'}"}
    args = ["--data", str(tmp_path / "data"), "--models", "fp16-litert"]
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "speaker_eval.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("speaker_eval.py: ") and "voxgate[litert]" in line
