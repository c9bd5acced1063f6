"""Audit log: the chain catches every kind of tampering; full disks and crashes lose nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from voxgate.audit import AuditLog, anchor_path_for, verify

REPO = Path(__file__).resolve().parents[2]


def write_log(path: Path, n: int = 6, key: bytes | None = None) -> AuditLog:
    log = AuditLog(path, key=key)
    for i in range(n):
        log.append("decision", outcome="denied" if i % 2 else "granted", user=f"u{i}", score=0.5)
    return log


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_intact_log_verifies(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    write_log(p)
    rep = verify(p)
    assert rep.ok, rep.problems
    assert rep.lines == 6 and rep.head_seq == 6
    recs = [json.loads(x) for x in lines(p)]
    assert [r["seq"] for r in recs] == [1, 2, 3, 4, 5, 6]
    assert recs[1]["prev"] == recs[0]["hash"]
    assert oct(p.stat().st_mode & 0o777) == "0o600"


def test_anchor_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)  # a command run from a shell, not the daemon's unit (UMask=0077)
    try:
        AuditLog(tmp_path / "audit.jsonl").append("erase", user="alice")
    finally:
        os.umask(old)
    assert oct((tmp_path / "audit.jsonl.anchor").stat().st_mode & 0o777) == "0o600"


def test_values_from_numpy_and_paths_are_stored(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    AuditLog(p).append("x", score=np.float32(0.25), n=np.int64(3), where=p, bad=float("nan"))
    rec = json.loads(p.read_text())
    assert (rec["score"], rec["n"], rec["where"], rec["bad"]) == (0.25, 3, str(p), None)
    assert verify(p).ok


def test_reserved_field_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="hash"):
        AuditLog(tmp_path / "a.jsonl").append("x", hash="mine")


def _edit(ls: list[bytes]) -> list[bytes]:
    rec = json.loads(ls[2])
    rec["outcome"] = "granted" if rec["outcome"] == "denied" else "denied"
    return [*ls[:2], json.dumps(rec).encode() + b"\n", *ls[3:]]


def _insert(ls: list[bytes]) -> list[bytes]:
    # A forged line with a correct hash of its own, chained to line 3.
    from voxgate.audit import canonical, line_hash

    prev = json.loads(ls[2])
    rec = {
        "seq": 4,
        "ts": prev["ts"],
        "event": "decision",
        "outcome": "granted",
        "prev": prev["hash"],
    }
    rec["hash"] = line_hash(rec)
    return [*ls[:3], canonical(rec) + b"\n", *ls[3:]]


TAMPERING = {
    "edited": (_edit, "edited"),
    "inserted": (_insert, "chain broken"),
    "reordered": (lambda ls: [ls[0], ls[2], ls[1], *ls[3:]], "chain broken"),
    "removed": (lambda ls: [*ls[:2], *ls[3:]], "chain broken"),
    "removed first": (lambda ls: ls[1:], "chain broken"),
    "truncated tail": (lambda ls: ls[:-2], "truncated"),
    "torn tail": (lambda ls: [*ls[:-1], ls[-1][:20]], "torn"),
    "appended": (lambda ls: [*ls, ls[-1]], "chain broken"),
}


@pytest.mark.parametrize("how", list(TAMPERING))
def test_tampering_is_detected(tmp_path: Path, how: str) -> None:
    p = tmp_path / "audit.jsonl"
    write_log(p)
    change, expect = TAMPERING[how]
    p.write_bytes(b"".join(change(lines(p))))
    rep = verify(p)
    assert not rep.ok
    assert any(expect in problem for problem in rep.problems), rep.problems


def test_truncation_needs_the_anchor(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    write_log(p)
    p.write_bytes(b"".join(lines(p)[:-2]))
    assert verify(p, use_anchor=False).ok  # the chain alone cannot see a cut tail
    assert not verify(p).ok
    anchor_path_for(p).unlink()
    assert any("anchor missing" in x for x in verify(p).problems)


def test_signed_anchor(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    key = os.urandom(32)
    write_log(p, key=key)
    assert verify(p, key=key).ok
    assert not verify(p, key=b"another key").ok
    # Cut the tail and forge a matching unsigned anchor: the chain is fine, the signature not.
    ls = lines(p)[:-1]
    p.write_bytes(b"".join(ls))
    head = json.loads(ls[-1])
    anchor_path_for(p).write_text(json.dumps({"seq": head["seq"], "hash": head["hash"]}))
    assert verify(p).ok  # without the key this rollback is invisible (documented limit)
    rep = verify(p, key=key)
    assert any("signature" in x for x in rep.problems)


def test_restart_continues_the_chain(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    write_log(p, 3)
    again = AuditLog(p)
    assert again.seq == 3
    again.append("config_reload", ok=True)
    rep = verify(p)
    assert rep.ok and rep.head_seq == 4


def test_torn_last_line_is_removed_and_recorded_on_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    p = tmp_path / "audit.jsonl"
    write_log(p, 3)
    with open(p, "ab") as f:
        f.write(b'{"seq":4,"ts":1,"eve')  # a crash mid-write (never anchored)
    log = AuditLog(p)
    assert "torn line" in caplog.text
    log.append("decision", outcome="granted")
    rep = verify(p)
    assert rep.ok, rep.problems
    events = [json.loads(x)["event"] for x in lines(p)]
    assert events[3:] == ["audit_torn_tail", "decision"]


def test_lines_removed_while_stopped_are_recorded_on_open(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    write_log(p, 4)
    p.write_bytes(b"".join(lines(p)[:2]))
    AuditLog(p)  # re-anchors, but writes down that the anchor said 4
    rec = json.loads(lines(p)[-1])
    assert rec["event"] == "audit_anchor_gap" and rec["anchored_seq"] == 4
    # Recorded, and still tampering: the re-anchored log must not verify as intact.
    assert any("2 line(s) removed" in x for x in verify(p).problems)


def test_full_disk_keeps_lines_in_memory_and_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # /dev/full fails every write with a real ENOSPC.
    p = tmp_path / "audit.jsonl"
    p.symlink_to("/dev/full")
    log = AuditLog(p, anchor=tmp_path / "anchor")
    rec = log.append("decision", outcome="granted")
    log.append("decision", outcome="denied")
    assert rec["seq"] == 1
    assert "disk full" in caplog.text
    assert log.pending == 2 and log.write_errors >= 1
    # Space comes back (the link now points at a real file): held lines are written in order.
    p.unlink()
    assert log.flush_pending() == 0
    log.append("decision", outcome="retry")
    rep = verify(p, tmp_path / "anchor")
    assert rep.ok, rep.problems
    assert [json.loads(x)["outcome"] for x in lines(p)] == ["granted", "denied", "retry"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`voxgate audit ARGS` as a process, with no audit key from the environment."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "daemon")}
    env.pop("VOXGATE_AUDIT_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "voxgate", "audit", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_cli_verify(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    key_file = tmp_path / "audit-key"
    key_file.write_bytes(b"k" * 32)
    key_file.chmod(0o600)
    write_log(p, key=b"k" * 32)
    ok = cli("verify", str(p), "--key-file", str(key_file))
    assert ok.returncode == 0, ok.stderr
    assert "intact, 6 line(s)" in ok.stdout
    shown = cli("show", "-n", "2", str(p))
    assert shown.returncode == 0 and shown.stdout.count("decision") == 2
    p.write_bytes(b"".join(_edit(lines(p))))
    bad = cli("verify", str(p))
    assert bad.returncode == 1
    assert "line 3 (seq 3): edited" in bad.stderr


def test_cli_verify_reads_the_path_from_config(tmp_path: Path) -> None:
    cfg = tmp_path / "voxgate.yaml"
    cfg.write_text(f"data_dir: {tmp_path}\n")
    write_log(tmp_path / "audit.jsonl", 2)
    res = cli("verify", "-c", str(cfg))
    assert res.returncode == 0 and "2 line(s)" in res.stdout
    cfg.write_text("data_dir: [\n")
    assert cli("verify", "-c", str(cfg)).returncode == 78


def test_cli_verify_checks_the_signature_with_the_key_the_config_names(tmp_path: Path) -> None:
    """`voxgate audit verify -c CONFIG` found the log from the config but not its key
    (audit.key_file): it printed "pass the audit key" and "intact" for an anchor signed
    with another key, i.e. a log rebuilt by someone without the door's key."""
    key_file = tmp_path / "audit-key"
    key_file.write_bytes(b"k" * 32)
    key_file.chmod(0o600)
    cfg = tmp_path / "voxgate.yaml"
    cfg.write_text(f"data_dir: {tmp_path}\naudit: {{key_file: {key_file}}}\n")
    log = tmp_path / "audit.jsonl"
    write_log(log, 3, key=b"k" * 32)
    good = cli("verify", "-c", str(cfg))
    assert good.returncode == 0, good.stdout + good.stderr
    assert "pass the audit key" not in good.stdout
    AuditLog(log, key=b"x" * 32).append("decision", outcome="granted")  # a forged head
    forged = cli("verify", "-c", str(cfg))
    assert forged.returncode == 1, forged.stdout + forged.stderr
    key_file.unlink()
    missing = cli("verify", "-c", str(cfg))
    assert missing.returncode == 2 and "audit-key" in missing.stderr


def test_two_writers_share_one_chain(tmp_path: Path) -> None:
    # The daemon and an admin's `voxgate enroll` append to the same file.
    p = tmp_path / "audit.jsonl"
    daemon, admin = AuditLog(p), AuditLog(p)
    daemon.append("service_start")
    admin.append("enrollment", user="alice")
    rec = daemon.append("decision", outcome="granted", user="alice")
    assert rec["seq"] == 3
    rep = verify(p)
    assert rep.ok, rep.problems
    assert rep.head_seq == 3


def test_concurrent_processes_keep_the_chain(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    code = (
        "import sys; from voxgate.audit import AuditLog\n"
        "log = AuditLog(sys.argv[1], fsync=False)\n"
        "for i in range(400): log.append('decision', writer=sys.argv[2], i=i)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "daemon")}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(p), name], env=env)
        for name in ("a", "b", "c", "d")
    ]
    assert [proc.wait(60) for proc in procs] == [0, 0, 0, 0]
    rep = verify(p)
    assert rep.ok, rep.problems[:3]
    assert rep.lines == 1600


def test_a_damaged_last_line_is_reported_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    p = tmp_path / "audit.jsonl"
    write_log(p, 3)
    with open(p, "ab") as f:
        f.write(b"\x00\x00garbage from a bad sector\n")
    log = AuditLog(p)
    assert "damaged" in caplog.text
    log.append("decision", outcome="granted")
    rep = verify(p, use_anchor=False)
    assert len(rep.problems) == 1 and rep.problems[0].startswith("line 4: not an audit record")
    # The damaged line is seq 4 (never anchored): the daemon records the gap, then goes on.
    tail = [json.loads(x) for x in lines(p)[-2:]]
    assert [(r["seq"], r["event"]) for r in tail] == [(5, "audit_anchor_gap"), (6, "decision")]


# -- the writer must not sign over tampering it finds (attack review) -------------------------
# Every append re-reads the head from the file and re-anchors it, and a start re-anchored a
# log whose anchor disagreed with only a note: lines cut off (or the last line edited and its
# hash recomputed) were laundered by the door's next decision, and `verify` said intact.


def test_a_tail_cut_while_the_door_runs_is_still_reported_after_its_next_line(
    tmp_path: Path,
) -> None:
    p, key = tmp_path / "audit.jsonl", b"k" * 32
    log = write_log(p, 6, key=key)
    p.write_bytes(b"".join(lines(p)[:3]))  # someone with write access to the data folder
    log.append("decision", outcome="denied", user="u9")  # the door's next decision
    rep = verify(p, key=key)
    assert not rep.ok
    assert any("6" in x and "removed" in x for x in rep.problems), rep.problems


def test_a_tail_cut_while_stopped_is_still_reported_after_a_restart(tmp_path: Path) -> None:
    p, key = tmp_path / "audit.jsonl", b"k" * 32
    write_log(p, 6, key=key)
    p.write_bytes(b"".join(lines(p)[:2]))
    AuditLog(p, key=key).append("service_start")
    key_file = tmp_path / "audit-key"
    key_file.write_bytes(key)
    key_file.chmod(0o600)
    res = cli("verify", str(p), "--key-file", str(key_file))
    assert res.returncode == 1, res.stdout + res.stderr


def test_an_edited_last_line_with_its_hash_recomputed_is_reported_after_the_next_line(
    tmp_path: Path,
) -> None:
    from voxgate.audit import canonical, line_hash

    p, key = tmp_path / "audit.jsonl", b"k" * 32
    write_log(p, 4, key=key)
    ls = lines(p)
    last = json.loads(ls[-1])
    last["outcome"] = "denied" if last["outcome"] == "granted" else "granted"
    last["hash"] = line_hash(last)
    p.write_bytes(b"".join(ls[:-1]) + canonical(last) + b"\n")
    AuditLog(p, key=key).append("decision", outcome="granted", user="u9")
    rep = verify(p, key=key)
    assert not rep.ok, rep.notes


def test_an_unsigned_anchor_forged_for_a_cut_log_is_not_signed_over(tmp_path: Path) -> None:
    p, key = tmp_path / "audit.jsonl", b"k" * 32
    write_log(p, 6, key=key)
    ls = lines(p)[:3]
    p.write_bytes(b"".join(ls))
    head = json.loads(ls[-1])
    anchor_path_for(p).write_text(json.dumps({"seq": head["seq"], "hash": head["hash"]}))
    AuditLog(p, key=key).append("service_start")  # the door signs the next head
    rep = verify(p, key=key)
    assert not rep.ok
    assert any("signature" in x for x in rep.problems), rep.problems


def test_a_line_written_just_before_a_crash_without_its_anchor_stays_a_note(
    tmp_path: Path,
) -> None:
    # The benign gap: the old anchor names a line that is still in the log, unchanged.
    p, key = tmp_path / "audit.jsonl", b"k" * 32
    log = write_log(p, 4, key=key)
    anchored = anchor_path_for(p).read_bytes()
    log.append("decision", outcome="granted", user="u4")
    anchor_path_for(p).write_bytes(anchored)  # the power went before the anchor was replaced
    AuditLog(p, key=key).append("service_start")
    rep = verify(p, key=key)
    assert rep.ok, rep.problems
    assert any("audit_anchor_gap" in n for n in rep.notes)


def test_a_writer_without_the_key_leaves_the_signed_anchor_for_the_door_to_renew(
    tmp_path: Path,
) -> None:
    # `voxgate users erase` run by root on a door whose key comes by LoadCredential= has no
    # key: its unsigned anchor over the signed one read as a forged anchor to the daemon.
    p, key = tmp_path / "audit.jsonl", b"k" * 32
    write_log(p, 3, key=key)
    admin = AuditLog(p)  # the admin's command, no key
    admin.append("erase", user="u1")
    admin.append("erase", user="u2")
    assert "mac" in json.loads(anchor_path_for(p).read_text())
    AuditLog(p, key=key).append("service_start")  # the door's next line
    rep = verify(p, key=key)
    assert rep.ok, rep.problems
    events = [json.loads(x)["event"] for x in lines(p)]
    assert events[3:] == ["erase", "erase", "audit_anchor_gap", "service_start"]


def test_an_anchor_signature_with_non_ascii_characters_is_a_problem_not_a_traceback(
    tmp_path: Path,
) -> None:
    # hmac.compare_digest raises TypeError on non-ASCII strings: verify crashed, and so did
    # the door's start once it compared the anchor.
    p, key = tmp_path / "audit.jsonl", b"k" * 32
    write_log(p, 2, key=key)
    head = json.loads(lines(p)[-1])
    anchor_path_for(p).write_text(json.dumps({"seq": 2, "hash": head["hash"], "mac": "\u00e9"}))
    assert any("signature" in x for x in verify(p, key=key).problems)
    AuditLog(p, key=key).append("service_start")
    assert any("signature is bad" in x for x in verify(p, key=key).problems)


def test_an_anchor_with_a_huge_number_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    # int(1e400) raises OverflowError: verify crashed, and so did the door's start.
    p = tmp_path / "audit.jsonl"
    write_log(p, 2)
    anchor_path_for(p).write_text('{"seq": 1e400, "hash": "h"}')
    assert any("unreadable anchor" in x for x in verify(p).problems)
    AuditLog(p).append("service_start")
    assert any("anchor missing or unreadable" in x for x in verify(p).problems)


def test_a_last_line_with_a_huge_seq_is_reported_and_the_door_still_starts(
    tmp_path: Path,
) -> None:
    p = tmp_path / "audit.jsonl"
    write_log(p, 2)
    with open(p, "ab") as f:
        f.write(b'{"seq": 1e400, "hash": "x", "prev": "y", "event": "z"}\n')
    AuditLog(p).append("service_start")  # raised OverflowError
    assert not verify(p).ok


def test_an_unsigned_anchor_checked_with_a_key_is_named_unsigned_not_a_wrong_key(
    tmp_path: Path,
) -> None:
    # Found running `voxgate audit verify LOG --key-file KEY` (the --help example) on the log
    # of a door without an audit key: "signature does not match (wrong key or forged
    # anchor)", where the anchor carried no signature at all. Still a problem (a stripped
    # signature looks the same), but one that says what it is.
    p = tmp_path / "audit.jsonl"
    write_log(p)  # no key: the door writes an unsigned anchor
    rep = verify(p, key=os.urandom(32))
    assert not rep.ok
    (problem,) = rep.problems
    assert "anchor is not signed" in problem and "audit key" in problem, problem
    assert "wrong key" not in problem


@pytest.mark.parametrize("trace", ["decision-seq", "lockout", "voiceprints"])
def test_verify_says_a_door_that_has_run_has_lost_its_log(tmp_path: Path, trace: str) -> None:
    """`voxgate audit verify` on a door whose audit log and anchor were both deleted said
    "intact, 0 line(s)", as for a fresh door. Each of the door's other files is only made
    by something that is audited (a signed decision, the daemon's start, an enrollment), so
    with one of them there the log is lost; a fresh door has nothing to verify yet."""
    from voxgate.config.service import LockoutConfig
    from voxgate.decision import SequenceCounter
    from voxgate.lockout import LockoutBook
    from voxgate.voiceprints import VoiceprintStore

    cfg = tmp_path / "voxgate.yaml"
    cfg.write_text(f"data_dir: {tmp_path}\n")
    fresh = cli("verify", "-c", str(cfg))
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert "no audit log yet" in fresh.stdout and "nothing to verify" in fresh.stdout
    if trace == "decision-seq":
        SequenceCounter(tmp_path / "decision-seq.json").next()
        named = "decision-seq.json"
    elif trace == "lockout":
        LockoutBook(tmp_path / "lockout.db", LockoutConfig()).close()
        named = "lockout.db"
    else:
        rng = np.random.default_rng(1)
        emb = rng.normal(size=(3, 16)).astype(np.float32)
        with VoiceprintStore(tmp_path / "voiceprints.db", os.urandom(32)) as store:
            store.add_user("alice", emb / np.linalg.norm(emb, axis=1, keepdims=True), "m")
        named = "voiceprints.db holds 1 voiceprint"
    for args in (("-c", str(cfg)), (str(tmp_path / "audit.jsonl"),)):
        lost = cli("verify", *args)
        assert lost.returncode == 1, lost.stdout + lost.stderr
        assert "NOT intact" in lost.stderr and "has run" in lost.stderr, lost.stderr
        assert named in lost.stderr, lost.stderr
        assert "intact" not in lost.stdout


def test_a_log_emptied_in_place_is_lost_like_a_deleted_one(tmp_path: Path) -> None:
    """Emptying the log in place and deleting its anchor was the documented way to start a
    new log, and the daemon's start took it for a fresh one: anyone who could write both
    files erased the history unseen. On a door that has run it is a lost log now, as a
    deleted one is (`voxgate audit rotate` begins a new log, tests/unit/test_audit_rotate.py)."""
    from voxgate.audit import open_log
    from voxgate.config import load_config
    from voxgate.config.service import LockoutConfig
    from voxgate.lockout import LockoutBook

    cfg_file = tmp_path / "voxgate.yaml"
    cfg_file.write_text(f"data_dir: {tmp_path}\n")
    cfg = load_config(cfg_file)
    LockoutBook(tmp_path / "lockout.db", LockoutConfig()).close()  # the door has run
    p = tmp_path / "audit.jsonl"
    write_log(p, 3)
    p.write_bytes(b"")
    anchor_path_for(p).unlink()
    open_log(cfg, note_loss=True).append("service_start")
    assert [json.loads(x)["event"] for x in lines(p)] == ["audit_log_lost", "service_start"]
    assert not verify(p).ok

    p.unlink()
    anchor_path_for(p).unlink()
    open_log(cfg, note_loss=True).append("service_start")
    events = [json.loads(x) for x in lines(p)]
    assert [e["event"] for e in events] == ["audit_log_lost", "service_start"]
    assert events[0]["found"] == [f"{tmp_path / 'lockout.db'} exists (made at the daemon's start)"]
    rep = verify(p)
    assert not rep.ok and "history before this line is lost" in rep.problems[0], rep.problems


def _second_value_in_front(line: bytes) -> bytes:
    return line.replace(b'"user":"u2"', b'"user":"mallory","user":"u2"')


def test_a_value_added_in_front_of_a_key_is_reported_as_an_edit(tmp_path: Path) -> None:
    # json keeps the last of two values, so the hash still matched; a reader taking the
    # first (or a person) read "mallory" in a log verify called intact.
    p = tmp_path / "audit.jsonl"
    write_log(p)
    ls = lines(p)
    p.write_bytes(b"".join([*ls[:2], _second_value_in_front(ls[2]), *ls[3:]]))
    problems = verify(p).problems
    assert problems == [
        "line 3 (seq 3): edited (the key 'user' appears twice: a value was added in front of "
        "the one its hash covers)"
    ]


DEEP = b"[" * 20000 + b"]" * 20000  # well under the 64 kB the door reads back at its start


def test_a_deeply_nested_line_is_a_damaged_line_not_a_traceback(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    write_log(p, 2)
    with open(p, "ab") as f:
        f.write(DEEP + b"\n")
    assert "line 3: not an audit record (nested too deeply)" in verify(p).problems
    AuditLog(p).append("service_start")  # raised RecursionError: the door did not start
    assert not verify(p).ok


def test_a_deeply_nested_anchor_is_unreadable_not_a_traceback(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    write_log(p, 2)
    anchor_path_for(p).write_bytes(DEEP)
    assert any("unreadable anchor (nested too deeply)" in x for x in verify(p).problems)
    AuditLog(p).append("service_start")  # raised RecursionError
    assert any("anchor missing or unreadable" in x for x in verify(p).problems)


def test_a_seq_that_is_not_a_number_is_named_as_written(tmp_path: Path) -> None:
    # "seq": "2" read "seq 2 where 2 was expected"; "seq": true at line 1 passed as 1.
    from voxgate.audit import canonical, line_hash

    p = tmp_path / "audit.jsonl"
    write_log(p, 2)
    ls = lines(p)
    rec = json.loads(ls[1])
    rec["seq"] = "2"
    rec["hash"] = line_hash(rec)  # rewritten consistently, as whoever has no key can
    p.write_bytes(ls[0] + canonical(rec) + b"\n")
    assert "line 2: seq '2' where 2 was expected" in verify(p, use_anchor=False).problems
    first = json.loads(ls[0])
    first["seq"] = True
    first["hash"] = line_hash(first)
    p.write_bytes(canonical(first) + b"\n")
    assert verify(p, use_anchor=False).problems == ["line 1: seq True where 1 was expected"]


def test_a_hash_escaped_to_a_lone_surrogate_is_damage_not_a_traceback(tmp_path: Path) -> None:
    # "\ud800" is valid JSON in valid UTF-8, but no string holding it can be encoded: chained
    # from (the last line) or signed over (the anchor), it crashed verify and the door's start.
    key = b"k" * 32
    p = tmp_path / "audit.jsonl"
    write_log(p, 2, key=key)
    ls = lines(p)
    p.write_bytes(ls[0] + ls[1].replace(b'"hash":"', b'"hash":"\\ud800', 1))
    assert "line 2: not an audit record (the hash is not ASCII text)" in verify(p, key=key).problems
    AuditLog(p, key=key).append("service_start")  # raised UnicodeEncodeError
    assert not verify(p, key=key).ok

    q = tmp_path / "other.jsonl"
    write_log(q, 2, key=key)
    anchor = anchor_path_for(q)
    anchor.write_text(anchor.read_text().replace('"hash":"', '"hash":"\\ud800', 1))
    problems = verify(q, key=key).problems
    assert any("unreadable anchor (the hash is not ASCII text)" in x for x in problems)
    AuditLog(q, key=key).append("service_start")  # raised UnicodeEncodeError
    assert any("anchor missing or unreadable" in x for x in verify(q, key=key).problems)


def test_verify_reads_the_log_line_by_line_not_whole(tmp_path: Path) -> None:
    # Read whole and split, a log took more than twice its size in memory: a busy door's
    # year (117 MB) needed 359 MB, more than a Pi Zero 2 W has beside the daemon.
    import tracemalloc

    from voxgate.audit import GENESIS, canonical, line_hash

    p = tmp_path / "audit.jsonl"
    head = GENESIS
    with open(p, "wb") as f:
        for seq in range(1, 8001):
            rec = {"seq": seq, "ts": 1.0, "event": "decision", "pad": "x" * 900, "prev": head}
            rec["hash"] = head = line_hash(rec)
            f.write(canonical(rec) + b"\n")
    anchor_path_for(p).write_text(json.dumps({"seq": 8000, "hash": head}))
    size = p.stat().st_size
    tracemalloc.start()
    try:
        rep = verify(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rep.ok and rep.lines == 8000, rep.problems
    assert peak < size / 2, (peak, size)


def test_the_anchor_is_not_written_through_a_link_left_at_a_temporary_name(
    tmp_path: Path,
) -> None:
    # The service user owns the data folder; a root shell's `voxgate users erase` writes the
    # anchor there. A link at the fixed "<anchor>.tmp" had it truncate and overwrite the
    # file the link pointed at.
    p = tmp_path / "audit.jsonl"
    victim = tmp_path / "shadow"
    victim.write_text("root:secret\n")
    (tmp_path / "audit.jsonl.anchor.tmp").symlink_to(victim)
    log = AuditLog(p)
    log.append("erase", user="bob")
    assert victim.read_text() == "root:secret\n"
    assert verify(p).ok
    assert sorted(x.name for x in tmp_path.iterdir()) == [
        "audit.jsonl",
        "audit.jsonl.anchor",
        "audit.jsonl.anchor.tmp",  # the link, left as it was
        "shadow",
    ]


def test_a_failed_anchor_write_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "audit.jsonl"
    log = AuditLog(p)

    def full(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    log.append("x")
    # A fresh name each time, none left behind; the anchor is the one the open wrote (seq 0).
    names = sorted(x.name for x in tmp_path.iterdir())
    assert names == ["audit.jsonl", "audit.jsonl.anchor"], names
    assert json.loads((tmp_path / "audit.jsonl.anchor").read_text())["seq"] == 0


def test_a_root_command_does_not_append_through_a_link_the_folders_owner_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The service user owns the data folder and can leave audit.jsonl as a link to a root
    # file; `sudo voxgate users erase` appended its lines there, one quoting the anchor (also
    # theirs): a "$(...)" in /root/.bashrc runs at root's next login.
    import logging

    folder = tmp_path / "data"
    folder.mkdir()
    if os.geteuid() == 0:
        os.chown(folder, 1234, 1234)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    victim = tmp_path / "bashrc"
    victim.write_text("alias ll='ls -l'\n")
    (folder / "audit.jsonl").symlink_to(victim)
    anchor_path_for(folder / "audit.jsonl").write_text('{"seq": 9, "hash": "$(id>/tmp/x)"}')
    with caplog.at_level(logging.ERROR, logger="voxgate.audit"):
        log = AuditLog(folder / "audit.jsonl")
        log.append("erase", user="bob")
    assert victim.read_text() == "alias ll='ls -l'\n"
    assert log.pending and "which a root command does not write through" in caplog.text
