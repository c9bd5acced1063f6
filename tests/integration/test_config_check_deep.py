"""`voxgate config check --deep`: what `voxgate run` would stop at, found before it starts.

The schema check said "valid" for a config whose model card, cohort, keys, speech model,
voiceprint database or microphone were wrong; the daemon then stopped at start. These
configs use the real parts (the shipped model, real key files, real SQLite files, a real
ALSA device through ALSA's `file` PCM) and check that each broken reference is named with its
config key, path and the exit code the daemon itself stops with (Daemon.run on the same
config), that every problem is reported at once, and that the door's files are left as
they are.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.audio_helpers import ALSA_CONF
from voxgate.cli import main
from voxgate.config import load_config
from voxgate.service.loop import Daemon

ROOT = Path(__file__).resolve().parents[2]
COHORTS = ROOT / "models" / "cohort"
RATE = 16000

pytestmark = pytest.mark.usefixtures("no_secret_env")


def _door(tmp_path: Path, *extra: str, challenge: str = "off") -> Path:
    """A door with every key in place, a WAV as its input and no broker needed (the link
    only connects at start, which the check never does)."""
    wav = tmp_path / "quiet.wav"
    sf.write(wav, np.zeros(RATE, np.int16), RATE, subtype="PCM_16")
    vp_key = tmp_path / "voiceprint.key"
    if not vp_key.exists():
        assert main(["users", "init-key", str(vp_key)]) == 0
    dec_key = tmp_path / "decision.key"
    dec_key.write_text("d" * 64)
    dec_key.chmod(0o600)
    lines = [
        "device_id: door-1",
        f"data_dir: {tmp_path / 'data'}",
        f"audio: {{source: file, path: {wav}}}",
        "metrics: {enabled: false}",
        f"challenge: {{mode: '{challenge}'}}",
        f"mqtt: {{host: 127.0.0.1, port: 1, hmac_key_file: {dec_key}}}",
        f"speaker: {{key_file: {vp_key}}}",
        *extra,
    ]
    cfg = tmp_path / "voxgate.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def _set(cfg: Path, old: str, new: str) -> None:
    text = cfg.read_text()
    assert old in text, old
    cfg.write_text(text.replace(old, new))


def _deep(cfg: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["config", "check", "--deep", str(cfg)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _problem_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("  ") and "[voxgate run:" in line]


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# -- a good door -------------------------------------------------------------------------


def test_a_good_door_passes_and_its_data_folder_is_not_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _door(tmp_path, challenge="digits")
    code, out, err = _deep(cfg, capsys)
    assert code == 0, err
    assert "valid" in out
    # Made at first start (systemd's StateDirectory=); a check run as root must not make it.
    assert not (tmp_path / "data").exists()


def test_quiet_prints_nothing_for_a_good_door_and_the_warnings_beside_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The door has no command key, as the install steps leave it: start warns about that.
    cfg = _door(tmp_path)
    capsys.readouterr()
    assert main(["config", "check", "--deep", "--quiet", str(cfg)]) == 0
    out = capsys.readouterr()
    assert (out.out, out.err) == ("", "")
    _foreign_cohort(tmp_path, cfg)
    assert main(["config", "check", "--deep", "--quiet", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "no command key" in err
    assert "speaker.cohort (" in err


def test_the_door_files_are_left_as_they_are(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The daemon's start writes: it repairs a torn audit line (and audits that), moves a
    # damaged command-nonces file aside, creates what is missing. The check opens copies.
    cfg = _door(tmp_path)
    assert Daemon(load_config(cfg), config_path=cfg).run() == 0  # makes the door's files
    data = tmp_path / "data"
    audit = data / "audit.jsonl"
    audit.write_bytes(audit.read_bytes() + b'{"torn": ')  # a crash mid-write
    (data / "command-nonces.json").write_text("{not json")
    before = _digest(data)
    code, _, err = _deep(cfg, capsys)
    assert code == 0, err
    assert _digest(data) == before
    # ... which the daemon's own start does change: the check did not just skip them.
    assert Daemon(load_config(cfg), config_path=cfg).run() == 0
    assert _digest(data) != before


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["TERM", "HUP"])
def test_the_copies_are_removed_when_the_check_is_stopped(tmp_path: Path, signum: int) -> None:
    # The copies hold the voiceprints, the lockout state and the end of the audit log. A
    # `timeout` or a closed SSH session stopped the check by its default action and left
    # them in the temporary folder, where a later erase of a user does not reach.
    cfg = _door(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "voiceprints.db").write_bytes(b"the door's voiceprints")
    # A key file that is a FIFO: reading it waits for a writer, so the check is held at a
    # known step (the speaker key, after the copies are made) until the signal arrives.
    key = tmp_path / "voiceprint.key"
    key.unlink()
    os.mkfifo(key, 0o600)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = dict(os.environ, TMPDIR=str(scratch), PYTHONPATH=str(ROOT / "daemon"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "voxgate", "config", "check", "--deep", str(cfg)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(scratch.glob("voxgate-check-*/data/voiceprints.db")):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the check made no copies"
            time.sleep(0.01)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, err
    assert list(scratch.iterdir()) == []


def test_a_full_temporary_folder_is_said_not_blamed_on_the_door(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # With no room for the copies, they were cut short and the start-up functions opened
    # them: the check printed "replay.db: ... database disk image is malformed" and "the
    # disk is full: free space on <the door's data_dir>" (the copies named as the real
    # files), blaming a healthy door. Found with TMPDIR on a 48 kB tmpfs.
    sys.path.insert(0, str(Path(__file__).parent))
    from small_fs import fill, small_fs

    cfg = _door(tmp_path, challenge="digits")
    assert Daemon(load_config(cfg), config_path=cfg).run() == 0  # makes the door's files
    before = _digest(tmp_path / "data")
    with small_fs(tmp_path / "tmp", "1m") as tmp:
        fill(tmp)
        monkeypatch.setattr(tempfile, "tempdir", str(tmp))
        code, out, err = _deep(cfg, capsys)
        assert sorted(p.name for p in tmp.iterdir()) == [".filler"]  # nothing left behind
    assert code == 1, (out, err)
    assert _problem_lines(err) == [], err  # no problem of the door's
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"{cfg}: cannot check: ") and str(tmp) in last and "TMPDIR" in last
    assert _digest(tmp_path / "data") == before


def test_what_start_would_do_to_a_file_is_said_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A damaged lockout state does not stop the start: it is moved aside. The check did it
    # to its copy and printed "moved to <the door's folder>/lockout.db.corrupt-...", named as
    # the real file, which was still there and nothing beside it.
    cfg = _door(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "lockout.db").write_bytes(os.urandom(4096))
    code, _, err = _deep(cfg, capsys)
    assert code == 0, err
    (line,) = [x for x in err.splitlines() if "lockout.db.corrupt-" in x]
    assert f"at start: lockout state {data / 'lockout.db'} is unreadable" in line, line
    assert [p.name for p in data.iterdir()] == ["lockout.db"]


# -- each broken reference ---------------------------------------------------------------


def _missing_model(tmp_path: Path, cfg: Path) -> None:
    _set(cfg, "speaker: {", f"speaker: {{model: {tmp_path / 'ge2e-int9.yaml'}, ")


def _foreign_cohort(tmp_path: Path, cfg: Path) -> None:
    # The shipped default model is the int8 one; this cohort was made with the float one.
    _set(cfg, "speaker: {", f"speaker: {{cohort: {COHORTS / 'ge2e-resemblyzer-0.1.4--float.npz'}, ")


def _missing_voiceprint_key(tmp_path: Path, cfg: Path) -> None:
    (tmp_path / "voiceprint.key").unlink()


def _unreadable_voiceprint_key(tmp_path: Path, cfg: Path) -> None:
    (tmp_path / "voiceprint.key").unlink()
    (tmp_path / "voiceprint.key").mkdir()  # a folder where the file should be


def _wrong_voiceprint_key(tmp_path: Path, cfg: Path) -> None:
    assert main(["users", "list", "-c", str(cfg)]) == 0  # the store, sealed with this key
    (tmp_path / "voiceprint.key").unlink()
    assert main(["users", "init-key", str(tmp_path / "voiceprint.key")]) == 0


def _missing_decision_key(tmp_path: Path, cfg: Path) -> None:
    (tmp_path / "decision.key").unlink()


def _missing_ca_file(tmp_path: Path, cfg: Path) -> None:
    # Was shown as "mqtt (127.0.0.1:1)": the admin looked at the broker, not the file.
    _set(cfg, "port: 1,", f"port: 1, tls: {{ca_file: {tmp_path / 'ca.pem'}}},")


def _ca_file_not_a_certificate(tmp_path: Path, cfg: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    _set(cfg, "port: 1,", f"port: 1, tls: {{ca_file: {tmp_path / 'ca.pem'}}},")


def _missing_audit_key(tmp_path: Path, cfg: Path) -> None:
    with cfg.open("a") as f:
        f.write(f"audit: {{key_file: {tmp_path / 'audit.key'}}}\n")


def _missing_stt_model(tmp_path: Path, cfg: Path) -> None:
    _set(cfg, "mode: 'off'", "mode: 'digits'")
    with cfg.open("a") as f:
        f.write(f"stt: {{backend: deepspeech, deepspeech_model: {tmp_path / 'ds.tflite'}}}\n")


def _store_not_sqlite(tmp_path: Path, cfg: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "voiceprints.db").write_text("restored from the wrong backup\n")


def _store_of_another_program(tmp_path: Path, cfg: Path) -> None:
    (tmp_path / "data").mkdir()
    db = sqlite3.connect(tmp_path / "data" / "voiceprints.db")
    db.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, jpeg BLOB)")
    db.commit()
    db.close()


def _replay_store_not_sqlite(tmp_path: Path, cfg: Path) -> None:
    _set(cfg, "mode: 'off'", "mode: 'digits'")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "replay.db").write_bytes(os.urandom(4096))


def _missing_audio_key(tmp_path: Path, cfg: Path) -> None:
    with cfg.open("a") as f:
        f.write(f"audit: {{keep_audio: true, audio_key_file: {tmp_path / 'audio.key'}}}\n")


def _missing_audio_file(tmp_path: Path, cfg: Path) -> None:
    (tmp_path / "quiet.wav").unlink()


def _missing_api_token(tmp_path: Path, cfg: Path) -> None:
    with cfg.open("a") as f:
        f.write(f"api: {{enabled: true, token_file: {tmp_path / 'api-token'}}}\n")


BROKEN: list[tuple[Callable[[Path, Path], None], str, str]] = [
    # (what breaks it, the config key named, words from what is wrong)
    (_missing_model, "speaker.model (", "does not exist"),
    (_foreign_cohort, "speaker.cohort (", "cohort made with model"),
    (_missing_voiceprint_key, "speaker.key_file (", "not found"),
    (_unreadable_voiceprint_key, "speaker.key_file (", "cannot read"),
    (_wrong_voiceprint_key, "speaker.database (", "wrong voiceprint key"),
    (_missing_decision_key, "mqtt.hmac_key_file (", "secret 'decision-key' not found"),
    (_missing_audit_key, "audit.key_file (", "secret 'audit-key' not found"),
    (_missing_ca_file, "mqtt.tls.ca_file (", "does not exist"),
    (_ca_file_not_a_certificate, "mqtt.tls (", "cannot load certificates"),
    (_missing_stt_model, "stt.deepspeech_model (", "does not exist"),
    (_store_not_sqlite, "speaker.database (", "not SQLite"),
    (_store_of_another_program, "speaker.database (", "not a voxgate voiceprint store"),
    (_replay_store_not_sqlite, "data_dir (", "replay.db"),
    (_missing_audio_key, "audit.audio_key_file (", "secret 'audio-key' not found"),
    (_missing_audio_file, "audio.path (", "audio input"),
    (_missing_api_token, "api.token_file (", "secret 'api-token' not found"),
]


@pytest.mark.parametrize(
    ("breaks", "key", "what"), BROKEN, ids=[b[0].__name__.strip("_") for b in BROKEN]
)
def test_a_broken_reference_is_named_with_the_daemons_exit_code(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    breaks: Callable[[Path, Path], None],
    key: str,
    what: str,
) -> None:
    cfg = _door(tmp_path)
    breaks(tmp_path, cfg)
    # The schema check alone still says valid: the deeper one is opt-in.
    assert main(["config", "check", "--quiet", str(cfg)]) == 0
    code, out, err = _deep(cfg, capsys)
    assert code == 1, (out, err)
    problems = _problem_lines(err)
    assert len(problems) == 1, err
    assert problems[0].lstrip().startswith(key), err
    assert what in problems[0], err
    # The exit code it names is the one the daemon stops with on the same config.
    daemon_code = Daemon(load_config(cfg), config_path=cfg).run()
    assert f"[voxgate run: exit {daemon_code}]" in problems[0], (daemon_code, err)


@pytest.mark.parametrize("model", ["ge2e-resemblyzer-0.1.4/int9", "{tmp}/ge2e-int9.yaml"])
def test_a_mistyped_speaker_model_is_a_config_error_not_a_restart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str
) -> None:
    """A typo in speaker.model (or the model id `users list` shows, where a path goes) stopped
    the daemon with 69, which systemd restarts every 2 s for ever; no restart can fix a
    setting, so it is 78 like a missing key, and the message names the shipped cards."""
    cfg = _door(tmp_path)
    _set(cfg, "speaker: {", f"speaker: {{model: '{model.format(tmp=tmp_path)}', ")
    code, _, err = _deep(cfg, capsys)
    assert code == 1
    (problem,) = _problem_lines(err)
    assert problem.lstrip().startswith("speaker.model ("), err
    assert "[voxgate run: exit 78]" in problem, err
    assert "ge2e-int8.yaml" in problem, err  # what to put there instead
    assert Daemon(load_config(cfg), config_path=cfg).run() == 78


@pytest.mark.parametrize(
    ("cohort", "what"),
    [
        ("{tmp}/missing.npz", "cohort file missing"),
        ("{tmp}", "a folder"),
        (str(COHORTS / "ge2e-resemblyzer-0.1.4--float.npz"), "cohort made with model"),
    ],
    ids=["missing", "folder", "another-model"],
)
def test_a_cohort_that_cannot_be_used_is_a_config_error_not_a_restart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cohort: str, what: str
) -> None:
    """speaker.cohort naming a file that is not there, a folder or another model's cohort
    stopped the daemon with 69, which systemd restarts every 2 s for ever: the same file is
    read again at each start, so only an edit or a rebuild helps (78)."""
    cfg = _door(tmp_path)
    _set(cfg, "speaker: {", f"speaker: {{cohort: '{cohort.format(tmp=tmp_path)}', ")
    code, _, err = _deep(cfg, capsys)
    assert code == 1
    (problem,) = _problem_lines(err)
    assert problem.lstrip().startswith("speaker.cohort ("), err
    assert what in problem, err
    assert "[voxgate run: exit 78]" in problem, err
    assert Daemon(load_config(cfg), config_path=cfg).run() == 78


def test_a_data_dir_under_a_file_is_named_before_the_start_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A data_dir that does not exist yet is made at start; under a file it never can be,
    and `voxgate run` stops with 73, but the deep check called such a door fine."""
    cfg = _door(tmp_path)
    (tmp_path / "state").write_text("a file where a folder should be\n")
    _set(cfg, f"data_dir: {tmp_path / 'data'}", f"data_dir: {tmp_path / 'state' / 'voxgate'}")
    code, _, err = _deep(cfg, capsys)
    assert code == 1
    (problem,) = _problem_lines(err)
    assert problem.lstrip().startswith("data_dir ("), err
    assert f"{tmp_path / 'state'}: a file, not a folder" in problem, err
    assert "[voxgate run: exit 73]" in problem, err
    assert Daemon(load_config(cfg), config_path=cfg).run() == 73


def test_every_problem_is_reported_not_only_the_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _door(tmp_path)
    for breaks in (_foreign_cohort, _store_not_sqlite, _missing_stt_model, _missing_decision_key):
        breaks(tmp_path, cfg)
    code, _, err = _deep(cfg, capsys)
    assert code == 1
    keys = [line.split(" (")[0].strip() for line in _problem_lines(err)]
    assert keys == [
        "speaker.database",
        "speaker.cohort",
        "stt.deepspeech_model",
        "mqtt.hmac_key_file",
    ]
    assert str(tmp_path / "data" / "voiceprints.db") in err  # the real path, not a copy's


# -- the microphone: a real ALSA device ----------------------------------------------------


def test_an_alsa_device_that_is_not_there_is_named(tmp_path: Path) -> None:
    pytest.importorskip("pyaudio", reason="PyAudio is not installed (pip install 'voxgate[mic]')")
    if not Path("/usr/share/alsa/alsa.conf").exists():
        pytest.skip("ALSA is not installed (apt-get install libasound2 alsa-utils)")
    raw = tmp_path / "silence.raw"
    raw.write_bytes(bytes(RATE * 2))
    conf = tmp_path / "asound.conf"
    conf.write_text(ALSA_CONF.format(raw=raw))
    cfg = _door(tmp_path)
    env = dict(os.environ, ALSA_CONFIG_PATH=str(conf), PYTHONPATH=str(ROOT / "daemon"))
    results = {}
    for device in ("voxgate_test_mic", "voxgate_tset_mic"):
        _set(
            cfg,
            cfg.read_text().split("audio: ")[1].split("\n")[0],
            f"{{source: mic, device: {device}}}",
        )
        proc = subprocess.run(
            [sys.executable, "-m", "voxgate", "config", "check", "--deep", str(cfg)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        results[device] = proc
    good, typo = results["voxgate_test_mic"], results["voxgate_tset_mic"]
    assert good.returncode == 0, good.stderr
    assert typo.returncode == 1, typo.stderr
    assert "audio.device (voxgate_tset_mic): audio input: no input device matches" in typo.stderr
    assert "voxgate_test_mic" in typo.stderr  # the list of what is there
    assert "[voxgate run: exit 74]" in typo.stderr


# -- a door that is running ---------------------------------------------------------------

WRITER = """
import os, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, b BLOB)")
db.commit()
print("ready", flush=True)
i = 0
while True:  # far faster than any door: 3 MB of rows, a checkpoint every other commit
    i += 1
    db.execute("INSERT INTO t (b) VALUES (?)", (os.urandom(3000),))
    db.commit()
    if i % 3 == 0:
        db.execute("DELETE FROM t WHERE id < ?", (i - 1000,))
        db.commit()
    if i % 2 == 0:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
"""


def test_a_database_the_door_is_writing_is_copied_as_of_one_moment(tmp_path: Path) -> None:
    """On a running door, the database was copied before its WAL: a checkpoint between the
    two gave a copy that read as "malformed" (219 of 709 copies under this writer), and the
    check then blamed the door's healthy file (and the Ansible role put the old config
    back). Each copy must open as a whole database; a file that never holds still for a
    copy is said ("run the check again"), not read torn."""
    from voxgate.service.preflight import CannotCheck, _Scratch

    cfg = load_config(_door(tmp_path))
    lockout = tmp_path / "data" / "lockout.db"
    lockout.parent.mkdir()
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(lockout)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
        damaged, copies, busy, end = [], 0, 0, time.monotonic() + 6
        while time.monotonic() < end and len(damaged) < 3:
            with tempfile.TemporaryDirectory(dir=tmp_path) as scratch:
                copies += 1
                try:
                    _Scratch(cfg, Path(scratch))
                except CannotCheck as exc:
                    assert "changed each time it was copied" in str(exc)
                    busy += 1
                    continue
                copy = Path(scratch) / "data" / "lockout.db"
                db = sqlite3.connect(copy)
                try:
                    verdict = db.execute("PRAGMA integrity_check").fetchone()[0]
                except sqlite3.DatabaseError as exc:
                    verdict = str(exc)
                db.close()
                if verdict != "ok":
                    damaged.append(verdict)
    finally:
        writer.kill()
        writer.wait()
    assert damaged == [], f"{len(damaged)} damaged copies in {copies}: {damaged[0]}"
    assert copies > 20 and busy < copies / 2, (copies, busy)
