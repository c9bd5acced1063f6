"""`voxgate bench` runs each model in its own process and prints a table (figures not checked)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.unit.test_embedding import build_fbank_demo
from voxgate.cli import main
from voxgate.commands import bench
from voxgate.embedding import load_embedder

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
    e = load_embedder(card)
    assert row["windows"] == len(e.window_starts(e.speech_of(bench.synthetic_speech(2.0)).size))


def test_bench_compares_with_upstream_at_the_same_windows_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The shipped cards run fewer windows than upstream's defaults: the table must also give
    the ratio at the same number of windows. Torch is not installed here: its row stands in."""
    torch_row = {
        "system": "torch", "name": "resemblyzer-torch (upstream)", "runtime": "torch 0",
        "seconds": 3.0, "load_ms": 1.0, "median_ms": 30.0, "p90_ms": 31.0, "finish_ms": None,
        "peak_rss_mb": 400.0, "windows": 3, "embed_only_ms": 25.0, "end_to_end_ms": 24.0,
        "end_to_end_windows": 2,
    }  # fmt: skip
    real = bench._run_worker
    monkeypatch.setattr(bench, "_torch_missing", lambda: [])
    monkeypatch.setattr(
        bench, "_run_worker", lambda spec: torch_row if spec["system"] == "torch" else real(spec)
    )
    card = SHIPPED / "ge2e-int8.yaml"
    assert main(["bench", "--model", str(card), "-n", "3"]) == 0
    out = capsys.readouterr().out
    ours = next(line for line in out.splitlines() if line.startswith("ge2e-resemblyzer"))
    median, windows, speedup = float(ours.split()[3]), int(ours.split()[5]), float(ours.split()[-1])
    assert windows == 2  # 3 s of speech, windows end to end
    assert speedup == pytest.approx(30.0 / median, abs=0.01 + 0.3 / median)
    same = out.split("at the same windows: ")[1].splitlines()[0]
    assert same.startswith("ge2e-resemblyzer-0.1.4/int8 ") and same.endswith("x")
    assert float(same.split()[-1][:-1]) == pytest.approx(24.0 / median, abs=0.01 + 0.3 / median)


def test_bench_reports_a_broken_model_without_crashing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("format: 1\n")
    assert main(["bench", "--model", str(bad), "-n", "1", "--no-torch"]) == 1
    out = capsys.readouterr().out
    assert "failed" in out and "bad.yaml" in out


def test_bench_failed_row_gives_the_whole_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A card whose bin count the model rejects (the fbank test model, num_mel_bins 40 for
    its 80) printed only the last line of ONNX Runtime's message: 'failed:  Please fix
    either the inputs/outputs or the model.', naming neither the card nor the shape."""
    card = build_fbank_demo(tmp_path)
    card.write_text(card.read_text().replace("num_mel_bins: 80", "num_mel_bins: 40"))
    assert main(["bench", "--model", str(card), "-n", "1", "--no-torch"]) == 1
    (row,) = [line for line in capsys.readouterr().out.splitlines() if "failed" in line]
    assert f"card {card} describes" in row and "rejects input (1, 100, 40)" in row, row


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
    assert "skipped: no torch" in err and "voxgate[upstream]" in err


@pytest.mark.parametrize("cpu", ["99999", "-1"])
def test_bench_on_a_core_it_cannot_use_says_so_once(
    cpu: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--cpu outside this process's cores: every model's worker failed on its own with
    'OSError: [Errno 22] Invalid argument' (or 'negative CPU number'), after loading torch."""
    card = SHIPPED / "ge2e-int8.yaml"
    assert main(["bench", "--model", str(card), "-n", "1", "--no-torch", "--cpu", cpu]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()  # said once, before any worker starts
    assert line.startswith(f"voxgate bench: --cpu {cpu}: ") and "cores" in line
    assert captured.out == ""


def test_bench_utterance_length_is_checked_once(capsys: pytest.CaptureFixture[str]) -> None:
    """A file longer than a take (120 s) is refused for --audio, and for --seconds too."""
    card = SHIPPED / "ge2e-int8.yaml"
    assert main(["bench", "--model", str(card), "--no-torch", "--seconds", "121"]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("voxgate bench: ") and "--seconds" in line and "120" in line
    assert captured.out == ""


@pytest.mark.parametrize("seconds", ["0", "1e9"])
def test_bench_utterance_length_that_is_no_duration_is_a_usage_error(
    seconds: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--seconds 1e9 had every worker try to allocate 116 TiB ('_ArrayMemoryError'); now it
    stops at the argument, before any worker starts."""
    card = SHIPPED / "ge2e-int8.yaml"
    with pytest.raises(SystemExit) as stop:
        main(["bench", "--model", str(card), "--no-torch", "--seconds", seconds])
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert "argument --seconds" in captured.err and captured.out == ""


def test_bench_worker_past_its_time_limit_is_a_failed_row(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A worker that outlived the subprocess timeout (900 s: e.g. -n 20000 with torch) raised
    TimeoutExpired out of `voxgate bench`: a traceback, and the other models' rows lost."""
    monkeypatch.setattr(bench, "WORKER_TIMEOUT_S", 0.5)  # the real worker, a shorter limit
    card = SHIPPED / "ge2e-int8.yaml"
    assert main(["bench", "--model", str(card), "-n", "100000", "--no-torch"]) == 1
    out = capsys.readouterr().out
    assert "failed: no result within 0.5 s" in out


def test_bench_default_skips_a_shipped_card_whose_runtime_is_not_installed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """LiteRT is an optional extra, like torch for the upstream column; without it plain
    `voxgate bench` gave the fp16 card a 'failed: ModelError: LiteRT is not installed' row
    and exit status 1 on an install that is as documented."""
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # as if not installed
    assert main(["bench", "-n", "1", "--no-torch", "--json"]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert [r["runtime"] for r in rows] == ["onnxruntime", "onnxruntime"]
    assert "ge2e-fp16-litert.yaml" in captured.err and "voxgate[litert]" in captured.err


def test_bench_counts_one_run_for_a_whole_utterance_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A whole-utterance model (CAM++/ECAPA style) runs once per utterance, whatever the
    sliding-window defaults of its card would say (they gave 3 on 3 s)."""
    from tests.unit.test_embedding import build_fbank_demo

    card = build_fbank_demo(tmp_path)
    assert main(["bench", "--model", str(card), "-n", "1", "--no-torch", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["windows"] == 1


def test_bench_table_says_what_rss_and_x_torch_mean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table's 'RSS MB' is the peak (docs/models.md) and 'x torch' a speed-up, but the
    legend under it explained only 'windows' and 'finish'; without upstream the column was
    all '-', with the reason only on stderr before the runs."""
    card = build_fbank_demo(tmp_path)
    assert main(["bench", "--model", str(card), "-n", "1", "--no-torch"]) == 0
    out = capsys.readouterr().out
    assert "RSS MB = the process's peak resident memory" in out
    assert "x torch = -: no upstream Resemblyzer (torch) figures (--no-torch)" in out


def test_bench_audio_at_another_rate_does_not_count_the_resampler_as_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--audio` at 44.1 kHz was read and resampled inside each measured worker, and the
    resampler's import (scipy.signal, about 70 MB) went into the row's peak RSS, 'model
    loaded and used': int8 read 148 MB with a 44.1 kHz file and 87 MB with the same audio at
    16 kHz, against the task's 100 MB. Memory, not time: the two rows must agree."""
    import numpy as np
    import soundfile as sf
    from scipy.signal import resample_poly

    speech = bench.synthetic_speech(3.0).astype(np.float64) / 32768
    sf.write(tmp_path / "16k.wav", speech, 16000, subtype="PCM_16")
    sf.write(tmp_path / "44k.wav", resample_poly(speech, 441, 160), 44100, subtype="PCM_16")
    card = str(SHIPPED / "ge2e-int8.yaml")
    rss = {}
    for name in ("16k.wav", "44k.wav"):
        argv = ["bench", "--model", card, "-n", "1", "--no-torch", "--json"]
        assert main([*argv, "--audio", str(tmp_path / name)]) == 0
        (row,) = json.loads(capsys.readouterr().out)
        rss[name] = row["peak_rss_mb"]
    assert rss["44k.wav"] < rss["16k.wav"] + 15, rss


def test_bench_says_how_much_of_the_audio_it_timed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 0.3 s --audio failed every row, and the table's title still said "3.0 s
    utterance"; a longer one was cut to --seconds without a word."""
    import numpy as np
    import soundfile as sf

    speech = bench.synthetic_speech(5.0).astype(np.float64) / 32768
    sf.write(tmp_path / "short.wav", speech[:4800], 16000, subtype="PCM_16")
    sf.write(tmp_path / "long.wav", speech, 16000, subtype="PCM_16")
    card = str(SHIPPED / "ge2e-int8.yaml")
    argv = ["bench", "--model", card, "-n", "1", "--no-torch", "--audio"]
    assert main([*argv, str(tmp_path / "short.wav")]) == 1  # shorter than the model takes
    out = capsys.readouterr().out
    assert "speaker embedding, 0.3 s utterance" in out and "TooShort" in out, out
    assert main([*argv, str(tmp_path / "long.wav")]) == 0
    got = capsys.readouterr()
    assert "speaker embedding, 3.0 s utterance" in got.out
    assert "(--audio: timing its first 3 s of 5.0 s; --seconds sets how much)" in got.err
