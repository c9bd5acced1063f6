"""Erase really erases, on a real mosquitto: after a user is erased, a new subscriber (Home
Assistant, anyone allowed to read the door's tree) no longer gets their name retained on the
`user` topic, whichever way the daemon learns of the erase, also after a restart."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import test_daemon_e2e as e2e
import yaml
from broker import Broker
from mqtt_helpers import REPO, Recorder, link_config, wait_until
from small_fs import fill, small_fs

from voxgate.audit import AuditLog, verify
from voxgate.config import VoxgateConfig
from voxgate.config.service import LockoutConfig
from voxgate.decision import Issuer, SequenceCounter
from voxgate.lockout import LockoutBook
from voxgate.mqtt.client import MqttLink
from voxgate.service.users import UserServices
from voxgate.voiceprints import VoiceprintStore

DEV = "front-door"
USER_TOPIC = f"voxgate/{DEV}/user"
STATUS_TOPIC = f"voxgate/{DEV}/status"
DKEY = b"decision-key-for-tests-0123456789"
CKEY = b"command-key-for-tests-0123456789"
KEY = os.urandom(32)
device = e2e.device  # the fixture: a door's config on the broker, as in test_daemon_e2e


def retained_user(broker: Broker) -> bytes | None:
    """What a client subscribing now gets retained on the `user` topic (None: nothing).
    The broker sends the retained messages of one SUBSCRIBE in the order of its topics, so
    once the retained `status` has arrived, a retained `user` would have arrived before it."""
    late = Recorder(broker, "ha", [USER_TOPIC, STATUS_TOPIC])
    try:
        late.wait_for(STATUS_TOPIC, lambda m: m.retain)
        got = [m.payload for m in late.on(USER_TOPIC) if m.retain]
        return got[0] if got else None
    finally:
        late.close()


@pytest.fixture
def issuer(tmp_path: Path) -> Issuer:
    return Issuer(DEV, SequenceCounter(tmp_path / "seq.json"), ttl_s=5)


@pytest.fixture
def links(broker: Broker) -> Iterator[Callable[[], MqttLink]]:
    made: list[MqttLink] = []

    def make() -> MqttLink:
        link = MqttLink(link_config(broker), DEV, decision_key=DKEY, command_key=CKEY)
        made.append(link)
        link.start()
        wait_until(lambda: link.connected, 10, "link connected")
        return link

    yield make
    for link in made:
        link.stop()


def test_erasing_the_last_granted_user_clears_the_retained_name(
    broker: Broker, links: Callable[[], MqttLink], issuer: Issuer
) -> None:
    link = links()
    assert link.publish_decision(issuer.issue("granted", "Erin", time.time()))
    wait_until(lambda: retained_user(broker) == b"Erin", 5, "the retained grant")
    assert not link.forget_user("someone-else")  # holds another name: left as it is
    assert retained_user(broker) == b"Erin"
    assert link.forget_user("erin")
    wait_until(lambda: retained_user(broker) is None, 5, "the retained name to go")
    # A reconnect does not bring it back.
    broker.stop()
    wait_until(lambda: not link.connected, 10, "the link notices")
    broker.start()
    wait_until(lambda: link.connected, 15, "the link reconnects")
    assert retained_user(broker) is None


def test_a_name_left_retained_by_a_previous_run_is_cleared_when_erased(
    broker: Broker, links: Callable[[], MqttLink], issuer: Issuer
) -> None:
    first = links()
    assert first.publish_decision(issuer.issue("granted", "Erin", time.time()))
    wait_until(lambda: retained_user(broker) == b"Erin", 5, "the retained grant")
    first.stop()
    second = links()  # the daemon restarted: it learns what the broker keeps
    wait_until(lambda: second.last_user == "Erin", 5, "the restarted link to see it")
    assert second.forget_user("ERIN")
    wait_until(lambda: retained_user(broker) is None, 5, "the retained name to go")


def test_daemon_clears_the_name_after_an_erase_by_another_process(
    broker: Broker, links: Callable[[], MqttLink], issuer: Issuer, tmp_path: Path
) -> None:
    """`voxgate users erase erin` beside the running daemon: the daemon's housekeeping sees
    she is gone and clears the retained name (and her lockout entry)."""
    store = VoiceprintStore(tmp_path / "voiceprints.db", KEY)
    store.add_user("Erin", np.eye(3, 8, dtype=np.float32), "test/int8")
    book = LockoutBook(tmp_path / "lockout.db", LockoutConfig())
    link = links()
    users = UserServices(
        VoxgateConfig(data_dir=tmp_path), store, None, lambda e, **f: None, lockout=book, link=link
    )
    assert link.publish_decision(issuer.issue("granted", "Erin", time.time()))
    book.record("erin", ok=False)
    wait_until(lambda: retained_user(broker) == b"Erin", 5, "the retained grant")
    users.housekeeping(now=0.0)
    assert retained_user(broker) == b"Erin"  # still enrolled: kept

    other = VoiceprintStore(tmp_path / "voiceprints.db", KEY)  # the CLI's own connection
    assert other.erase("erin")
    other.close()
    users.housekeeping(now=10.0)
    wait_until(lambda: retained_user(broker) is None, 5, "the retained name to go")
    assert book.users() == []
    store.close()
    book.close()


def _door_with_erin(tmp_path: Path) -> tuple[Path, Path | None]:
    """A door's data folder: Erin enrolled, locked out, one kept recording of hers."""
    import yaml

    from voxgate.audit import AuditLog
    from voxgate.service.keep import AudioKeeper

    data = tmp_path / "data"
    (tmp_path / "vp.key").write_text(KEY.hex() + "\n")
    (tmp_path / "vp.key").chmod(0o600)
    cfg = {
        "device_id": DEV,
        "data_dir": str(data),
        "speaker": {"key_file": str(tmp_path / "vp.key")},
    }
    (tmp_path / "voxgate.yaml").write_text(yaml.safe_dump(cfg))
    store = VoiceprintStore(data / "voiceprints.db", KEY)
    store.add_user("Erin", np.eye(3, 8, dtype=np.float32), "test/int8")
    store.close()
    book = LockoutBook(data / "lockout.db", LockoutConfig())
    for _ in range(6):
        book.record("erin", ok=False)
    book.close()
    kept = AudioKeeper(data / "audio", os.urandom(32), 7).store(np.ones(800, np.int16), "n1")
    AuditLog(data / "audit.jsonl").append("decision", user="Erin", audio=str(kept))
    return data, kept


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    env["PYTHONPATH"] = str(REPO / "daemon")
    cmd = [sys.executable, "-m", "voxgate", "users", *args, "-c", str(tmp_path / "voxgate.yaml")]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)


def test_users_erase_command_drops_lockout_entry_and_recordings(tmp_path: Path) -> None:
    """`voxgate users erase` (another process than the daemon) left the lockout entry and
    the kept recordings of the person on disk."""
    data, kept = _door_with_erin(tmp_path)
    run = _cli(tmp_path, "erase", "erin")
    assert run.returncode == 0, run.stderr
    assert "erased Erin\n" in run.stdout  # as enrolled, as the daemon and the API say
    assert "also dropped: lockout entry" in run.stdout
    assert "also dropped: 1 kept recording(s)" in run.stdout
    assert kept is not None and not kept.exists()
    lock = b"".join(p.read_bytes() for p in data.glob("lockout.db*"))
    assert b"erin" not in lock


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown), as `sudo voxgate` runs")
def test_sudo_users_erase_on_the_shipped_units_layout_is_audited_and_leaves_no_root_files(
    tmp_path: Path,
) -> None:
    """`sudo voxgate users erase` on a door as the unit lays it out (DynamicUser=yes,
    StateDirectory=: /var/lib/voxgate is root's link to private/voxgate, which the service's
    user owns). The erase is in the audit log itself, not only printed (a root command does
    not write the log through a link in that folder; a plain file it does), and the files
    it made (the audit anchor) go to the service's user: behind the link they stayed root's."""
    data, _ = _door_with_erin(tmp_path)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    data.rename(private / "voxgate")
    data.symlink_to("private/voxgate")
    uid = gid = 61236
    for each in [private / "voxgate", *(private / "voxgate").rglob("*")]:
        os.chown(each, uid, gid, follow_symlinks=False)

    run = _cli(tmp_path, "erase", "erin")

    assert run.returncode == 0, run.stderr
    assert "to add by hand" not in run.stderr, run.stderr
    last = json.loads((data / "audit.jsonl").read_bytes().splitlines()[-1])
    assert (last["event"], last["user"]) == ("erase", "Erin")
    assert verify(data / "audit.jsonl").ok
    root_owned = [p.name for p in (private / "voxgate").rglob("*") if p.lstat().st_uid == 0]
    assert root_owned == []


def test_users_export_lists_what_is_held_besides_the_voiceprint(tmp_path: Path) -> None:
    """A data access request got the voiceprint only: not the lockout entry, the audit lines
    naming the person, nor the recordings kept of them."""
    _, kept = _door_with_erin(tmp_path)
    run = _cli(tmp_path, "export", "ERIN")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    held = doc["also_held"]
    assert doc["name"] == "Erin"
    assert held["lockout"]["failures"] == 6
    assert [e["event"] for e in held["audit_events"]] == ["decision"]
    assert held["kept_recordings"] == [str(kept)]
    assert any("journald" in x for x in held["not_included"])


def test_the_exported_lockout_entry_is_the_whole_row(tmp_path: Path) -> None:
    """The lockout entry holds when the person last failed at the door (docs: "failures,
    lock end, last failure"); the export gave the count and the lock end only."""
    data, _ = _door_with_erin(tmp_path)
    run = _cli(tmp_path, "export", "erin")
    assert run.returncode == 0, run.stderr
    entry = json.loads(run.stdout)["also_held"]["lockout"]
    import sqlite3

    db = sqlite3.connect(data / "lockout.db")
    (row,) = db.execute(
        "SELECT failures, locked_until, last_failure FROM lockout WHERE key = 'user:erin'"
    ).fetchall()
    db.close()
    assert entry == {"failures": row[0], "locked_until": row[1], "last_failure": row[2]}
    assert isinstance(entry["last_failure"], float)


def test_every_field_of_an_export_is_described_in_the_docs(tmp_path: Path) -> None:
    """A compliance officer handing an export to the person it is about must be able to say
    what each field is: the docs named a few (`also_held`, `enrolled`) and not `format`,
    `model_sha256`, `version`, `mean` or the lockout entry's fields."""
    import re

    _door_with_erin(tmp_path)
    run = _cli(tmp_path, "export", "erin")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    fields = set(doc) | {f"also_held.{k}" for k in doc["also_held"]}
    fields |= set(doc["also_held"]["lockout"])
    text = (REPO / "docs" / "speaker-verification.md").read_text()
    section = text.split("**Export.**", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([a-z_.0-9]+)`", section))
    assert not fields - named, f"export fields not described: {sorted(fields - named)}"


def test_the_users_help_names_everything_erase_drops_and_export_gives(tmp_path: Path) -> None:
    """`users erase --help` said "voiceprint, lockout entry and kept recordings" and `users
    export --help` "voiceprint, lockout, audit lines, fleet state": neither named the replay
    fingerprints of the person's answers (derived from their voice), which both handle."""
    from voxgate.erasure import held_about

    words = {
        "lockout": "lockout",
        "audit_events": "audit lines",
        "kept_recordings": "kept recordings",
        "replay_fingerprints": "replay fingerprints",
        "fleet": "fleet state",
    }
    held = held_about(VoxgateConfig.model_validate({"data_dir": str(tmp_path)}), "erin")
    assert set(held) - {"not_included"} == set(words)  # a new kind needs its word here
    export = " ".join(_cli(tmp_path, "export", "--help").stdout.split())
    assert all(w in export for w in words.values()), export
    erase = " ".join(_cli(tmp_path, "erase", "--help").stdout.split())
    for dropped in ("lockout entry", "replay fingerprints", "kept recordings"):
        assert dropped in erase, erase


def test_a_running_daemon_clears_the_name_after_voxgate_users_erase(
    device: dict[str, Any], broker: Broker
) -> None:
    """End to end: the real daemon grants Bob (retained `user` = bob), then an admin runs
    `voxgate users erase bob` beside it; a new subscriber must no longer get his name."""
    pytest.importorskip("voxgate.embedding")
    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng")
    done = e2e.enroll(device, "bob", "en+m3")
    assert done.returncode == 0, done.stdout + done.stderr
    daemon = e2e.DaemonProcess(device["config"])
    try:
        daemon.feed(e2e.pause(0.3))
        daemon.wait_log("ready")
        # 'ready' does not wait for the broker (the link connects in the background), and
        # retained_user() gives the door's retained status 5 s: on a loaded machine that
        # was too little once. Wait for the connection first.
        status = Recorder(broker, "ha", [STATUS_TOPIC])
        try:
            status.wait_for(STATUS_TOPIC, lambda m: m.retain or m.payload == b"online", 30)
        finally:
            status.close()
        daemon.feed(
            np.concatenate([e2e.pause(0.5), e2e.speech(e2e.ATTEMPT, "en+m3"), e2e.pause(1.2)])
        )
        wait_until(lambda: retained_user(broker) == b"bob", 30, "bob's grant retained")
        erased = e2e.voxgate("users", "erase", "bob", "-c", str(device["config"]))
        assert erased.returncode == 0, erased.stderr
        daemon.feed(e2e.pause(12.0))  # the daemon's housekeeping runs on audio time too
        wait_until(lambda: retained_user(broker) is None, 15, "the retained name to go")
        daemon.wait_log("no longer enrolled")
        assert daemon.close() == 0, daemon.log()
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()


def test_the_retained_lockout_list_drops_an_erased_user(tmp_path: Path) -> None:
    """The daemon (real loop, real lockout file and store; a recording link in place of
    MQTT) publishes the locked keys; after an MQTT erase-user of a locked user, the list it
    publishes no longer holds `user:<name>`."""
    import threading

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
    import soundfile as sf
    from service_standins import RecordingLink, standin_stages

    from voxgate.audio.file import FileSource
    from voxgate.service.loop import Daemon
    from voxgate.service.notify import Notifier

    wav = tmp_path / "quiet.wav"
    noise = np.random.default_rng(3).normal(0, 20, 16000 * 5).astype(np.int16)
    sf.write(wav, noise, 16000)
    data = tmp_path / "data"
    store = VoiceprintStore(data / "voiceprints.db", KEY)
    store.add_user("Erin", np.eye(3, 8, dtype=np.float32), "test/int8")
    book = LockoutBook(data / "lockout.db", LockoutConfig())
    for _ in range(6):
        book.record("erin", ok=False)  # locked now, for 30 s
    book.close()
    link = RecordingLink()
    stages = standin_stages(FileSource(wav, realtime=True), {}, link, challenge=False)
    stages.store = store
    cfg = VoxgateConfig.model_validate(
        {
            "data_dir": str(data),
            "audio": {"source": "file", "path": str(wav), "realtime": True},
            "metrics": {"enabled": False},
        }
    )
    d = Daemon(cfg, stage_factory=lambda c: stages, notifier=Notifier({}))

    def erase_when_published() -> None:
        wait_until(lambda: bool(link.of("lockout")), 10, "the first lockout list")
        link.handlers["erase-user"]({"user": "erin"})

    eraser = threading.Thread(target=erase_when_published)
    eraser.start()
    assert d.run() == 0
    eraser.join()
    keys = [[e["key"] for e in p] for p in link.of("lockout")]
    assert keys == [["device", "user:erin"], ["device"]]
    store.close()


def test_a_retained_erase_user_command_does_not_keep_the_name_on_the_broker(
    broker: Broker, links: Callable[[], MqttLink]
) -> None:
    """An erase-user sent with retain (a mistake the door refuses to run twice) stayed on
    the broker with the erased person's name in its arguments."""
    from mqtt_helpers import admin_client

    from voxgate.mqtt.commands import make_command

    topic = f"voxgate/{DEV}/cmd/erase-user"
    admin = admin_client(broker)
    cmd = make_command(CKEY, DEV, "erase-user", {"user": "alice"}, now=time.time())
    admin.publish(topic, cmd, qos=1, retain=True).wait_for_publish(5)
    admin.disconnect()
    link = links()  # connects after it: gets the retained copy, refuses and clears it
    wait_until(lambda: link.stats["commands_rejected"] >= 1, 5, "the retained copy seen")

    def retained_command() -> bytes | None:
        late = Recorder(broker, "ha", [topic, STATUS_TOPIC])
        try:
            late.wait_for(STATUS_TOPIC, lambda m: m.retain)
            got = [m.payload for m in late.on(topic) if m.retain]
            return got[0] if got else None
        finally:
            late.close()

    wait_until(lambda: retained_command() is None, 5, "the retained command to go")


def test_users_export_of_an_erased_user_gives_what_is_still_held(tmp_path: Path) -> None:
    """Seen as the compliance officer: after `voxgate users erase erin`, `voxgate users
    export erin` said only "no user 'erin' enrolled", while the audit log (kept by design)
    still named her in the decision and the erase: an access request made after an erase
    was answered "nothing". The export now gives what is still held, marked not enrolled."""
    _door_with_erin(tmp_path)
    assert _cli(tmp_path, "erase", "erin").returncode == 0
    run = _cli(tmp_path, "export", "Erin")
    assert run.returncode == 0, run.stderr
    assert "not enrolled here" in run.stderr
    doc = json.loads(run.stdout)
    assert doc["name"] == "Erin" and doc["enrolled"] is False and "embeddings" not in doc
    assert [e["event"] for e in doc["also_held"]["audit_events"]] == ["decision", "erase"]
    erase_line = doc["also_held"]["audit_events"][1]
    assert "model_id" not in erase_line, erase_line  # was "model_id": null
    run = _cli(tmp_path, "export", "nobody")
    assert run.returncode == 1
    assert "no user 'nobody' enrolled, and nothing else is held about them" in run.stderr


def test_users_erase_reports_what_it_dropped_while_the_daemon_runs(tmp_path: Path) -> None:
    """Seen as the compliance officer, with the daemon running: `voxgate users erase
    "Xavier Plum"` printed only "erased xavier plum", while the daemon's log said it had
    dropped his lockout entry and 4 replay fingerprints. The command told the fleet first (a
    session of up to 5 s) and only then dropped the rest, so the daemon, checking every
    5 s, had often done it already and the command reported nothing. Here the broker never
    answers, so the fleet session takes its full 5 s."""
    import socket

    import yaml

    data, _ = _door_with_erin(tmp_path)
    hole = socket.socket()  # accepts connections (the kernel does) and never answers
    hole.bind(("127.0.0.1", 0))
    hole.listen(8)
    for name in ("decision.key", "fleet.key", "signing.key"):
        (tmp_path / name).write_text(os.urandom(32).hex() + "\n")
        (tmp_path / name).chmod(0o600)
    doc = yaml.safe_load((tmp_path / "voxgate.yaml").read_text())
    doc.update(
        metrics={"enabled": False},
        challenge={"mode": "off"},
        mqtt={
            "host": "127.0.0.1",
            "port": hole.getsockname()[1],
            "hmac_key_file": str(tmp_path / "decision.key"),
        },
        fleet={
            "enabled": True,
            "site": "acme",
            "key_file": str(tmp_path / "fleet.key"),
            "signing_key_file": str(tmp_path / "signing.key"),
            "groups": ["lobby"],
            "access": {"lobby": ["*"]},
        },
    )
    (tmp_path / "voxgate.yaml").write_text(yaml.safe_dump(doc))
    daemon = e2e.DaemonProcess(tmp_path / "voxgate.yaml")
    try:
        daemon.feed(e2e.pause(0.3))
        daemon.wait_log("ready")
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
        env["PYTHONPATH"] = str(REPO / "daemon")
        argv = [sys.executable, "-m", "voxgate", "users", "erase", "erin"]
        erase = subprocess.Popen(
            [*argv, "-c", str(tmp_path / "voxgate.yaml")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        while erase.poll() is None:  # the daemon's housekeeping runs on audio time
            daemon.feed(e2e.pause(1.0))
            time.sleep(0.2)
        out, err = erase.communicate()
        assert erase.returncode == 0, err
        daemon.wait_log("no longer enrolled")
        assert daemon.close() == 0, daemon.log()
    finally:
        hole.close()
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    assert "also dropped: lockout entry" in out, out + err
    assert "also dropped: 1 kept recording(s)" in out, out + err
    assert b"erin" not in b"".join(p.read_bytes() for p in data.glob("lockout.db*"))


# `voxgate users export NAME` wrote no audit line, while the admin API's export writes
# `admin_export`: a request for someone's biometric data made on the command line left no
# trace. It is audited now, and a log that cannot be written does not withhold the export.


def _audit_at(tmp_path: Path, path: Path) -> None:
    conf = tmp_path / "voxgate.yaml"
    cfg = yaml.safe_load(conf.read_text())
    cfg["audit"] = {"path": str(path)}
    conf.write_text(yaml.safe_dump(cfg))


def test_users_export_writes_an_audit_event(tmp_path: Path) -> None:
    data, _ = _door_with_erin(tmp_path)
    run = _cli(tmp_path, "export", "ERIN")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["name"] == "Erin"
    lines = [json.loads(x) for x in (data / "audit.jsonl").read_text().splitlines()]
    last = lines[-1]
    assert (last["event"], last["user"], last["via"]) == ("admin_export", "Erin", "cli")
    assert verify(data / "audit.jsonl").ok
    out = tmp_path / "erin.json"
    assert _cli(tmp_path, "export", "erin", "-o", str(out)).returncode == 0
    lines = (data / "audit.jsonl").read_text().splitlines()
    assert [json.loads(x)["event"] for x in lines[-2:]] == ["admin_export", "admin_export"]


def test_an_export_is_given_when_the_audit_disk_is_full(tmp_path: Path) -> None:
    data, _ = _door_with_erin(tmp_path)
    with small_fs(tmp_path / "auditfs", "1m") as folder:
        log = folder / "audit.jsonl"
        shutil.copy(data / "audit.jsonl", log)
        (folder / "audit.jsonl.anchor").touch()
        # tmpfs keeps the slack of a file's last page: leave less than a line there.
        audit = AuditLog(log)
        while 4096 - log.stat().st_size % 4096 > 100:
            audit.append("service_start", device="filler")
        _audit_at(tmp_path, log)
        fill(folder)
        run = _cli(tmp_path, "export", "erin")
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["name"] == "Erin"
        assert "this export is not in it" in run.stderr and "to add by hand" in run.stderr
        line = json.loads(run.stderr.strip().splitlines()[-1])
        assert (line["event"], line["user"], line["via"]) == ("admin_export", "Erin", "cli")


def test_an_export_is_given_when_the_audit_log_cannot_be_opened(tmp_path: Path) -> None:
    """The log's signing key (audit.key_file) is missing: the log cannot be opened."""
    _door_with_erin(tmp_path)
    conf = tmp_path / "voxgate.yaml"
    cfg = yaml.safe_load(conf.read_text())
    cfg["audit"] = {"key_file": str(tmp_path / "gone.key")}
    conf.write_text(yaml.safe_dump(cfg))
    run = _cli(tmp_path, "export", "erin")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["name"] == "Erin"
    assert "could not write the audit log" in run.stderr
    line = json.loads(run.stderr.strip().splitlines()[-1])
    assert (line["event"], line["user"], line["via"]) == ("admin_export", "Erin", "cli")


def test_an_export_to_a_file_does_not_write_through_a_link_left_at_its_temporary_name(
    tmp_path: Path,
) -> None:
    """`users export -o erin.json` wrote to `.erin.json.tmp` (opened with O_TRUNC, links
    followed), then renamed that name over erin.json. A symlink found there (left in a shared
    folder) had the export written into the file it pointed at, truncating it, and erin.json
    became that link: the person's biometric data in a file of someone else's choosing."""
    _door_with_erin(tmp_path)
    out_dir = tmp_path / "exports"
    out_dir.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("not an export\n")
    (out_dir / ".erin.json.tmp").symlink_to(victim)
    run = _cli(tmp_path, "export", "erin", "-o", str(out_dir / "erin.json"))
    assert run.returncode == 0, run.stderr
    assert victim.read_text() == "not an export\n"
    out = out_dir / "erin.json"
    assert not out.is_symlink()
    assert json.loads(out.read_text())["name"] == "Erin"
    assert out.stat().st_mode & 0o777 == 0o600
    # Only the export itself is left beside it (the link was not ours to remove).
    assert sorted(p.name for p in out_dir.iterdir()) == [".erin.json.tmp", "erin.json"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown), as `sudo voxgate` runs")
def test_sudo_users_erase_with_a_piped_config_hands_over_the_folder_it_wrote_to(
    tmp_path: Path,
) -> None:
    """The hand-over after a root command read the config again: given as a pipe
    (`-c <(...)`), it was empty the second time, so the defaults' data folder was handed
    over and the files the erase made in the door's own folder stayed root's."""
    data, _ = _door_with_erin(tmp_path)
    uid = gid = 61237
    for each in [data, *data.rglob("*")]:
        os.chown(each, uid, gid, follow_symlinks=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    env["PYTHONPATH"] = str(REPO / "daemon")
    config = tmp_path / "voxgate.yaml"
    run = subprocess.run(
        ["bash", "-c", f'"{sys.executable}" -m voxgate users erase erin -c <(cat "{config}")'],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "erased Erin" in run.stdout
    root_owned = [p.name for p in data.rglob("*") if p.lstat().st_uid == 0]
    assert root_owned == []
