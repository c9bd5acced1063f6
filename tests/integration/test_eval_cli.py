"""`voxgate eval` end to end: on a real set when ../shared/data is present, and always on a small
set of espeak-ng voices (each voice variant plays one "speaker")."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import voxgate
from voxgate.cli import main

pytest.importorskip("voxgate.embedding")
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")

VOICES = ["en+m3", "en+f2", "en-us+m2", "en+whisper"]


def _digits(rng: np.random.Generator) -> str:
    return " ".join(str(d) for d in rng.integers(0, 10, 4))


def synth_set(root: Path, takes: int = 3, tests: int = 3) -> Path:
    """A protocol folder of espeak-ng digit strings; a faint noise floor like a microphone."""
    rng = np.random.default_rng(5)
    manifest, enroll, trials = [], [], []
    for v, voice in enumerate(VOICES):
        spk = f"spk{v}"
        (root / "audio" / spk).mkdir(parents=True, exist_ok=True)
        for i in range(takes + tests):
            rel = f"audio/{spk}/{i}.wav"
            raw = root / "raw.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), _digits(rng)], check=True)
            audio, rate = sf.read(raw)
            audio = audio + rng.normal(0, 3e-4, len(audio))
            sf.write(root / rel, audio, rate)
            manifest.append((rel, spk, ""))
            (enroll if i < takes else trials).append((spk, rel))
    (root / "raw.wav").unlink()
    with open(root / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "speaker", "text"), *manifest])
    with open(root / "enroll.csv", "w", newline="") as f:
        csv.writer(f).writerows([("model", "path"), *enroll])
    rows = [(m, rel, int(m == spk)) for spk, rel in trials for m in sorted({e[0] for e in enroll})]
    with open(root / "trials.csv", "w", newline="") as f:
        csv.writer(f).writerows([("model", "path", "target"), *rows])
    return root


def _check_outputs(out: Path, n_trials: int) -> dict:
    report = json.loads((out / "report.json").read_text())
    assert report["trials"] == n_trials
    with open(out / "scores.csv") as f:
        assert len(list(csv.DictReader(f))) == n_trials
    png = out / "det.png"
    if png.exists():  # matplotlib is a dev extra
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(out.glob("embeddings-*.npz"))
    for system in ("cosine", "backend"):
        s = report["systems"][system]
        lo, hi = s["eer_ci95_percent"]
        assert lo <= s["eer_percent"] <= hi
    return report


@needs_espeak
def test_eval_on_espeak_voices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = synth_set(tmp_path / "set")
    out = tmp_path / "out"
    assert main(["eval", str(root), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "EER" in text and "voxgate back end" in text
    report = _check_outputs(out, 12 * 4)
    # Four clearly different synthetic voices: the back end must separate them well.
    assert report["systems"]["backend"]["eer_percent"] < 15
    assert report["systems"]["backend"]["threshold"] > 0


@pytest.mark.shared
def test_eval_on_fsdd(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "fsdd"
    assert main(["eval", str(shared_data / "fsdd"), "--out", str(out)]) == 0
    report = _check_outputs(out, 1692)
    assert report["target_trials"] == 282
    # Far better than chance on real speech; the measured figures live in the docs.
    assert report["systems"]["backend"]["eer_percent"] < 8
    assert report["systems"]["cosine"]["eer_percent"] < 8
    # Run again: the embedding cache is reused and gives the same scores.
    first = (out / "scores.csv").read_text()
    assert main(["eval", str(shared_data / "fsdd"), "--out", str(out)]) == 0
    assert (out / "scores.csv").read_text() == first


def test_eval_bad_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "manifest.csv").write_text("path,speaker,text\n")
    assert main(["eval", str(tmp_path)]) == 1
    assert "enroll.csv" in capsys.readouterr().err


@needs_espeak
def test_corrupt_recordings_are_counted_and_do_not_stop_the_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = synth_set(tmp_path / "set", takes=2, tests=2)
    for take in (root / "audio" / "spk1").glob("[01].wav"):  # spk1's two enrollment takes
        take.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    test_file = root / "audio" / "spk2" / "2.wav"
    good = test_file.read_bytes()
    test_file.write_bytes(b"not audio")  # and one test recording
    out = tmp_path / "out"
    assert main(["eval", str(root), "--out", str(out)]) == 0
    report = _check_outputs(out, 8 * 4)  # every trial still counts
    assert "no enrollment take of spk1" in caplog.text
    with open(out / "scores.csv") as f:
        spk1 = [r for r in csv.DictReader(f) if r["model"] == "spk1"]
    assert spk1 and all(float(r["backend"]) == float("-inf") for r in spk1)
    assert set(report["embedding_errors"]) == {
        "audio/spk1/0.wav",
        "audio/spk1/1.wav",
        "audio/spk2/2.wav",
    }
    # The file fixed, the same --out again: it is read now (a read error is not cached).
    test_file.write_bytes(good)
    assert main(["eval", str(root), "--out", str(out)]) == 0
    report = _check_outputs(out, 8 * 4)
    assert set(report["embedding_errors"]) == {"audio/spk1/0.wav", "audio/spk1/1.wav"}
    with open(out / "scores.csv") as f:
        fixed = [r for r in csv.DictReader(f) if r["path"] == "audio/spk2/2.wav"]
    scored = [r for r in fixed if r["model"] != "spk1"]  # spk1 has no usable enrollment
    assert len(scored) == 3 and all(np.isfinite(float(r["cosine"])) for r in scored)


@needs_espeak
def test_a_recording_read_in_part_is_a_warning_of_a_run_that_succeeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A FLAC cut short (an interrupted copy) among the set: eval reads what is there and goes
    on, and succeeds; its line said "error: ... read error after 0.6 s", as if eval had
    failed. Errors of the command itself stay errors (test_eval_bad_folder)."""
    root = synth_set(tmp_path / "set", takes=2, tests=2)
    cut = root / "audio" / "spk2" / "2.wav"  # libsndfile goes by the header, not the name
    audio, rate = sf.read(cut)
    flac = io.BytesIO()
    sf.write(flac, audio, rate, format="FLAC")
    cut.write_bytes(flac.getvalue()[: len(flac.getvalue()) // 2])
    capsys.readouterr()
    assert main(["eval", str(root), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "read error after" in line]
    assert len(said) == 1 and said[0].startswith(f"warning: {cut}: read error after "), err
    assert said[0].endswith("; using what was read before it"), said
    assert not any(line.startswith("error:") for line in err.splitlines()), err


def _rewrite(path: Path, edit: Callable[[str], str], bom: bool = False) -> None:
    text = edit(path.read_text(encoding="utf-8"))
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode())


@needs_espeak
def test_spreadsheet_csv_and_any_model_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A BOM (as spreadsheets save CSV) was read into the first column's name ('needs
    columns path, speaker'); a model label longer than 64 characters, or two labels that
    are one user name after normalization, stopped the run with a StoreError traceback."""
    root = synth_set(tmp_path / "set", takes=2, tests=1)
    long = "speaker-" + "x" * 70

    def relabel(text: str) -> str:
        lines = text.splitlines(keepends=True)
        return "".join(
            lines[:1]
            + [
                long + ln[4:] if ln.startswith("spk1,") else "spk0 " + ln[4:]
                if ln.startswith("spk2,") else ln
                for ln in lines[1:]
            ]
        )  # fmt: skip

    _rewrite(root / "manifest.csv", lambda t: t, bom=True)
    for name in ("enroll.csv", "trials.csv"):
        _rewrite(root / name, relabel, bom=True)
    out = tmp_path / "out"
    assert main(["eval", str(root), "--out", str(out)]) == 0, capsys.readouterr().err
    report = _check_outputs(out, 4 * 4)
    assert report["models"] == 4
    with open(out / "scores.csv") as f:
        models = {r["model"] for r in csv.DictReader(f)}
    assert models == {"spk0", long, "spk0 ", "spk3"}


def test_trials_of_one_class_are_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only targets or only non-targets: EER is undefined; it was an IndexError traceback."""
    (tmp_path / "enroll.csv").write_text("model,path\ns1,a.wav\n")
    for target in ("1", "0"):
        speaker = "s1" if target == "1" else "s2"  # as the target says
        (tmp_path / "manifest.csv").write_text(f"path,speaker\na.wav,s1\nb.wav,{speaker}\n")
        (tmp_path / "trials.csv").write_text(f"model,path,target\ns1,b.wav,{target}\n")
        assert main(["eval", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err
        assert "trials.csv: needs both target (1) and non-target (0) trials" in err
        assert "Traceback" not in err


def _noise_set(root: Path, seed: int, second_impostor: bool = False) -> Path:
    """Three 1.5 s recordings of coloured noise; the seed makes the audio, not the names.
    second_impostor: a fourth, w (speaker s3), as a second non-target trial, so that one
    impostor trial is still scored when z is made unusable."""
    rng = np.random.default_rng(seed)
    (root / "a").mkdir(parents=True)
    for name in ("x", "y", "z", "w"):
        sig = np.cumsum(rng.standard_normal(24000))
        sig = sig - np.convolve(sig, np.ones(50) / 50, mode="same")
        sf.write(
            root / "a" / f"{name}.wav", (0.3 * sig / np.abs(sig).max()).astype(np.float32), 16000
        )
    (root / "manifest.csv").write_text("path,speaker\na/x.wav,s1\na/y.wav,s1\na/z.wav,s2\n")
    (root / "enroll.csv").write_text("model,path\nm1,a/x.wav\n")
    (root / "trials.csv").write_text("model,path,target\nm1,a/y.wav,1\nm1,a/z.wav,0\n")
    if second_impostor:
        with open(root / "manifest.csv", "a") as f:
            f.write("a/w.wav,s3\n")
        with open(root / "trials.csv", "a") as f:
            f.write("m1,a/w.wav,0\n")
    else:
        (root / "a" / "w.wav").unlink()
    return root


def test_embedding_cache_is_not_reused_for_other_audio(tmp_path: Path) -> None:
    """The cache was keyed by relative path only: a second copy of a set with other audio
    under the same names (a noisier version, say) run with the same --out (the default,
    eval-<folder name>, is the same for both) was scored with the first set's embeddings.
    Found by evaluating a white-noise copy of a fsdd subset: it printed fsdd's EER."""
    first = _noise_set(tmp_path / "v1" / "set", seed=1)
    second = _noise_set(tmp_path / "v2" / "set", seed=2)
    shared, fresh = tmp_path / "shared-out", tmp_path / "fresh-out"
    assert main(["eval", str(first), "--out", str(shared)]) == 0
    first_scores = (shared / "scores.csv").read_text()
    assert main(["eval", str(second), "--out", str(shared)]) == 0
    assert main(["eval", str(second), "--out", str(fresh)]) == 0
    assert (fresh / "scores.csv").read_text() != first_scores  # the audio does differ
    assert (shared / "scores.csv").read_text() == (fresh / "scores.csv").read_text()
    # A file replaced in place is embedded again too.
    shutil.copy(first / "a" / "z.wav", second / "a" / "z.wav")
    assert main(["eval", str(second), "--out", str(shared)]) == 0
    assert main(["eval", str(second), "--out", str(tmp_path / "fresh2")]) == 0
    assert (shared / "scores.csv").read_text() == (tmp_path / "fresh2" / "scores.csv").read_text()


def test_embedding_cache_sees_other_audio_of_the_same_size_and_time(tmp_path: Path) -> None:
    """The cache was keyed by each file's size and modification time: a file replaced by
    other audio of the same length with its time kept (`cp -p`, `touch -r`, `rsync -t`, a
    tar extract) was scored with the old embedding. Found by copying one fsdd-made 1 s WAV
    over another of the same size and restoring its time with `touch -r`."""
    root = _noise_set(tmp_path / "set", seed=1)
    out = tmp_path / "out"
    assert main(["eval", str(root), "--out", str(out)]) == 0
    z, x = root / "a" / "z.wav", root / "a" / "x.wav"
    before = z.stat()
    assert x.stat().st_size == before.st_size
    shutil.copyfile(x, z)  # other audio, the same size
    os.utime(z, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert main(["eval", str(root), "--out", str(out)]) == 0
    assert main(["eval", str(root), "--out", str(tmp_path / "fresh")]) == 0
    assert (out / "scores.csv").read_text() == (tmp_path / "fresh" / "scores.csv").read_text()


def test_embedding_cache_from_before_the_content_key_is_made_again(tmp_path: Path) -> None:
    """A cache written by a voxgate that keyed files by size and modification time
    ("stamps") is neither trusted nor a crash: every recording is embedded again."""
    root = _noise_set(tmp_path / "set", seed=1)
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    assert main(["eval", str(root), "--out", str(fresh)]) == 0

    def old_layout(meta: dict, emb: np.ndarray) -> tuple[dict, np.ndarray]:
        stamps = []
        for rec in meta["recordings"]:
            st = (root / rec).stat()
            stamps.append(f"{st.st_size}:{st.st_mtime_ns}")
        meta = {k: v for k, v in meta.items() if k != "file_sha256"}
        # The embeddings swapped round: reused, they would change the scores.
        return {**meta, "stamps": stamps}, emb[::-1].copy()

    assert main(["eval", str(root), "--out", str(out)]) == 0
    _rewrite_cache(out, old_layout)
    assert main(["eval", str(root), "--out", str(out)]) == 0
    assert (out / "scores.csv").read_text() == (fresh / "scores.csv").read_text()


def _rewrite_cache(out: Path, edit: Callable[[dict, np.ndarray], tuple[dict, np.ndarray]]) -> None:
    (cache,) = out.glob("embeddings-*.npz")
    with np.load(cache) as data:
        meta, emb = json.loads(str(data["meta"])), data["emb"]
    meta, emb = edit(meta, emb)
    np.savez(cache, emb=emb, meta=np.array(json.dumps(meta)))


def test_embedding_cache_of_another_layout_is_ignored_whole(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache whose entries do not fit (quality records of another layout, one list longer
    than another) ended in a TypeError traceback, or was said to be 'ignored' after its
    first entries had been taken in. Found by editing the .npz cache of a fsdd subset."""
    root = _noise_set(tmp_path / "set", seed=1)
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    assert main(["eval", str(root), "--out", str(fresh)]) == 0
    want = (fresh / "scores.csv").read_text()

    def other_quality(meta: dict, emb: np.ndarray) -> tuple[dict, np.ndarray]:
        meta["quality"] = [{"duration_s": q["duration_s"]} for q in meta["quality"]]
        return meta, emb

    def one_more_recording(meta: dict, emb: np.ndarray) -> tuple[dict, np.ndarray]:
        # The first row now holds another recording's embedding; the lists' lengths differ.
        emb = np.concatenate([emb[::-1], emb[:1]])
        return {**meta, "recordings": [*meta["recordings"], "a/w.wav"]}, emb[:-2]

    for edit in (other_quality, one_more_recording):
        shutil.rmtree(out, ignore_errors=True)
        assert main(["eval", str(root), "--out", str(out)]) == 0
        _rewrite_cache(out, edit)
        caplog.clear()
        assert main(["eval", str(root), "--out", str(out)]) == 0
        assert "embedding cache ignored: its entries do not fit" in caplog.text
        assert (out / "scores.csv").read_text() == want


@pytest.mark.parametrize(
    "junk",
    [b"this is junk\n", bytes(range(256)) * 2, b"", b"PK\x03\x04truncated"],
    ids=["text", "binary", "empty", "truncated-zip"],
)
def test_a_junk_embedding_cache_is_named_in_plain_words(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, junk: bytes
) -> None:
    """A junk or damaged cache file was reported with numpy's error text: "embedding cache
    ignored (This file contains pickled (object) data. If you trust the file you can load it
    unsafely using the `allow_pickle=` keyword argument or `pickle.load()`.)". Found by
    writing text over the cache of a run on a set cut from fsdd."""
    root = _noise_set(tmp_path / "set", seed=1)
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    assert main(["eval", str(root), "--out", str(fresh)]) == 0
    assert main(["eval", str(root), "--out", str(out)]) == 0
    (cache,) = out.glob("embeddings-*.npz")
    cache.write_bytes(junk)
    caplog.clear()
    assert main(["eval", str(root), "--out", str(out)]) == 0
    (warning,) = [r.getMessage() for r in caplog.records if "embedding cache" in r.getMessage()]
    assert warning == (
        f"{cache}: embedding cache unreadable (damaged, or not a file voxgate eval wrote); "
        "every recording is embedded again"
    )
    assert (out / "scores.csv").read_text() == (fresh / "scores.csv").read_text()


def test_scores_csv_is_utf8_whatever_the_locale(tmp_path: Path) -> None:
    """The protocol is read as UTF-8, but scores.csv was written in the locale's encoding:
    under an ASCII locale a model label such as 'Jörg' ended in a UnicodeEncodeError
    traceback after the whole set had been embedded."""
    root = _noise_set(tmp_path / "set", seed=1)
    for name in ("enroll.csv", "trials.csv"):
        path = root / name
        path.write_text(path.read_text().replace("m1,", "Jörg 日本,"), encoding="utf-8")
    env = {**os.environ, "LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    env["PYTHONPATH"] = str(Path(voxgate.__file__).parents[1])
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "voxgate", "eval", str(root), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((out / "scores.csv").read_text(encoding="utf-8").splitlines()))
    assert {r["model"] for r in rows} == {"Jörg 日本"}


@pytest.mark.parametrize(("speakers", "per_speaker"), [(2, 6), (12, 1)])
def test_build_cohort_from_too_little_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], speakers: int, per_speaker: int
) -> None:
    """Fewer than 10 speakers (but 10 recordings), or speakers with too little audio for
    the calibration's pieces, ended in a CohortError traceback, the first only after every
    recording had been embedded. Found with --build-cohort on a copy of fsdd without
    enroll.csv (6 speakers)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "set"
    (root / "a").mkdir(parents=True)
    rows = []
    for s in range(speakers):
        for i in range(per_speaker):
            rel = f"a/{s}-{i}.wav"
            sf.write(root / rel, (0.1 * rng.standard_normal(80000)).astype(np.float32), 16000)
            rows.append(f"{rel},spk{s}\n")
    (root / "manifest.csv").write_text("path,speaker\n" + "".join(rows))
    out = tmp_path / "cohort"
    assert main(["eval", str(root), "--build-cohort", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"error: {root}: " in err and "cohort" in err and "Traceback" not in err
    assert not out.exists()


def test_report_is_strict_json_when_no_impostor_trial_could_be_scored(tmp_path: Path) -> None:
    """Every non-target recording unreadable: the threshold this set would need came out as
    NaN and report.json held a bare NaN, which strict JSON readers (jq, browsers) refuse.
    Found with a fsdd subset whose impostor trials all named a missing file."""
    root = _noise_set(tmp_path / "set", seed=1)
    (root / "manifest.csv").write_text((root / "manifest.csv").read_text() + "a/gone.wav,s3\n")
    # One impostor trial still scored: with none, the run is refused (the next test).
    (root / "trials.csv").write_text(
        "model,path,target\nm1,a/y.wav,1\nm1,a/gone.wav,0\nm1,a/z.wav,0\n"
    )
    out = tmp_path / "out"
    assert main(["eval", str(root), "--out", str(out)]) == 0

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    report = json.loads((out / "report.json").read_text(), parse_constant=refuse)
    assert report["systems"]["backend"]["threshold_for_target_fmr_on_this_set"] is None
    assert report["embedding_errors"].keys() == {"a/gone.wav"}


@pytest.mark.parametrize(
    ("trials", "which", "named"),
    [
        ("m1,a/y.wav,1\nm1,a/gone.wav,0\n", "non-target", "a/gone.wav"),  # EER 0.00 % printed
        ("m1,a/lost.wav,1\nm1,a/z.wav,0\n", "target", "a/lost.wav"),
        # EER 50.00 %, CI 50.00-50.00 was printed
        ("m1,a/lost.wav,1\nm1,a/gone.wav,0\n", "target", "a/lost.wav"),
    ],
)
def test_no_scored_trial_of_one_class_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], trials: str, which: str, named: str
) -> None:
    """Unscorable trials count as no match, so with every impostor trial unscorable (their
    recordings missing) the EER came out 0.00 %, and with every trial unscorable 50.00 % with
    an interval of 50.00-50.00: figures of no trial at all. Found with an fsdd subset whose
    test recordings were all deleted."""
    root = _noise_set(tmp_path / "set", seed=1)
    manifest = root / "manifest.csv"
    manifest.write_text(manifest.read_text() + "a/lost.wav,s1\na/gone.wav,s3\n")
    (root / "trials.csv").write_text("model,path,target\n" + trials)
    out = tmp_path / "out"
    assert main(["eval", str(root), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"trials.csv: no {which} trial could be scored" in err
    assert named in err and "Traceback" not in err
    assert not (out / "report.json").exists()
    assert list(out.glob("embeddings-*.npz"))  # what was embedded is kept for the next run


def test_a_thin_protocol_says_its_figures_mean_little(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With 2 target and 2 non-target trials (a set cut from fsdd) eval printed "EER 0.00 %
    (95 % CI 0.00-0.00)", which reads as certainty. Now the summary and report.json say the
    trials are too few, and the interval is the binomial one for that count."""
    root = _noise_set(tmp_path / "set", seed=1)
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["eval", str(root), "--out", str(out)]) == 0
    summary = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    note = report["too_few_trials"]
    assert note.startswith("1 target and 1 non-target trials of 2 speaker(s) are too few")
    assert f"note: {note}" in summary
    for s in report["systems"].values():
        lo, hi = s["eer_ci95_percent"]
        assert lo <= s["eer_percent"] <= hi and hi - lo >= 90  # 1 trial a class: anything
        assert s["eer_ci95_method"] != "speaker bootstrap"


def test_a_fixed_threshold_is_not_reported_as_the_target_fmr_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With `speaker.threshold: 0.7` the summary said "at threshold 0.700 (target FMR
    0.001)", as if 0.700 were the threshold calibrated for 1/1000 (0.559 for the shipped
    int8 model). Found running `voxgate eval` on a fsdd subset with such a config."""
    root = _noise_set(tmp_path / "set", seed=1)
    cfg = tmp_path / "fixed.yaml"
    cfg.write_text("speaker:\n  threshold: 0.7\n")
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["eval", str(root), "--out", str(out), "-c", str(cfg)]) == 0
    summary = capsys.readouterr().out
    (line,) = [x for x in summary.splitlines() if "at threshold" in x]
    assert "at threshold 0.700 (fixed: speaker.threshold)" in line and "target FMR" not in line
    report = json.loads((out / "report.json").read_text())
    assert report["fixed_threshold"] == 0.7 and report["systems"]["backend"]["threshold"] == 0.7
    assert main(["eval", str(root), "--out", str(out)]) == 0  # derived: as before
    summary = capsys.readouterr().out
    assert "(target FMR 0.001)" in summary and "speaker.threshold" not in summary
    assert json.loads((out / "report.json").read_text())["fixed_threshold"] is None


def test_a_set_whose_audio_is_all_missing_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The protocol copied without its audio folder (or a broken symlink to it): every
    recording unreadable, then 'ValueError: need at least one array to stack' from saving
    an empty embedding cache. Found by running eval on a copy of a set's CSV files alone."""
    root = _noise_set(tmp_path / "set", seed=1)
    shutil.rmtree(root / "a")
    assert main(["eval", str(root), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: {root}: none of the 3 recordings could be read")
    assert "a/x.wav: no such file" in last


def _cohort_pool(root: Path, samples: int) -> Path:
    """A manifest-only set (no trials) of 12 noise 'speakers', one recording each."""
    rng = np.random.default_rng(0)
    (root / "a").mkdir(parents=True)
    for s in range(12):
        noise = (0.1 * rng.standard_normal(samples)).astype(np.float32)
        sf.write(root / f"a/{s}.wav", noise, 16000)
    (root / "manifest.csv").write_text(
        "path,speaker\n" + "".join(f"a/{s}.wav,spk{s}\n" for s in range(12))
    )
    return root


def test_build_cohort_into_a_file_fails_before_embedding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--build-cohort DIR where DIR is a file: the error came only after every recording had
    been embedded (12 s for resemblyzer_ls here, minutes on a Pi), and said 'File exists'."""
    root = _cohort_pool(tmp_path / "set", samples=80000)
    taken = tmp_path / "cohort"
    taken.write_text("a file")
    assert main(["eval", str(root), "--build-cohort", str(taken)]) == 1
    err = capsys.readouterr().err
    assert "cohort set:" not in err  # no recording was embedded
    assert err.strip().splitlines()[-1] == f"error: {taken}: not a folder"
    assert taken.read_text() == "a file"


def test_built_cohort_says_where_it_is_and_how_to_use_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Dropping in a model (docs/models.md): eval says no cohort is shipped for it and to
    build one with --build-cohort DIR. The build printed neither the file it wrote nor the
    setting that uses it, and speaker.cohort set to that DIR failed with 'cohort file
    missing: DIR.json', a file nobody wrote."""
    root = _cohort_pool(tmp_path / "pool", samples=220000)
    folder = tmp_path / "cohort"
    assert main(["eval", str(root), "--build-cohort", str(folder)]) == 0
    (npz,) = folder.glob("*.npz")
    assert f"speaker.cohort: {npz}" in capsys.readouterr().out
    cfg = tmp_path / "voxgate.yaml"
    cfg.write_text(f"speaker:\n  cohort: {folder}\n")
    test_set = _noise_set(tmp_path / "set", seed=1)
    assert main(["eval", str(test_set), "-c", str(cfg), "--out", str(tmp_path / "o")]) == 1
    assert f"{folder}: a folder; set speaker.cohort to the file {npz}" in capsys.readouterr().err
    cfg.write_text(f"speaker:\n  cohort: {npz}\n")
    assert main(["eval", str(test_set), "-c", str(cfg), "--out", str(tmp_path / "o")]) == 0


def test_build_cohort_does_not_replace_a_cohort_without_being_told(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--build-cohort into a folder that already held the model's cohort overwrote its .npz
    and .json without a word (found building resemblyzer_ls's cohort twice into one folder,
    the second time with --top-k 50). Now it stops before embedding, names the files and
    the flag; with --replace it builds and says what it replaced."""
    root = _cohort_pool(tmp_path / "pool", samples=220000)
    folder = tmp_path / "cohort"
    assert main(["eval", str(root), "--build-cohort", str(folder)]) == 0
    npz, meta = sorted(folder.glob("*.npz")), sorted(folder.glob("*.json"))
    assert len(npz) == 1 and len(meta) == 1
    first = {p: p.read_bytes() for p in (*npz, *meta)}
    capsys.readouterr()
    assert main(["eval", str(root), "--build-cohort", str(folder), "--top-k", "5"]) == 1
    err = capsys.readouterr().err
    assert "cohort pool:" not in err  # refused before any recording was embedded
    last = err.strip().splitlines()[-1]
    assert str(npz[0]) in last and str(meta[0]) in last and "--replace" in last, last
    assert {p: p.read_bytes() for p in first} == first
    args = ["eval", str(root), "--build-cohort", str(folder), "--top-k", "5", "--replace"]
    assert main(args) == 0
    assert f"replaced {npz[0]} and {meta[0]}" in capsys.readouterr().out
    assert json.loads(meta[0].read_text())["top_k"] == 5


@pytest.mark.parametrize("flags", [["--replace"], ["--top-k", "5"], ["--replace", "--top-k", "5"]])
def test_cohort_flags_without_build_cohort_are_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    """--replace and --top-k only mean something with --build-cohort. Without it they were
    ignored and the set was evaluated, so `eval SET --top-k 50` (meant to build a cohort)
    looked like it worked. Now: exit 2, naming the flags, before anything is read."""
    test_set = _noise_set(tmp_path / "set", seed=1)
    out = tmp_path / "o"
    assert main(["eval", str(test_set), "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    named = [f for f in flags if f.startswith("--")]
    assert f"{' and '.join(named)} only with --build-cohort DIR" in err, err
    assert not out.exists()


def test_built_cohort_line_works_from_any_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/speaker-verification.md's rebuild, run from the checkout, printed the setting
    with the path as given, 'speaker.cohort: models/cohort/ge2e-...npz': pasted into a
    config, it names a file relative to wherever the daemon runs (systemd: /)."""
    root = _cohort_pool(tmp_path / "pool", samples=220000)
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "pool", "--build-cohort", "cohort"]) == 0
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if "speaker.cohort:" in ln]
    printed = Path(line.split("speaker.cohort:", 1)[1].strip())
    assert printed.is_absolute() and printed.is_file(), line
    assert printed == next((tmp_path / "cohort").glob("*.npz"))
    assert root.exists()


def test_embedding_cache_is_not_reused_under_other_vad_settings(tmp_path: Path) -> None:
    """The cache keeps each recording's quality (net speech, SNR), which the VAD settings
    decide, but was keyed by model only: rerun with another `vad:` config and the same --out,
    the quality gate's figures were the first run's. Found on speechcommands_v001_sample:
    retry 4.8 % printed again where a fresh run with aggressiveness 0 gives 1.2 %."""
    from voxgate.commands.bench import synthetic_speech

    root = _noise_set(tmp_path / "set", seed=1)
    for i, name in enumerate("xyz"):  # voiced bursts and pauses: the VAD has work to do
        sf.write(root / "a" / f"{name}.wav", synthetic_speech(1.5 + i, seed=i), 16000)
    cfg = tmp_path / "vad.yaml"
    cfg.write_text("vad:\n  aggressiveness: 0\n")
    shared, fresh = tmp_path / "shared-out", tmp_path / "fresh-out"
    assert main(["eval", str(root), "--out", str(shared)]) == 0
    first = json.loads((shared / "report.json").read_text())
    assert main(["eval", str(root), "--out", str(shared), "-c", str(cfg)]) == 0
    assert main(["eval", str(root), "--out", str(fresh), "-c", str(cfg)]) == 0
    again, want = (json.loads((d / "report.json").read_text()) for d in (shared, fresh))
    keys = ("test_net_speech_s_median", "test_snr_db_median")
    assert [first[k] for k in keys] != [want[k] for k in keys]  # the settings do matter here
    assert [again[k] for k in keys] == [want[k] for k in keys]


def test_readings_cached_by_an_older_gate_are_made_again(tmp_path: Path) -> None:
    """The cache keeps each recording's quality reading. When the gate's way of reading
    changed (quality.READING: its VAD now hears quiet audio raised), a cache from before it
    gave the old readings again: the gate's figures of the old release under the new one.
    Now those readings are made again from the audio, and the embeddings are kept."""
    from voxgate.commands.bench import synthetic_speech

    root = _noise_set(tmp_path / "set", seed=1)
    for i, name in enumerate("xyz"):  # voiced bursts and pauses: the VAD has work to do
        sf.write(root / "a" / f"{name}.wav", synthetic_speech(1.5 + i, seed=i), 16000)
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    assert main(["eval", str(root), "--out", str(fresh)]) == 0
    assert main(["eval", str(root), "--out", str(out)]) == 0

    def older_gate(meta: dict, emb: np.ndarray) -> tuple[dict, np.ndarray]:
        meta.pop("quality_reading")
        for q in meta["quality"]:
            q.update(speech_s=0.1, snr_db=-3.0)  # what another reading might have said
        return meta, emb

    _rewrite_cache(out, older_gate)
    assert main(["eval", str(root), "--out", str(out)]) == 0
    again, want = (json.loads((d / "report.json").read_text()) for d in (out, fresh))
    keys = ("test_net_speech_s_median", "test_snr_db_median", "gate_too_little_speech")
    assert [again[k] for k in keys] == [want[k] for k in keys]
    assert (out / "scores.csv").read_text() == (fresh / "scores.csv").read_text()
    (cache,) = out.glob("embeddings-*.npz")
    with np.load(cache) as data:
        assert "quality_reading" in json.loads(str(data["meta"]))


def test_embedding_cache_is_not_reused_under_other_windowing(tmp_path: Path) -> None:
    """The cache (and the cohort tie) covered the card's trim but not its windows: after a
    change of `windowing.hop`, a rerun with the same --out scored the old windows'
    embeddings."""
    from voxgate.commands.bench import synthetic_speech
    from voxgate.embedding import default_card_path, load_card, load_embedder
    from voxgate.evaluation import EmbeddingCache

    root = _noise_set(tmp_path / "set", seed=1)
    sf.write(root / "a" / "x.wav", synthetic_speech(4.5), 16000)  # several windows
    card = default_card_path()
    other = tmp_path / card.name
    other.write_text(card.read_text().replace("  hop: 160\n", "  hop: 40\n"))
    model = load_card(card).model.file
    (tmp_path / model).symlink_to(card.parent / model)
    assert load_card(other).windowing.hop == 40
    cache_file = tmp_path / "embeddings.npz"

    def embedding(c: Path) -> np.ndarray:
        cache = EmbeddingCache(load_embedder(c), root, cache_file=cache_file)
        cache.fill(["a/x.wav"], lambda done, total: None)
        cache.save()
        emb = cache.get("a/x.wav")
        assert emb is not None
        return emb

    shipped, changed = embedding(card), embedding(other)
    assert float(shipped @ changed) < 0.9999  # the windows do change the embedding here
    fresh = EmbeddingCache(load_embedder(other), root)
    fresh.fill(["a/x.wav"], lambda done, total: None)
    assert np.array_equal(changed, fresh.get("a/x.wav"))


def test_embedding_errors_are_reported_again_from_the_cache(tmp_path: Path) -> None:
    """A recording too short to embed is cached as 'no embedding' and still scores -inf on
    the next run with the same --out, but that run's report.json said "embedding_errors": {}
    (found by running eval twice on a fsdd subset with a header-only WAV among its trials)."""
    root = _noise_set(tmp_path / "set", seed=1, second_impostor=True)
    sf.write(root / "a" / "z.wav", np.zeros(4800, np.float32), 16000)  # 0.3 s: too short
    out = tmp_path / "out"
    reports = []
    for _ in range(2):
        assert main(["eval", str(root), "--out", str(out)]) == 0
        reports.append(json.loads((out / "report.json").read_text()))
    assert set(reports[0]["embedding_errors"]) == {"a/z.wav"}
    assert reports[1]["embedding_errors"] == reports[0]["embedding_errors"]


def test_the_summary_names_recordings_without_an_embedding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A protocol file that is missing (or too short) left the printed summary as if every
    recording had been scored: the first run logs one warning among the progress lines, a
    second run with the same --out (cached) says nothing at all, and the figures then rest
    on fewer trials than the header counts (found in the walkthrough with one fsdd
    enrollment file renamed away)."""
    root = _noise_set(tmp_path / "set", seed=1, second_impostor=True)
    sf.write(root / "a" / "z.wav", np.zeros(4800, np.float32), 16000)  # 0.3 s: too short
    out = tmp_path / "out"
    for _ in range(2):
        assert main(["eval", str(root), "--out", str(out)]) == 0
        summary = capsys.readouterr().out
        assert "1 recording(s) without an embedding" in summary, summary
        assert "a/z.wav" in summary and "report.json" in summary, summary


def test_a_cohort_file_that_is_not_there_is_named_as_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """speaker.cohort: /x/typo.npz (a typo) was reported as 'cohort file missing:
    /x/typo.json', a file the user never named."""
    cfg = tmp_path / "voxgate.yaml"
    missing = tmp_path / "nope" / "typo.npz"
    cfg.write_text(f"speaker:\n  cohort: {missing}\n")
    root = _noise_set(tmp_path / "set", seed=1)
    assert main(["eval", str(root), "-c", str(cfg), "--out", str(tmp_path / "o")]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"error: cohort file missing: {missing}"


def test_report_json_names_the_det_plot_it_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The DET plot was drawn after report.json had been written: the printed summary (and
    --json) named det.png, report.json did not."""
    pytest.importorskip("matplotlib")
    root = _noise_set(tmp_path / "set", seed=1)
    out = tmp_path / "out"
    assert main(["eval", str(root), "--out", str(out)]) == 0
    assert f"DET curve: {out / 'det.png'}" in capsys.readouterr().out
    assert json.loads((out / "report.json").read_text())["det_png"] == str(out / "det.png")


def test_no_det_plot_leaves_no_old_one_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without matplotlib (a dev extra), the det.png of an earlier run with the same --out
    stayed there and looked current. Found rerunning a set cut from fsdd in a Python where
    matplotlib cannot be imported. Now it is removed and the summary and report.json say
    why there is no plot."""
    pytest.importorskip("matplotlib")
    root = _noise_set(tmp_path / "set", seed=1)
    out = tmp_path / "out"
    assert main(["eval", str(root), "--out", str(out)]) == 0
    png = out / "det.png"
    assert png.exists()
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails
    assert main(["eval", str(root), "--out", str(out)]) == 0
    assert not png.exists()
    summary = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert "det_png" not in report
    why = report["no_det_png"]
    assert why.startswith("matplotlib is not installed") and f"the {png} of an earlier" in why
    assert f"no DET curve: {why}" in summary and "DET curve: /" not in summary


def test_ctrl_c_while_embedding_keeps_what_was_embedded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C while embedding wrote nothing, so the rerun embedded the whole set again
    (minutes on vcc2018_eval). Now the embeddings made so far are saved and the rerun
    embeds only the rest, with the scores of an uninterrupted run."""
    import signal

    import voxgate.evaluation as evaluation

    root = _noise_set(tmp_path / "set", seed=1)
    real = evaluation._progress_printer
    seen: list[tuple[int, int]] = []

    def interrupting(label: str) -> Callable[[int, int], None]:
        show = real(label)

        def step(n: int, total: int) -> None:
            seen.append((n, total))
            show(n, total)
            if n == 2 and total == 3:  # a real SIGINT, as the terminal sends it
                os.kill(os.getpid(), signal.SIGINT)

        return step

    monkeypatch.setattr(evaluation, "_progress_printer", interrupting)
    # Python raises KeyboardInterrupt on SIGINT only if SIGINT was not ignored when it
    # started, and a shell's background job (`scripts/test &`) starts with it ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    out = tmp_path / "out"
    try:
        assert main(["eval", str(root), "--out", str(out)]) == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not (out / "report.json").exists()
    assert "Traceback" not in capsys.readouterr().err
    seen.clear()
    assert main(["eval", str(root), "--out", str(out)]) == 0
    assert seen == [(1, 1)]  # only z.wav, the one not embedded before Ctrl-C
    monkeypatch.setattr(evaluation, "_progress_printer", real)
    assert main(["eval", str(root), "--out", str(tmp_path / "fresh")]) == 0
    assert (out / "scores.csv").read_text() == (tmp_path / "fresh" / "scores.csv").read_text()


def test_ctrl_c_while_re_reading_an_older_gates_readings_keeps_the_embeddings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cache whose quality readings an older gate made is read again without embedding.
    Its progress said "embedding", and a Ctrl-C during it dropped every recording not yet
    read again from the cache, so the next run embedded them all again. Now it says
    "re-reading", and the rerun reads again only the rest, embedding nothing."""
    import signal

    import voxgate.evaluation as evaluation

    root = _noise_set(tmp_path / "set", seed=1)
    out = tmp_path / "out"
    assert main(["eval", str(root), "--out", str(out)]) == 0

    def older_gate(meta: dict, emb: np.ndarray) -> tuple[dict, np.ndarray]:
        meta.pop("quality_reading")
        return meta, emb

    _rewrite_cache(out, older_gate)
    real = evaluation._progress_printer
    seen: list[tuple[str, int, int]] = []

    def interrupting(label: str) -> Callable[[int, int], None]:
        show = real(label)

        def step(n: int, total: int) -> None:
            seen.append((label.split()[0], n, total))
            show(n, total)
            if n == 1 and total == 3:  # a real SIGINT, as the terminal sends it
                os.kill(os.getpid(), signal.SIGINT)

        return step

    monkeypatch.setattr(evaluation, "_progress_printer", interrupting)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # see above
    try:
        assert main(["eval", str(root), "--out", str(out)]) == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen == [("re-reading", 1, 3)], seen
    assert "re-reading set (quality only): 1/3" in capsys.readouterr().err
    seen.clear()
    assert main(["eval", str(root), "--out", str(out)]) == 0
    assert seen == [("re-reading", 1, 2), ("re-reading", 2, 2)], seen  # nothing embedded
    monkeypatch.setattr(evaluation, "_progress_printer", real)
    assert main(["eval", str(root), "--out", str(tmp_path / "fresh")]) == 0
    assert (out / "scores.csv").read_text() == (tmp_path / "fresh" / "scores.csv").read_text()


def test_a_rerun_says_it_used_the_embedding_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rerun with the same --out embedded nothing and printed nothing before the summary:
    whether the cache had been used could not be told."""
    root = _noise_set(tmp_path / "set", seed=1)
    out = tmp_path / "out"
    assert main(["eval", str(root), "--out", str(out)]) == 0
    first = capsys.readouterr().err
    assert "embedding set: 3/3" in first and "embedding cache" not in first
    assert main(["eval", str(root), "--out", str(out)]) == 0
    again = capsys.readouterr().err
    assert "embedding set:" not in again
    assert f"set: 3 of 3 recording(s) taken from the embedding cache {out}" in again
