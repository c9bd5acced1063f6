"""Everything runs on the device: loading the speaker model must not start ONNX Runtime's
telemetry. onnxruntime 1.32 keeps a 1DS telemetry queue (an SQLite file of about 1 MB plus a
device id) under ~/.cache/Microsoft/DeveloperTools/.onnxruntime/ and carries the collector
address https://mobile.events.data.microsoft.com/; voxgate turns it off with
ORT_DISABLE_TELEMETRY=1 before the first import. Found tracing the daemon's file writes with
the file system read-only except data_dir ("Failed to persist telemetry device ID")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import numpy as np
from voxgate.embedding import load_embedder
emb = load_embedder()
print(emb.embed(np.zeros(16000 * 2, dtype=np.int16) + 3).shape)
"""


def test_loading_the_onnx_model_writes_nothing_to_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env.update(HOME=str(home), PYTHONPATH=str(REPO / "daemon"))
    res = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "telemetry" not in res.stderr.lower(), res.stderr[-2000:]
    assert [p.relative_to(home) for p in home.rglob("*")] == []
