"""The speaker benchmark scripts on bad input, as a researcher runs them by hand: a last line
on stderr naming the file or option, exit status 1 or 2, never a traceback."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("voxgate.embedding")
REPO = Path(__file__).resolve().parents[2]
SHIPPED_CARD = REPO / "daemon" / "voxgate" / "models" / "ge2e-int8.yaml"
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")


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
    (
        "bench_embedding.py",
        ["--data", "{tmp}/data", "--parity", "{tmp}/none.yaml", "--set", "vcc2018_eval"],
        "none.yaml",
    ),
    (
        "bench_embedding.py",
        ["--data", "{tmp}/data", "--set", "vcc2018_eval", "--parity", "{card}"],
        "vcc2018_eval",
    ),
    ("speaker_variants.py", ["--data", "{tmp}/data", "--out", "{tmp}/o"], "speaker_eval.py"),
    ("door_centre.py", ["--data", "{tmp}/data", "--out", "{tmp}/o"], "speaker_eval.py"),
    ("voice_groups.py", ["--data", "{tmp}/data"], "resemblyzer_ls, vcc2018_eval, fsdd"),
    ("speaker_trim_cost.py", ["--data", "{tmp}/data"], "vcc2018_eval"),
    ("embed_breakdown.py", ["--card", "{tmp}/none.yaml"], "none.yaml"),
    ("embed_breakdown.py", ["--cpu", "99999"], "--cpu"),
    ("embed_breakdown.py", ["--runs", "0"], "--runs"),
    ("embed_breakdown.py", ["--seconds", "0.2"], "--seconds"),
    ("noise_gate.py", ["--data", "{tmp}/data", "--sets", "fsdd"], "fsdd"),
    ("noise_gate.py", ["--data", "{tmp}/data", "--snrs", "loud"], "loud"),
    ("noise_gate.py", ["--data", "{tmp}/data", "--band-levels", "31"], "--floors"),
    ("pause_noise.py", ["--data", "{tmp}/data", "--sets", "fsdd"], "fsdd"),
    ("clip_gate.py", ["--data", "{tmp}/data", "--sets", "fsdd"], "fsdd"),
    ("clip_gate.py", ["--data", "{tmp}/data", "--gains", "2"], "--gains"),
    ("level_mode.py", ["--data", "{tmp}/data", "--sets", "fsdd"], "fsdd"),
    ("trim_quiet_start.py", ["--data", "{tmp}/data", "--sets", "fsdd"], "fsdd"),
    ("trim_quiet_start.py", ["--data", "{tmp}/data", "--against", "nosuchcommit"], "nosuchcommit"),
    ("windows_compare.py", ["--data", "{tmp}/data", "--set", "fsdd"], "enroll"),
    ("windows_compare.py", ["--data", "{tmp}/data", "--model", "{tmp}/none.yaml"], "none.yaml"),
    ("compare_eval_runs.py", ["{tmp}/none", "{tmp}/data"], "none"),
    ("compare_eval_runs.py", ["{tmp}/data", "{tmp}/data"], "report.json"),
]


@pytest.mark.parametrize(("script", "args", "named"), CASES)
def test_bad_input_is_one_line_not_a_traceback(
    no_protocol: Path, script: str, args: list[str], named: str
) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "daemon")}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script)]
        + [a.format(tmp=no_protocol, card=SHIPPED_CARD) for a in args],
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


@pytest.mark.parametrize("cache", [False, True])
def test_door_centre_on_an_interrupted_eval_or_without_the_sets(
    no_protocol: Path, cache: bool
) -> None:
    """speaker_eval.py's folders without their embedding cache (an interrupted run) ended in
    a StopIteration traceback; with the caches but no protocol sets under --data, in
    read_set's."""
    for name in ("vcc2018_eval", "fsdd", "speechcommands_v001_sample"):
        (no_protocol / "o" / f"{name}-int8").mkdir(parents=True)
        if cache:
            (no_protocol / "o" / f"{name}-int8" / "embeddings-m.npz").write_bytes(b"")
    env = {**os.environ, "PYTHONPATH": str(REPO / "daemon")}
    args = ["--data", str(no_protocol / "data"), "--out", str(no_protocol / "o")]
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "door_centre.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    named = "fsdd" if cache else "run benchmarks/speaker_eval.py"
    assert proc.stderr.startswith("door_centre.py: ") and named in proc.stderr, proc.stderr


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


def test_speaker_variants_shows_progress_while_it_embeds_the_cohort(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Embedding the 251 cohort recordings takes most of speaker_variants.py's ~50 s, and it
    printed nothing until the table came out."""
    import numpy as np
    import soundfile as sf

    from benchmarks.speaker_variants import cohort_embeddings
    from voxgate.embedding import load_embedder

    root = tmp_path / "resemblyzer_ls"
    (root / "a").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        sf.write(
            root / "a" / f"{i}.wav", (0.1 * rng.standard_normal(64000)).astype(np.float32), 16000
        )
    (root / "manifest.csv").write_text(
        "path,speaker\n" + "".join(f"a/{i}.wav,s{i}\n" for i in range(3))
    )
    short, long = cohort_embeddings(tmp_path, load_embedder(None))
    assert sorted(short) == ["s0", "s1", "s2"] and sorted(long) == ["s0", "s1", "s2"]
    err = capsys.readouterr().err
    assert "cohort resemblyzer_ls: 3/3 (100 %)" in err


def test_embed_breakdown_nodes_names_each_lstm_layer_and_the_float_peak(tmp_path: Path) -> None:
    """--nodes times the shipped int8 graph node by node: its three LSTM layers (the float
    first one and the two int8 ones) and a float peak to compare the first one's rate with."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "daemon")}
    script = REPO / "benchmarks" / "embed_breakdown.py"
    core = str(min(os.sched_getaffinity(0)))
    proc = subprocess.run(
        [sys.executable, str(script), "--runs", "2", "--cpu", core, "--nodes"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    nodes = next(i for i, line in enumerate(lines) if line.strip().startswith("per node"))
    rows = {line.split()[0]: line.split()[1] for line in lines[nodes + 1 :] if "ms" in line}
    assert rows.get("lstm0") == "LSTM", proc.stdout
    assert rows.get("lstm1_quant") == rows.get("lstm2_quant") == "DynamicQuantizeLSTM"
    assert "float peak: numpy 1024 x 1024 float32 product" in proc.stdout
    assert not list(tmp_path.iterdir())  # the profiler's file went with its temporary folder


def test_windows_compare_leaves_short_recordings_alone(shared_data: Path) -> None:
    """speechcommands' items (about 1 s each) are shorter than 2.4 s of speech: both window
    spacings cut the same windows, so nothing about them may change."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "daemon")}
    args = ["--data", str(shared_data), "--set", "speechcommands_v001_sample"]
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "windows_compare.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("speechcommands_v001_sample: 0/121 recordings get other windows")
    assert "min 1.0000" in line and "|max| 0.000," in line


def _compare(a: Path, b: Path) -> str:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "compare_eval_runs.py"), str(a), str(b)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "daemon")},
        timeout=120,
        check=True,
    )
    return proc.stdout


@needs_espeak
def test_compare_eval_runs_shows_a_recording_and_a_trial_that_moved(tmp_path: Path) -> None:
    """Two runs of one set, as two machines leave them: identical runs read as such, and a
    run where one embedding turned and one trial crossed the threshold shows both."""
    from tests.integration.test_eval_cli import synth_set
    from voxgate.cli import main

    run_a, run_b = tmp_path / "a" / "voices", tmp_path / "b" / "voices"
    assert main(["eval", str(synth_set(tmp_path / "set")), "--out", str(run_a)]) == 0
    same = _compare(run_a.parent, run_a.parent)
    assert "cosine A-B     min 1.000000" in same and " 0 on the other side" in same

    shutil.copytree(run_a, run_b)
    (cache,) = run_b.glob("embeddings-*.npz")
    with np.load(cache) as data:
        emb, meta = data["emb"].copy(), data["meta"]
    turned = np.roll(emb[0], 1)
    emb[0] = turned
    with open(cache, "wb") as f:
        np.savez(f, emb=emb, meta=meta)
    threshold = json.loads((run_b / "report.json").read_text())["systems"]["backend"]["threshold"]
    with open(run_b / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    row = next(r for r in rows if r["backend"])  # a trial the quality gate scored
    row["backend"] = f"{threshold + (-0.2 if float(row['backend']) >= threshold else 0.2):.6f}"
    with open(run_b / "scores.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    moved = _compare(run_a, run_b)
    with np.load(next(run_a.glob("embeddings-*.npz"))) as data:
        was = data["emb"][0]
    cos = float(was @ turned / (np.linalg.norm(was) * np.linalg.norm(turned)))
    assert f"min {cos:.6f}" in moved and cos < 0.9
    assert " 1 on the other side" in moved
