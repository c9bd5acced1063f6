"""`voxgate run` on a data folder whose files an SD card fault damaged: the daemon process
refuses to start with exit 78 (systemd does not restart: the same file would fail every 2 s,
docs/service.md), names the file and says what to do, and leaves the damaged file as it was
(an admin may still recover it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from mqtt_helpers import REPO

from voxgate.audit import AuditLog
from voxgate.cli import main
from voxgate.voiceprints import VoiceprintStore, parse_key

RATE = 16000


def _door(tmp_path: Path, challenge: str) -> tuple[Path, Path]:
    """(config, data folder) of a door with alice enrolled and a decision counter."""
    data = tmp_path / "data"
    wav = tmp_path / "quiet.wav"
    sf.write(wav, np.zeros(RATE, np.int16), RATE, subtype="PCM_16")
    key = tmp_path / "voiceprint.key"
    assert main(["users", "init-key", str(key)]) == 0
    (tmp_path / "decision.key").write_text("d" * 64)
    (tmp_path / "decision.key").chmod(0o600)
    cfg = tmp_path / "voxgate.yaml"
    cfg.write_text(
        f"data_dir: {data}\naudio: {{source: file, path: {wav}}}\n"
        f"metrics: {{enabled: false}}\nchallenge: {{mode: '{challenge}'}}\n"
        f"mqtt: {{host: 127.0.0.1, port: 1, hmac_key_file: {tmp_path / 'decision.key'}}}\n"
        f"speaker: {{key_file: {key}}}\n"
    )
    with VoiceprintStore(data / "voiceprints.db", parse_key(key.read_bytes())) as store:
        emb = np.random.default_rng(1).standard_normal((3, 256))
        store.add_user("alice", emb, "test-model/1", {"takes": 3})
    (data / "decision-seq.json").write_text('{"seq": 1795000000000}')
    return cfg, data


def _run(cfg: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    env.pop("CREDENTIALS_DIRECTORY", None)
    env["PYTHONPATH"] = str(REPO / "daemon")
    return subprocess.run(
        [sys.executable, "-m", "voxgate", "run", "-c", str(cfg)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def _damage(path: Path, how: str) -> None:
    if how == "garbage":
        path.write_bytes(os.urandom(4096))
    elif how == "half":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how.startswith("page "):  # one page of the file (not its header) overwritten
        page = int(how.split()[1])
        with open(path, "r+b") as f:
            f.seek((page - 1) * 4096)
            f.write(np.random.default_rng(page).bytes(4096))  # the same bytes every run
    elif how == "folder":
        path.unlink(missing_ok=True)
        path.mkdir()


def _snapshot(path: Path) -> bytes | str:
    return path.read_bytes() if path.is_file() else "a folder"


@pytest.mark.parametrize(
    ("name", "how", "challenge", "advice"),
    [
        ("voiceprints.db", "garbage", "off", "restore it from a backup"),
        ("voiceprints.db", "half", "off", "Restore it from a backup"),
        ("voiceprints.db", "folder", "off", "Restore the file from a backup"),
        ("voiceprints.db", "empty", "off", "Restore it from a backup"),
        # Seen overwriting bytes in the middle of the file: the door started, READY, and
        # denied everyone as store_unreadable at each attempt; the docs promise 78 for a
        # malformed file. Pages 2-7 of a one-user store: tables, index, the voiceprint.
        # (SQLite reports some as malformed while reading the schema, others in quick_check.)
        *[("voiceprints.db", f"page {n}", "off", "from a backup") for n in range(2, 8)],
        ("decision-seq.json", "garbage", "off", "delete the file"),
        ("decision-seq.json", "folder", "off", "delete the file"),
        ("replay.db", "garbage", "digits", "Move it aside"),
        ("replay.db", "folder", "digits", "Move it aside"),
        ("audit.jsonl", "folder", "off", "Move it aside"),
        ("audit.jsonl.anchor", "folder", "off", "Move it aside"),
        ("command-nonces.json", "folder", "off", "move it aside"),
    ],
)
def test_a_damaged_data_file_stops_the_start_with_78_and_is_left_alone(
    tmp_path: Path, name: str, how: str, challenge: str, advice: str
) -> None:
    """Seen: each of these exited 69, which the unit restarts every 2 s for ever (the file
    is just as damaged the next time), although a damaged voiceprint key already gave 78.
    A folder in the audit log's place was worse: the door ran and audited nothing."""
    cfg, data = _door(tmp_path, challenge)
    _damage(data / name, how)
    before = _snapshot(data / name)
    done = _run(cfg)
    assert done.returncode == 78, done.stderr[-2000:]
    assert str(data / name) in done.stderr and advice in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert _snapshot(data / name) == before


def test_a_damaged_used_commands_file_is_moved_aside_and_the_door_runs(tmp_path: Path) -> None:
    """It stopped the start with 78, which leaves a door down until someone comes, for one
    more run of a command from the last minute at most (and only with the clock set back)."""
    cfg, data = _door(tmp_path, "off")
    _damage(data / "command-nonces.json", "garbage")
    before = (data / "command-nonces.json").read_bytes()
    done = _run(cfg)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "command-nonces.json: damaged" in done.stderr and "moved aside" in done.stderr
    (aside,) = data.glob("command-nonces.json.corrupt-*")
    assert aside.read_bytes() == before


def test_an_empty_voiceprint_file_is_refused_by_every_command_that_opens_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Seen: a voiceprints.db cut to 0 bytes (a power cut while it was rewritten, a restore
    that copied nothing) was opened as a new store: `users list` said nobody was enrolled,
    `enroll` and the API wrote a fresh schema over it, and the door denied everyone without
    a word. Each now refuses, names the file and says what to do, and leaves it at 0 bytes;
    an absent file is still a new store."""
    cfg, data = _door(tmp_path, "off")
    db = data / "voiceprints.db"
    db.write_bytes(b"")
    fleet_key, signing = tmp_path / "fleet.key", tmp_path / "signing.key"
    for key in (fleet_key, signing):
        key.write_text(os.urandom(32).hex() + "\n")
        key.chmod(0o600)
    fleet_cfg = tmp_path / "fleet.yaml"
    fleet_cfg.write_text(
        cfg.read_text() + f"fleet: {{enabled: true, site: acme, key_file: {fleet_key}, "
        f"signing_key_file: {signing}, groups: [lobby], access: {{lobby: ['*']}}}}\n"
    )
    token = tmp_path / "api.token"
    token.write_text("t" * 40)
    token.chmod(0o600)
    api_cfg = tmp_path / "api.yaml"
    api_cfg.write_text(cfg.read_text() + f"api: {{token_file: {token}, port: 1}}\n")
    wav = tmp_path / "quiet.wav"
    commands = [
        ["users", "list", "-c", str(cfg)],
        ["users", "export", "alice", "-c", str(cfg)],
        ["users", "erase", "alice", "-c", str(cfg)],
        ["enroll", "bob", "--from", str(wav), "-c", str(cfg)],
        ["api", "-c", str(api_cfg)],
        ["fleet", "erase", "alice", "-c", str(fleet_cfg)],
    ]
    for argv in commands:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert f"{db}: the file is empty (0 bytes)" in err, (argv, err)
        assert "Restore it from a backup" in err and "delete it" in err, (argv, err)
        assert db.stat().st_size == 0, argv
    db.unlink()
    assert main(["users", "list", "-c", str(cfg)]) == 0  # absent: a new, empty store
    assert db.stat().st_size > 0


def test_an_empty_config_file_is_refused_at_start_and_at_reload(tmp_path: Path) -> None:
    """Seen: a config file cut to 0 bytes (a full disk while Ansible or an admin wrote it)
    was read as "every default": `voxgate run` started on /var/lib/voxgate, the microphone
    and no MQTT key, and a SIGHUP with it reset the live sections (lockout, challenge,
    logging) to their defaults, logged as an ordinary reload. Both refuse it now."""
    import signal
    import time

    cfg, data = _door(tmp_path, "off")
    good = cfg.read_text()
    cfg.write_text(good.replace("metrics:", "lockout: {max_failures: 2}\nmetrics:"))
    cfg_text = cfg.read_text()
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    done = _run(empty)
    assert done.returncode == 78, done.stderr[-2000:]
    assert f"{empty}" in done.stderr and "the file is empty (0 bytes)" in done.stderr

    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    env["PYTHONPATH"] = str(REPO / "daemon")
    argv = [sys.executable, "-m", "voxgate", "run", "-c", str(cfg), "--source", "stdin"]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdin is not None and proc.stderr is not None
        proc.stdin.write("\0" * 3200)  # 0.1 s of silence: the daemon becomes ready
        proc.stdin.flush()
        lines: list[str] = []
        while not any("ready:" in x for x in lines):
            line = proc.stderr.readline()
            assert line, "\n".join(lines)
            lines.append(line)
        cfg.write_text("")
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        cfg.write_text(cfg_text)
        proc.stdin.close()
        assert proc.wait(30) == 0
        log = "".join(lines) + proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "config reload rejected" in log and "the file is empty" in log, log[-3000:]
    assert "config reloaded" not in log
    reloads = [
        json.loads(x) for x in (data / "audit.jsonl").read_text().splitlines() if "config_re" in x
    ]
    assert [r["ok"] for r in reloads] == [False]


def test_a_read_only_data_folder_is_exit_73_and_says_so(tmp_path: Path) -> None:
    """Seen: on a data folder mounted read-only (ext4 remounts itself so after card errors)
    `voxgate run` exited 69, "cannot use the voiceprint database (unable to open database
    file)", which names neither the cause nor the folder; docs/service.md promises 73 for a
    data_dir that is not writable. (A read-only bind mount in a private mount namespace;
    root ignores permission bits.)"""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a read-only bind mount")
    cfg, data = _door(tmp_path, "off")
    ro = tmp_path / "ro"
    ro.mkdir()
    cfg.write_text(cfg.read_text().replace(f"data_dir: {data}", f"data_dir: {ro}"))
    before = sorted(p.name for p in data.iterdir())
    script = 'mount --bind "$1" "$2" && mount -o remount,bind,ro "$2" && shift 2 && exec "$@"'
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    env["PYTHONPATH"] = str(REPO / "daemon")
    unshare = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"]
    argv = [sys.executable, "-m", "voxgate", "run", "-c", str(cfg)]
    done = subprocess.run(
        [*unshare, str(data), str(ro), *argv], capture_output=True, text=True, env=env, timeout=120
    )
    if "mount:" in done.stderr:
        pytest.skip(f"cannot make a read-only bind mount here: {done.stderr.strip()}")
    assert done.returncode == 73, done.stderr[-2000:]
    assert f"cannot use data_dir {ro}: Read-only file system" in done.stderr, done.stderr
    assert sorted(p.name for p in data.iterdir()) == before


@pytest.fixture
def as_nobody() -> Any:
    """(a folder `nobody` can reach, argv prefix running a command as nobody); skips where
    that is not possible (not root, no setpriv, nobody cannot run this Python)."""
    import pwd
    import tempfile

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv(1) to run the daemon as another user")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody'")
    prefix = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}"]
    prefix += ["--clear-groups", sys.executable]
    env = {"PYTHONPATH": str(REPO / "daemon"), "PATH": os.environ.get("PATH", ""), "HOME": "/"}
    probe = subprocess.run([*prefix, "-c", "import voxgate"], env=env, capture_output=True)
    if probe.returncode != 0:
        pytest.skip("user nobody cannot run this Python and the voxgate source")
    with tempfile.TemporaryDirectory(prefix="voxgate-test-") as where:
        home = Path(where)
        home.chmod(0o755)
        yield home, prefix, env, (nobody.pw_uid, nobody.pw_gid)


@pytest.mark.parametrize(
    ("name", "challenge"),
    [
        ("voiceprints.db", "off"),
        ("audit.jsonl", "off"),
        ("lockout.db", "off"),
        ("replay.db", "digits"),
        ("command-nonces.json", "off"),
    ],
)
def test_a_data_file_the_service_user_cannot_use_is_named_at_start(
    as_nobody: Any, name: str, challenge: str
) -> None:
    """A file under data_dir owned by root, mode 0600 (written by a root shell, or a backup
    restored as root), with the daemon running as its own user. Seen: the audit log was
    given up ("cannot open (Permission denied)", the door ran and audited nothing), the
    lockout state too ("starting with no lockouts": every running lock cleared), replay.db
    gave 69 "not a replay-fingerprint database", voiceprints.db "restore the file from a
    backup". Now each stops the start with 73 (data_dir not writable), naming the file,
    its owner and the fix."""
    home, prefix, env, (uid, gid) = as_nobody
    cfg, data = _door(home, challenge)
    (data / "lockout.db").write_bytes(b"")
    (data / "audit.jsonl").write_bytes(b"")
    (data / "replay.db").write_bytes(b"")
    (data / "command-nonces.json").write_text('{"floor": 0, "used": {}}')
    for path in [home, *home.rglob("*")]:
        os.chown(path, uid, gid)
    os.chown(data / name, 0, 0)
    (data / name).chmod(0o600)
    done = subprocess.run(
        [*prefix, "-m", "voxgate", "run", "-c", str(cfg)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 73, done.stderr[-2000:]
    assert f"{data / name} cannot be read and written by this user" in done.stderr
    assert "belongs to uid 0" in done.stderr and "chown" in done.stderr


def test_a_damaged_key_file_is_named_and_not_answered_with_make_a_new_one(
    tmp_path: Path,
) -> None:
    """Seen with a voiceprint key file cut in half (alice enrolled): "voiceprint key must
    be 64 hex characters or 32 raw bytes (got 32 bytes); create one with: voxgate users
    init-key FILE", naming no file, and the advice makes a key that opens none of the
    stored voiceprints. The audio key said only "the audio key must be 32 raw bytes or 64
    hex characters"."""
    cfg, _ = _door(tmp_path, "off")
    vp_key = tmp_path / "voiceprint.key"
    vp_key.write_bytes(vp_key.read_bytes()[:40])
    done = _run(cfg)
    assert done.returncode == 78, done.stderr[-2000:]
    assert f"{vp_key}: voiceprint key must be" in done.stderr, done.stderr[-2000:]
    assert "restore the key from its backup" in done.stderr

    tmp2 = tmp_path / "second"
    tmp2.mkdir()
    cfg, _ = _door(tmp2, "off")
    audio_key = tmp2 / "audio.key"
    audio_key.write_bytes(os.urandom(20))
    audio_key.chmod(0o600)
    cfg.write_text(cfg.read_text() + f"audit: {{keep_audio: true, audio_key_file: {audio_key}}}\n")
    done = _run(cfg)
    assert done.returncode == 78, done.stderr[-2000:]
    assert f"{audio_key}: the audio key must be" in done.stderr, done.stderr[-2000:]


def test_the_bytes_of_a_torn_audit_line_are_kept_in_the_event_recording_them(
    tmp_path: Path,
) -> None:
    """Seen: a start after a crash (or a card fault) cut the last audit line removed it and
    recorded only {"event":"audit_torn_tail","dropped_bytes":N}: the half decision line,
    or whatever the fault wrote, was gone from the card for good. The event now carries
    the bytes (base64), so the chain keeps them."""
    import base64

    cfg, data = _door(tmp_path, "off")
    assert main(["users", "list", "-c", str(cfg)]) == 0
    audit = data / "audit.jsonl"
    # A clean log: alice's enrollment, then service_start, service_stop. (Left empty, on a
    # door with a voiceprint, it reads as a log emptied by hand: lost.)
    AuditLog(audit).append("enrollment", user="alice", via="cli")
    done = _run(cfg)
    assert done.returncode == 0, done.stderr[-2000:]
    torn = b'{"event":"decision","outcome":"granted","user":"alice","se'
    with open(audit, "ab") as f:
        f.write(torn)
    done = _run(cfg)
    assert done.returncode == 0, done.stderr[-2000:]
    events = [json.loads(x) for x in audit.read_text().splitlines()]
    (tail,) = [e for e in events if e["event"] == "audit_torn_tail"]
    assert tail["dropped_bytes"] == len(torn)
    assert base64.b64decode(tail["dropped_b64"]) == torn
    assert main(["audit", "verify", str(audit)]) == 0
