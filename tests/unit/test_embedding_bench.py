"""`voxgate bench` runs each model in its own process and prints a table (figures not checked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voxgate.cli import main

SHIPPED = Path(__file__).resolve().parents[2] / "daemon" / "voxgate" / "models"


def test_bench_reports_each_model(capsys: pytest.CaptureFixture[str]) -> None:
    card = SHIPPED / "ge2e-int8.yaml"
    rc = main(["bench", "--model", str(card), "-n", "2", "--seconds", "2", "--no-torch", "--json"])
    assert rc == 0
    out = capsys.readouterr().out
    (row,) = json.loads(out)
    assert row["name"].endswith("/int8")
    assert row["runtime"] == "onnxruntime"
    assert row["median_ms"] > 0 and row["peak_rss_mb"] > 10 and row["finish_ms"] is not None
    assert row["seconds"] == 2.0


def test_bench_reports_a_broken_model_without_crashing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("format: 1\n")
    assert main(["bench", "--model", str(bad), "-n", "1", "--no-torch"]) == 1
    out = capsys.readouterr().out
    assert "failed" in out and "bad.yaml" in out


def test_bench_with_a_bad_audio_file_says_so_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "speech.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    assert main(["bench", "--audio", str(bad), "-n", "1", "--no-torch"]) == 2
    err = capsys.readouterr().err
    (line,) = err.strip().splitlines()  # once, not once per model
    assert line.startswith("voxgate bench: ") and "not a readable WAV/FLAC file" in line


def test_bench_without_torch_says_what_is_missing_and_how_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    # A fresh machine has no torch (an optional extra); this one may have it.
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a)
    )
    card = SHIPPED / "ge2e-int8.yaml"
    assert main(["bench", "--model", str(card), "-n", "1", "--seconds", "1", "--json"]) == 0
    err = capsys.readouterr().err
    assert "skipped: no torch;" in err and "voxgate[upstream]" in err
