"""Signed decisions: the documented test vector, and every way a decision must be refused."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from voxgate.decision import (
    DECISION_DOMAIN,
    Decision,
    DecisionError,
    Issuer,
    ReplayGuard,
    SequenceCounter,
    seal,
    sign,
    verify,
)

if TYPE_CHECKING:
    from collections.abc import Callable

DOCS = Path(__file__).resolve().parents[2] / "docs" / "mqtt.md"
KEY = b"k" * 32
NOW = 1_767_225_600.0


def _vector(name: str) -> str:
    text = DOCS.read_text()
    m = re.search(rf"<!-- vector:{name} -->\n```\w*\n(.*?)\n```", text, re.S)
    assert m, f"docs/mqtt.md lacks the vector:{name} block"
    return m.group(1)


def _decision(**kw: object) -> Decision:
    base: dict[str, object] = dict(
        device="front-door",
        outcome="granted",
        user="alice",
        issued_at=NOW,
        expires_at=NOW + 5,
        nonce="ab" * 16,
        seq=7,
        speaker_score=0.8,
        speaker_threshold=0.6,
        liveness_ok=True,
        reasons=("speaker-match",),
    )
    base.update(kw)
    return Decision(**base)  # type: ignore[arg-type]


def test_documented_vector_matches_code_and_plain_hmac() -> None:
    key = _vector("key").encode()
    body = _vector("body")
    sig = _vector("sig")
    payload = _vector("payload").encode()
    # Independent of voxgate: what a lock in any language computes.
    assert (
        hmac.new(key, b"voxgate.decision.v1\n" + body.encode(), hashlib.sha256).hexdigest() == sig
    )
    assert json.loads(payload) == {"alg": "HMAC-SHA256", "body": body, "sig": sig}
    d = verify(payload, key, now=1767225601.0, replay_guard=None)
    assert (d.device, d.outcome, d.user, d.seq) == ("front-door", "granted", "alice", 42)
    # And the code produces exactly these bytes from the same decision.
    assert sign(d, key) == payload


def test_round_trip_keeps_fields() -> None:
    d = _decision(liveness_ok=None, user=None, outcome="denied", reasons=("low-score", "x"))
    got = verify(sign(d, KEY), KEY, NOW + 1, None)
    assert got == d


@pytest.mark.parametrize(
    "mutate",
    [
        lambda env: env.__setitem__("body", env["body"].replace('"alice"', '"mallory"')),
        lambda env: env.__setitem__("body", env["body"].replace('"denied"', '"granted"')),
        lambda env: env.__setitem__("body", env["body"].replace('"seq":7', '"seq":8')),
        lambda env: env.__setitem__("sig", "0" * 64),
        lambda env: env.__setitem__("sig", env["sig"][:-2]),
    ],
    ids=["user", "outcome", "seq", "zero-sig", "short-sig"],
)
def test_tampered_is_bad_signature(mutate: Callable[[dict[str, str]], None]) -> None:
    env = json.loads(sign(_decision(outcome="denied"), KEY))
    mutate(env)
    with pytest.raises(DecisionError) as e:
        verify(json.dumps(env).encode(), KEY, NOW + 1, None)
    assert e.value.reason == "bad-signature"


def test_wrong_key_and_domain() -> None:
    payload = sign(_decision(), KEY)
    with pytest.raises(DecisionError, match="bad-signature"):
        verify(payload, b"another key", NOW + 1, None)
    # Same key, other domain (e.g. a command re-sent as a decision): refused.
    other = seal(_decision().to_body(), KEY, b"voxgate.command.v1\n")
    with pytest.raises(DecisionError, match="bad-signature"):
        verify(other, KEY, NOW + 1, None)


@pytest.mark.parametrize(
    ("now", "kw", "reason"),
    [
        (NOW + 5, {}, "expired"),
        (NOW + 100, {}, "expired"),
        (NOW - 10, {}, "not-yet-valid"),
        (NOW + 1, {"expires_at": NOW + 600}, "bad-validity"),
        (NOW + 1, {"expires_at": NOW}, "bad-validity"),
    ],
)
def test_freshness(now: float, kw: dict[str, float], reason: str) -> None:
    with pytest.raises(DecisionError) as e:
        verify(sign(_decision(**kw), KEY), KEY, now, None)
    assert e.value.reason == reason


def test_wrong_device() -> None:
    with pytest.raises(DecisionError, match="wrong-device"):
        verify(sign(_decision(), KEY), KEY, NOW + 1, None, device="back-door")


def _sealed(body: object) -> bytes:
    return seal(body, KEY, DECISION_DOMAIN)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "malformed"),
        (b"\xff\xfe", "malformed"),
        (b"[1,2]", "malformed"),
        (b'{"alg":"none","body":"{}","sig":""}', "malformed"),
        (b'{"alg":"HMAC-SHA256","body":{},"sig":"00"}', "malformed"),
        (b"{" + b'"a":1,' * 3000 + b'"b":2}', "oversized"),
        (_sealed([1]), "malformed"),
        (_sealed({"v": 2}), "unsupported-version"),
        (_sealed({"v": 1, "device": "x"}), "malformed"),
        (_sealed({**_decision().to_body(), "seq": -1}), "malformed"),
        (_sealed({**_decision().to_body(), "seq": True}), "malformed"),
        (_sealed({**_decision().to_body(), "outcome": "open"}), "malformed"),
        (_sealed({**_decision().to_body(), "issued_at": "now"}), "malformed"),
        (_sealed({**_decision().to_body(), "user": 5}), "malformed"),
        (_sealed({**_decision().to_body(), "reasons": "x"}), "malformed"),
        (_sealed({**_decision().to_body(), "device": "Bad/Id"}), "malformed"),
    ],
)
def test_malformed(payload: bytes, reason: str) -> None:
    with pytest.raises(DecisionError) as e:
        verify(payload, KEY, NOW + 1, None)
    assert e.value.reason == reason


def test_replay_guard_survives_restart(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    guard = ReplayGuard(state)
    first = sign(_decision(seq=10), KEY)
    verify(first, KEY, NOW + 1, guard)
    with pytest.raises(DecisionError, match="replayed"):
        verify(first, KEY, NOW + 1, guard)
    # A new process with the same state file still refuses it, and anything older.
    guard2 = ReplayGuard(state)
    assert guard2.last("front-door") == 10
    for seq in (10, 9):
        with pytest.raises(DecisionError, match="replayed"):
            verify(sign(_decision(seq=seq), KEY), KEY, NOW + 1, guard2)
    verify(sign(_decision(seq=11), KEY), KEY, NOW + 1, guard2)
    # Other devices have their own counters.
    verify(sign(_decision(device="back-door", seq=1), KEY), KEY, NOW + 1, guard2)


def test_rejected_decision_does_not_advance_guard(tmp_path: Path) -> None:
    guard = ReplayGuard(tmp_path / "s.json")
    with pytest.raises(DecisionError, match="expired"):
        verify(sign(_decision(seq=50), KEY), KEY, NOW + 9, guard)
    assert guard.last("front-door") is None


def test_corrupt_state_file_is_an_error_not_a_reset(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text("{not json")
    with pytest.raises(DecisionError, match="state-unreadable"):
        ReplayGuard(state)


def test_a_deeply_nested_state_file_is_unreadable_not_a_traceback(tmp_path: Path) -> None:
    # RecursionError got past the handler: the lock's start (and the door's, for its
    # sequence file) ended in a traceback instead of naming the file.
    state = tmp_path / "state.json"
    state.write_text("[" * 20000 + "]" * 20000)
    for make in (ReplayGuard, SequenceCounter):
        with pytest.raises(DecisionError, match=r"state-unreadable.*nested too deeply"):
            make(state)


def test_sequence_counter_persists(tmp_path: Path) -> None:
    # The file's own count (clock=None: no clock floor, as with a clock far behind; the
    # floor itself is tested in test_seq_restore.py).
    path = tmp_path / "seq.json"
    c = SequenceCounter(path, reserve=1, clock=None)
    assert [c.next(), c.next(), c.next()] == [1, 2, 3]
    assert SequenceCounter(path, clock=None).next() == 4
    # With a reserve, a restart (or crash) skips ahead but never repeats.
    other = tmp_path / "seq2.json"
    c = SequenceCounter(other, reserve=10, clock=None)
    handed = [c.next() for _ in range(15)]
    assert handed == list(range(1, 16))
    assert SequenceCounter(other, reserve=10, clock=None).next() == 21  # ceiling was 20
    path.write_text('{"seq": "x"}')
    with pytest.raises(DecisionError, match="state-unreadable"):
        SequenceCounter(path)


def test_issuer_fills_fields(tmp_path: Path) -> None:
    class Speaker:
        score, threshold = 0.71, 0.6

    class Live:
        ok, score, threshold = False, 0.2, 0.5

    issuer = Issuer("front-door", SequenceCounter(tmp_path / "seq.json"), ttl_s=5)
    a = issuer.issue(
        "denied", "bob", NOW, reasons=["liveness-failed"], speaker=Speaker(), liveness=Live()
    )
    b = issuer.issue("retry", None, NOW + 1)
    assert (a.expires_at - a.issued_at, a.speaker_score, a.liveness_ok) == (5, 0.71, False)
    assert b.seq > a.seq and a.nonce != b.nonce and len(a.nonce) == 32
    assert b.speaker_score is None and b.liveness_ok is None
    with pytest.raises(ValueError):
        issuer.issue("open", None, NOW)


def test_issuer_from_attempt(tmp_path: Path) -> None:
    from types import SimpleNamespace as NS

    issuer = Issuer("front-door", SequenceCounter(tmp_path / "seq.json"), ttl_s=5)
    res = NS(
        verdict=NS(outcome="granted", user="alice", reasons=("speaker-match",)),
        speaker=NS(score=0.9, threshold=0.6),
        liveness=NS(ok=True, score=0.8, threshold=0.5),
        issued_at=NOW,
    )
    d = issuer.from_attempt(res)
    assert (d.outcome, d.user, d.reasons, d.issued_at, d.expires_at) == (
        "granted",
        "alice",
        ("speaker-match",),
        NOW,
        NOW + 5,
    )
    assert (d.speaker_score, d.liveness_ok, d.liveness_threshold) == (0.9, True, 0.5)


def test_guard_write_failure_refuses_and_keeps_memory(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    guard = ReplayGuard(state_dir / "s.json")
    state_dir.rmdir()
    state_dir.write_text("a file where the state directory was")  # any write now fails
    with pytest.raises(OSError):
        verify(sign(_decision(seq=5), KEY), KEY, NOW + 1, guard)
    assert guard.last("front-door") is None


def test_issuer_maps_no_score_to_null_and_still_signs(tmp_path: Path) -> None:
    """The scorer says "no voiceprint to compare with" as -inf (nobody enrolled, unknown
    claimed user); the decision carries null and is signed and verifiable like any other."""
    from types import SimpleNamespace as NS

    from voxgate.scoring import SpeakerResult

    issuer = Issuer("front-door", SequenceCounter(tmp_path / "seq.json"), ttl_s=5)
    speaker = SpeakerResult(
        "mallory", float("-inf"), float("-inf"), 1.9, False, True, ("unknown_user",)
    )
    res = NS(
        verdict=NS(outcome="denied", user=None, reasons=("no_match",)),
        speaker=speaker,
        liveness=NS(ok=True, score=float("nan"), threshold=0.5),
        issued_at=NOW,
    )
    d = issuer.from_attempt(res)
    assert (d.speaker_score, d.speaker_threshold, d.liveness_score) == (None, 1.9, None)
    payload = sign(d, KEY)
    body = json.loads(json.loads(payload)["body"])
    assert body["scores"] == {
        "liveness": None,
        "liveness_threshold": 0.5,
        "speaker": None,
        "speaker_threshold": 1.9,
    }
    assert verify(payload, KEY, NOW + 1, None) == d


@pytest.mark.parametrize("sig", ["é" * 64, "\u0663" * 64], ids=["latin", "arabic-digits"])
def test_a_signature_that_is_not_hex_is_refused_as_a_decision_error(sig: str) -> None:
    """hmac.compare_digest raises TypeError for non-ASCII text, so such a `sig` escaped
    verify() (which promises DecisionError): the actuator logged a traceback instead of a
    refusal and did not count it, and a command carrying one killed its check with
    "command worker error" and no reply. Found sending hand-made envelopes to the lock."""
    payload = json.dumps({"alg": "HMAC-SHA256", "body": "{}", "sig": sig}).encode()
    with pytest.raises(DecisionError) as e:
        verify(payload, KEY, NOW + 1, None)
    assert e.value.reason == "bad-signature"
    from voxgate.mqtt.commands import CommandError, CommandGate

    gate = CommandGate("front-door", KEY, started_at=NOW)
    with pytest.raises(CommandError) as ce:
        gate.check("reload", payload, NOW + 1)
    assert ce.value.code == "unauthorized"


def test_replay_guard_forget_drops_one_device_and_keeps_the_rest(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    guard = ReplayGuard(state)
    verify(sign(_decision(seq=10), KEY), KEY, NOW + 1, guard)
    verify(sign(_decision(device="back-door", seq=3), KEY), KEY, NOW + 1, guard)
    state.chmod(0o640)
    assert guard.devices() == ["back-door", "front-door"]

    assert guard.forget("front-door", now=NOW + 2) == (10, NOW)
    assert guard.forget("front-door") is None  # nothing left to drop
    assert guard.forget("side-door") is None
    data = json.loads(state.read_text())
    assert data["last_seq"] == {"back-door": 3}
    assert data["last_issued_at"] == {"back-door": NOW}
    assert data["forgotten"] == [
        {"device": "front-door", "last_seq": 10, "last_issued_at": NOW, "at": NOW + 2}
    ]
    assert state.stat().st_mode & 0o777 == 0o640

    # The same guard, and a new one on the file, accept the door's low numbers again, and a
    # later write keeps the history.
    verify(sign(_decision(seq=1), KEY), KEY, NOW + 1, guard)
    assert ReplayGuard(state).last("front-door") == 1
    assert json.loads(state.read_text())["forgotten"][0]["last_seq"] == 10
    # The history is bounded (the last 20).
    for i in range(25):
        verify(sign(_decision(seq=100 + i), KEY), KEY, NOW + 1, guard)
        guard.forget("front-door", now=NOW + i)
    kept = json.loads(state.read_text())["forgotten"]
    assert len(kept) == 20 and kept[-1]["last_seq"] == 124


def test_replay_guard_forget_that_cannot_write_changes_nothing(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    guard = ReplayGuard(state_dir / "s.json")
    verify(sign(_decision(seq=5), KEY), KEY, NOW + 1, guard)
    for p in state_dir.iterdir():
        p.unlink()
    state_dir.rmdir()
    state_dir.write_text("a file where the state directory was")
    with pytest.raises(OSError):
        guard.forget("front-door")
    assert guard.last("front-door") == 5


def test_a_locked_out_decision_tells_nothing_about_the_voice_or_the_answer(
    tmp_path: Path,
) -> None:
    """Attempts refused by a lockout are not counted, so their decision must not carry the
    speaker score or the other checks' reasons: anyone reading decisions could otherwise
    tune a voice or an answer for free while the lock lasts (the audit log keeps them)."""
    from types import SimpleNamespace as NS

    from voxgate.policy import LockoutState, decide

    issuer = Issuer("front-door", SequenceCounter(tmp_path / "seq.json"), ttl_s=5)
    speaker = NS(
        user="alice", accepted=False, quality_ok=True, reasons=(), score=0.58, threshold=0.6
    )
    liveness = NS(ok=False, reason="wrong_digits", retry=False, score=0.2, threshold=0.5)
    locked = LockoutState(locked=True, until=NOW + 60, user_failures=5, scope="user")
    verdict = decide(speaker, liveness, None, locked, False)
    assert set(verdict.reasons) == {"locked_out", "liveness_failed", "no_match"}
    d = issuer.from_attempt(NS(verdict=verdict, speaker=speaker, liveness=liveness, issued_at=NOW))
    assert (d.outcome, d.user, d.reasons) == ("denied", None, ("locked_out",))
    assert (d.speaker_score, d.speaker_threshold, d.liveness_ok, d.liveness_score) == (
        None,
        None,
        None,
        None,
    )
    # Not locked: the same attempt's decision says why, with its scores.
    verdict = decide(speaker, liveness, None, LockoutState(), False)
    d = issuer.from_attempt(NS(verdict=verdict, speaker=speaker, liveness=liveness, issued_at=NOW))
    assert d.reasons == ("liveness_failed", "no_match") and d.speaker_score == 0.58


def test_an_accepted_seq_is_on_disk_with_its_folder_entry_before_the_lock_acts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guard's new state file was fsynced, then renamed over the old one, but the folder
    was not synced: after a power cut within the file system's commit interval (5 s on
    ext4) the folder could still name the old file, with the old seq, and a grant acted on
    just before would be accepted again while still valid. The rename is synced too."""
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:  # the real fsync, noting what it synced
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    state = tmp_path / "state.json"
    guard = ReplayGuard(state)
    monkeypatch.setattr(os, "fsync", fsync)
    verify(sign(_decision(seq=10), KEY), KEY, NOW + 1, guard)
    assert state.stat().st_ino in synced  # the new file's bytes
    assert tmp_path.stat().st_ino in synced  # and the folder entry naming it
