"""Evaluation metrics and protocol reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voxgate.evaluation import (
    EvalError,
    binomial_interval,
    bootstrap_eer_ci,
    eer,
    eer_interval,
    load_recording,
    min_dcf,
    rates_at,
    read_set,
)


def test_eer_known_cases() -> None:
    assert eer(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0
    # One target below one impostor of four each: 25 % both ways at the crossing.
    tar = np.array([0.5, 2.0, 3.0, 4.0])
    non = np.array([-1.0, 0.0, 0.2, 1.0])
    assert eer(tar, non) == pytest.approx(0.25)
    rng = np.random.default_rng(0)
    # Two unit normals 2 sigma apart: EER = Phi(-1) = 15.87 %.
    big_t, big_n = rng.normal(2, 1, 20000), rng.normal(0, 1, 20000)
    assert eer(big_t, big_n) == pytest.approx(0.1587, abs=0.01)
    assert eer(big_n, big_n) == pytest.approx(0.5, abs=0.01)


def test_min_dcf_and_rates() -> None:
    tar = np.array([2.0, 3.0, 4.0])
    non = np.array([0.0, 1.0, 5.0])
    # Best: reject all (cost P_target*1 = 0.01 -> normalized 1.0) or accept above 5 -> same.
    assert min_dcf(tar, non) == pytest.approx(1.0)
    assert min_dcf(np.array([2.0]), np.array([1.0])) == 0.0
    assert rates_at(tar, non, 2.5) == (pytest.approx(1 / 3), pytest.approx(1 / 3))


def test_min_dcf_is_at_p_target_one_in_a_hundred() -> None:
    """The cases above give the same minDCF at any P_target (reject all, or no error), so a
    minDCF at P_target 0.05 or 0.5 passed them. Here one impostor in 100 scores between
    the two targets: accepting both costs 0.99 * 1 % (normalized 0.99) at P_target 0.01, so
    missing one target (0.5) is cheaper; at 0.05 the false match is (0.19), at 0.5 (0.01)."""
    tar = np.array([1.0, 2.0])
    non = np.concatenate([np.zeros(99), [1.5]])
    assert min_dcf(tar, non) == pytest.approx(0.5)
    assert min_dcf(tar, non, p_target=0.05) == pytest.approx(0.19)
    assert min_dcf(tar, non, p_target=0.5) == pytest.approx(0.01)


def test_bootstrap_ci_brackets_estimate() -> None:
    rng = np.random.default_rng(1)
    spk = np.repeat(np.arange(10), 40).astype(str)
    test_spk = np.tile(np.repeat(np.arange(10), 4), 10).astype(str)
    target = (spk == test_spk).astype(int)
    scores = rng.normal(0, 1, len(spk)) + 2.0 * target
    lo, hi = bootstrap_eer_ci(scores, target, spk, test_spk, n=200)
    point = eer(scores[target == 1], scores[target == 0])
    assert lo <= point <= hi and hi - lo > 0.01


def test_binomial_interval_known_values() -> None:
    # No error in 70 trials (resemblyzer_ls's target trials): 1 - 0.05^(1/70), near 3/70.
    assert binomial_interval(0, 70) == (0.0, pytest.approx(0.04189, abs=1e-5))
    # 5 errors in 282 (fsdd's cosine EER): the exact Clopper-Pearson interval.
    lo, hi = binomial_interval(5, 282)
    assert lo == pytest.approx(0.00578, abs=1e-5) and hi == pytest.approx(0.04089, abs=1e-5)
    assert binomial_interval(2, 2)[1] == 1.0


def test_eer_interval_is_the_bootstrap_where_there_are_enough_trials() -> None:
    """10 speakers, 40 target and 360 non-target trials, some errors: the speaker
    bootstrap, as before (the real sets' figures stay as they were)."""
    rng = np.random.default_rng(1)
    spk = np.repeat(np.arange(10), 40).astype(str)
    test_spk = np.tile(np.repeat(np.arange(10), 4), 10).astype(str)
    target = (spk == test_spk).astype(int)
    scores = rng.normal(0, 1, len(spk)) + 2.0 * target
    (lo, hi), how = eer_interval(scores, target, spk, test_spk)
    assert how == "speaker bootstrap"
    assert (lo, hi) == bootstrap_eer_ci(scores, target, spk, test_spk)


def test_eer_interval_with_no_error_is_not_a_point() -> None:
    """Classes that never overlap: the bootstrap resamples only error-free trials and gave
    0.00-0.00, which reads as certainty; 0 errors in 40 target trials allow up to 7.2 %."""
    spk = np.repeat(np.arange(10), 40).astype(str)
    test_spk = np.tile(np.repeat(np.arange(10), 4), 10).astype(str)
    target = (spk == test_spk).astype(int)
    scores = np.where(target == 1, 1.0, 0.0) + np.linspace(0, 0.1, len(spk))
    assert bootstrap_eer_ci(scores, target, spk, test_spk) == (0.0, 0.0)
    (lo, hi), how = eer_interval(scores, target, spk, test_spk)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.05 ** (1 / 40))
    assert "no error in 40 trials" in how


def test_eer_interval_of_two_speakers_is_widened() -> None:
    """Two speakers, one error in two target trials: the bootstrap has three resamples."""
    spk = np.array(["a", "a", "b", "b"])
    test_spk = np.array(["a", "b", "a", "b"])
    target = np.array([1, 0, 0, 1])
    scores = np.array([0.9, 0.1, 0.95, 0.2])  # b's target trial below an impostor
    (lo, hi), how = eer_interval(scores, target, spk, test_spk)
    assert eer(scores[target == 1], scores[target == 0]) == 0.5
    b_lo, b_hi = binomial_interval(1, 2)  # 1.3 % to 98.7 %
    assert lo <= b_lo and hi >= b_hi
    assert how.startswith("speaker bootstrap widened")


def _write_set(root: Path, trials: str) -> None:
    (root / "a").mkdir(parents=True)
    t = np.arange(1600) / 16000
    for name, f in (("x.wav", 200), ("y.wav", 300)):
        sf.write(root / "a" / name, (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32), 16000)
    (root / "manifest.csv").write_text("path,speaker,text\na/x.wav,s1,\na/y.wav,s2,\n")
    (root / "enroll.csv").write_text("model,path\ns1,a/x.wav\n")
    (root / "trials.csv").write_text(trials)


def test_read_set_and_joined_recording(tmp_path: Path) -> None:
    _write_set(tmp_path, "model,path,target\ns1,a/x.wav;a/y.wav,1\n")
    es = read_set(tmp_path)
    assert es.enroll == {"s1": ["a/x.wav"]} and es.trials == [("s1", "a/x.wav;a/y.wav", 1)]
    assert es.speaker("a/y.wav;a/x.wav") == "s2"
    pcm = load_recording(tmp_path, "a/x.wav;a/y.wav")
    assert len(pcm) == 1600 + 3200 + 1600  # 0.2 s of silence between the files
    assert not pcm[1600:4800].any() and pcm[:1600].any() and pcm[4800:].any()


@pytest.mark.parametrize(
    ("trials", "match"),
    [
        ("model,path,target\ns1,a/x.wav,2\n", "target must be 0 or 1"),
        # The value is shown quoted: " 1" or "1.0" from a spreadsheet looked like a 1.
        ("model,path,target\ns1,a/x.wav, 1\n", r"line 2: target must be 0 or 1, not ' 1'"),
        ("model,path,target\nzz,a/x.wav,1\n", r"is not in enroll\.csv"),
        ("model,path\ns1,a/x.wav\n", "needs columns"),
    ],
)
def test_bad_protocols(tmp_path: Path, trials: str, match: str) -> None:
    _write_set(tmp_path, trials)
    with pytest.raises(EvalError, match=match):
        read_set(tmp_path)


def test_missing_folder_and_files(tmp_path: Path) -> None:
    with pytest.raises(EvalError, match="no such folder"):
        read_set(tmp_path / "nope")
    (tmp_path / "file.csv").write_text("x")
    with pytest.raises(EvalError, match="not a folder"):
        read_set(tmp_path / "file.csv")
    with pytest.raises(EvalError, match=r"manifest\.csv"):
        read_set(tmp_path)


@pytest.mark.parametrize(
    ("enroll", "trials", "where"),
    [
        ("s1,a/x.wav\n", "s1,a/zz.wav,1\n", r"trials\.csv, line 2: 'a/zz\.wav'"),
        ("s1,a/x.wav\n", "s1,a/y.wav;a/q.wav,0\n", r"trials\.csv, line 2: 'a/q\.wav'"),
        ("s1,a/x.wav\ns1,b/x.wav\n", "s1,a/y.wav,1\n", r"enroll\.csv, line 3: 'b/x\.wav'"),
    ],
)
def test_recordings_missing_from_the_manifest_are_named(
    tmp_path: Path, enroll: str, trials: str, where: str
) -> None:
    """A recording the manifest does not list has no speaker: every such trial fell into one
    speaker '?', and the speaker bootstrap printed an interval like '1.74-1.74' (found with an
    empty manifest.csv on speechcommands_v001_sample: EER 1.74 %, '95 % CI 1.74-1.74')."""
    _write_set(tmp_path, "model,path,target\n" + trials)
    (tmp_path / "enroll.csv").write_text("model,path\n" + enroll)
    with pytest.raises(EvalError, match=where + r" is not in manifest\.csv"):
        read_set(tmp_path)


def test_cohort_pool_with_trials_but_no_enroll_csv_is_refused(tmp_path: Path) -> None:
    """--build-cohort reads a set with need_trials=False and leaves out the speakers of its
    protocol; with trials.csv present but enroll.csv missing the trials were not read at
    all, so trial speakers went silently into the cohort that would then normalize them."""
    _write_set(tmp_path, "model,path,target\ns1,a/y.wav,0\n")
    (tmp_path / "enroll.csv").unlink()
    with pytest.raises(EvalError, match=r"enroll\.csv: missing"):
        read_set(tmp_path, need_trials=False)
    (tmp_path / "trials.csv").unlink()  # a plain pool of recordings: fine
    assert read_set(tmp_path, need_trials=False).trials == []


def test_an_empty_part_of_a_joined_path_is_named(tmp_path: Path) -> None:
    """'a/x.wav;' (a trailing ';', or ';;') was read as the set folder itself: 'SET: is a
    directory, not an audio file' at embedding time, or now ' is not in manifest.csv'."""
    _write_set(tmp_path, "model,path,target\ns1,a/y.wav;,0\n")
    with pytest.raises(EvalError, match=r"trials\.csv, line 2: empty file name in 'a/y\.wav;'"):
        read_set(tmp_path)


def test_set_named_after_its_folder_when_given_as_dot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`voxgate eval .` inside a set printed ': 60 trials ...', 'embedding : 1/28' and wrote
    "set": "" to report.json (the name of Path('.') is empty)."""
    _write_set(tmp_path / "myset", "model,path,target\ns1,a/x.wav,1\ns1,a/y.wav,0\n")
    monkeypatch.chdir(tmp_path / "myset" / "a")
    assert read_set(Path("..")).name == "myset"
    monkeypatch.chdir(tmp_path / "myset")
    assert read_set(Path(".")).name == "myset"


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        # An empty enroll.csv was reported as "trials.csv, line 2: model s1 not enrolled".
        ("enroll.csv", "", r"enroll\.csv, line 1: needs columns model, path; it has nothing"),
        # A spreadsheet's ';'-separated export was "line 2: needs columns ...".
        (
            "trials.csv",
            "model;path;target\ns1;a/x.wav;1\n",
            r"trials\.csv, line 1: needs columns model, path, target; it has 'model;path;target'",
        ),
        ("manifest.csv", "", r"manifest\.csv, line 1: needs columns path, speaker"),
    ],
)
def test_a_header_without_the_columns_is_named(
    tmp_path: Path, name: str, text: str, match: str
) -> None:
    _write_set(tmp_path, "model,path,target\ns1,a/x.wav,1\n")
    (tmp_path / name).write_text(text)
    with pytest.raises(EvalError, match=match):
        read_set(tmp_path)


def test_a_file_given_two_speakers_in_the_manifest_is_named(tmp_path: Path) -> None:
    """The later row silently won, so the file's trials were counted under a speaker the
    other row contradicts (the model's speaker and the bootstrap both come from here)."""
    _write_set(tmp_path, "model,path,target\ns1,a/y.wav,0\n")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(manifest.read_text() + "a/y.wav,s2,again\n")
    assert read_set(tmp_path).speaker("a/y.wav") == "s2"  # the same speaker twice: fine
    manifest.write_text(manifest.read_text() + "a/x.wav,s9,\n")
    with pytest.raises(
        EvalError, match=r"manifest\.csv, line 5: a/x\.wav is s9 here, s1 on line 2"
    ):
        read_set(tmp_path)


def test_a_model_label_not_in_enroll_csv_is_quoted(tmp_path: Path) -> None:
    """'model s1  not enrolled' gave no hint that the label had a trailing space (a
    spreadsheet's "s1 ") while enroll.csv said "s1"; the label is now shown quoted, with
    the labels enroll.csv has."""
    _write_set(tmp_path, "model,path,target\ns1 ,a/x.wav,1\n")
    with pytest.raises(
        EvalError, match=r"line 2: model 's1 ' is not in enroll\.csv \(it has 's1'\)"
    ):
        read_set(tmp_path)


@pytest.mark.parametrize(
    "data",
    ["model,path\ns1,a/x.wav\n".encode("utf-16"), "model,path\nJörg,a/x.wav\n".encode("latin-1")],
)
def test_a_protocol_file_not_in_utf8_says_how_to_save_it(tmp_path: Path, data: bytes) -> None:
    """A spreadsheet's 'Unicode text' (UTF-16) or Latin-1 export was reported with the codec's
    own words ("'utf-8' codec can't decode byte 0xff in position 0: invalid start byte")."""
    _write_set(tmp_path, "model,path,target\ns1,a/x.wav,1\n")
    (tmp_path / "enroll.csv").write_bytes(data)
    with pytest.raises(EvalError, match=r"enroll\.csv: not UTF-8 text \(byte \d+\); save it as"):
        read_set(tmp_path)


def test_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    """The csv reader skips blank lines, and rows were numbered by their index: a bad row
    after a blank line (a spreadsheet's trailing empty row, a hand-edited file) was blamed
    on the line above it (found with `voxgate eval` on an fsdd subset: 'line 4' for line 5)."""
    _write_set(tmp_path, "model,path,target\ns1,a/x.wav,1\n\ns1,a/y.wav,2\n")
    with pytest.raises(EvalError, match=r"trials\.csv, line 4: target must be 0 or 1"):
        read_set(tmp_path)
    (tmp_path / "trials.csv").write_text("model,path,target\n\n\ns1,a/zz.wav,1\n")
    with pytest.raises(EvalError, match=r"trials\.csv, line 4: 'a/zz\.wav' is not in manifest"):
        read_set(tmp_path)


def test_a_row_with_more_fields_than_the_header_is_named(tmp_path: Path) -> None:
    """'s1,a/x.wav,a/y.wav' (two takes on one row, or a path with an unquoted comma) was
    read as a take a/x.wav and the rest dropped without a word: the model was enrolled
    from fewer takes than the file lists."""
    _write_set(tmp_path, "model,path,target\ns1,a/y.wav,0\n")
    (tmp_path / "enroll.csv").write_text("model,path\ns1,a/x.wav,a/y.wav\n")
    with pytest.raises(
        EvalError, match=r"enroll\.csv, line 2: 3 fields, the header has 2 \(model,path\)"
    ):
        read_set(tmp_path)
    # Extra named columns are fine (a spreadsheet's notes beside the protocol).
    (tmp_path / "enroll.csv").write_text("model,path,note\ns1,a/x.wav,first take\n")
    assert read_set(tmp_path).enroll == {"s1": ["a/x.wav"]}


def test_a_header_with_spaces_is_shown_quoted(tmp_path: Path) -> None:
    """A header typed as 'model, path, target' was reported as 'needs columns model, path,
    target; it has model, path, target': the needed and the found columns read the same."""
    _write_set(tmp_path, "model, path, target\ns1,a/x.wav,1\n")
    with pytest.raises(EvalError, match=r"it has 'model', ' path', ' target'$"):
        read_set(tmp_path)


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        (
            "trials.csv",
            "model,path,target\ns1,a/y.wav,0\ns1,a/x.wav,1\ns1,a/y.wav,0\n",
            r"trials\.csv, line 4: model 's1' and a/y\.wav again \(line 2\)",
        ),
        (  # the same pair with both answers: one of the two rows is wrong
            "trials.csv",
            "model,path,target\ns1,a/y.wav,0\ns1,a/y.wav,1\n",
            r"trials\.csv, line 3: model 's1' and a/y\.wav again \(line 2\)",
        ),
        (
            "enroll.csv",
            "model,path\ns1,a/x.wav\ns1,a/x.wav\n",
            r"enroll\.csv, line 3: model 's1' and a/x\.wav again \(line 2\)",
        ),
    ],
)
def test_a_repeated_row_is_named(tmp_path: Path, name: str, text: str, match: str) -> None:
    """A trial listed twice (two protocol files pasted together) was scored and counted twice,
    and a take listed twice weighed double in the model's mean: on an fsdd subset, one
    repeated enroll row moved the upstream recipe's minDCF from 0.333 to 0.167, silently."""
    _write_set(tmp_path, "model,path,target\ns1,a/y.wav,0\n")
    (tmp_path / name).write_text(text)
    with pytest.raises(EvalError, match=match):
        read_set(tmp_path)


@pytest.mark.parametrize(
    ("trials", "match"),
    [
        ("s1,a/y.wav,1\n", r"line 2: target 1, but model 's1' is s1 and a/y\.wav is s2"),
        (
            "s1,a/y.wav,0\ns1,a/x.wav,0\n",
            r"line 3: target 0, but model 's1' is s1 and a/x\.wav is s1",
        ),
    ],
)
def test_a_target_the_manifest_contradicts_is_named(
    tmp_path: Path, trials: str, match: str
) -> None:
    """A target column flipped or shifted (a sorted spreadsheet column) was scored as given:
    the EER of other labels than the speakers manifest.csv names, which the speaker
    bootstrap resamples by."""
    _write_set(tmp_path, "model,path,target\n" + trials)
    with pytest.raises(EvalError, match=match + r" in manifest\.csv"):
        read_set(tmp_path)


def test_a_path_not_in_the_manifest_is_quoted(tmp_path: Path) -> None:
    """'a/x.wav  is not in manifest.csv' gave no hint of the trailing space a spreadsheet
    cell kept (found on an fsdd subset); the path is shown quoted as model labels are."""
    _write_set(tmp_path, "model,path,target\ns1,a/y.wav ,0\n")
    with pytest.raises(EvalError, match=r"line 2: 'a/y\.wav ' is not in manifest\.csv"):
        read_set(tmp_path)


def test_the_thin_protocol_note_counts_the_speakers_the_interval_resamples() -> None:
    """A model enrolled for no trial counted as a fifth speaker in the note, which stayed
    silent, while the interval (4 speakers in the trials) was widened as too thin."""
    from voxgate.evaluation import EvalSet, too_few_trials

    speakers = ["ann", "bob", "cy", "dee", "eve"]
    speaker_of = {f"{s}/{i}.wav": s for s in speakers for i in range(20)}
    enroll = {s: [f"{s}/0.wav"] for s in speakers}
    trials = [
        (m, f"{s}/{i}.wav", int(m == s))
        for m in speakers[:4]
        for s in speakers[:4]
        for i in range(1, 11)
    ]
    es = EvalSet(Path("set"), speaker_of, enroll, trials)
    note = too_few_trials(es)
    assert note is not None and "of 4 speaker(s)" in note and "at least 5 speakers" in note
