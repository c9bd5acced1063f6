"""The admin API over a real socket: werkzeug server in a thread, http.client requests."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import logging
import socket
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from mqtt_helpers import wait_until
from socket_helpers import sent_so_far

pytest.importorskip("flask")

from voxgate.api import ApiError, ApiServer, UserAdmin, create_app, load_token
from voxgate.config import parse_config
from voxgate.voiceprints import VoiceprintStore

TOKEN = "test-token-0123456789abcdef"
GENESIS = "0" * 64


class Client:
    def __init__(self, port: int, token: str | None = TOKEN) -> None:
        self.port = port
        self.token = token

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, dict[str, Any], http.client.HTTPResponse]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        h = dict(headers or {})
        if self.token is not None:
            h["Authorization"] = f"Bearer {self.token}"
        conn.request(method, path, body=body, headers=h)
        resp = conn.getresponse()
        raw = resp.read()
        conn.close()
        assert resp.getheader("Content-Type", "").startswith("application/json"), raw[:200]
        return resp.status, json.loads(raw), resp

    def upload(
        self, path: str, files: list[tuple[str, bytes]], fields: dict | None = None
    ) -> tuple[int, dict[str, Any], http.client.HTTPResponse]:
        boundary = uuid.uuid4().hex
        parts = []
        for key, value in (fields or {}).items():
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'
                f"{value}\r\n".encode()
            )
        for name, data in files:
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="take"; '
                f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
                + data
                + b"\r\n"
            )
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        ctype = f"multipart/form-data; boundary={boundary}"
        return self.request("POST", path, body, {"Content-Type": ctype})


def _audit_lines(path: Path, events: list[tuple[str, dict]]) -> None:
    """Write audit entries in voxgate.audit's format (seq, ts, event, fields, prev, hash)."""
    prev = GENESIS
    with open(path, "w") as f:
        for seq, (event, fields) in enumerate(events, 1):
            rec = {"seq": seq, "ts": 1000.0 + seq, "event": event, **fields, "prev": prev}
            body = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode()
            rec["hash"] = prev = hashlib.sha256(body).hexdigest()
            f.write(json.dumps(rec) + "\n")


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[dict]:
    cfg = parse_config(f"device_id: door-test\ndata_dir: {tmp_path}\napi: {{max_upload_mb: 1}}\n")
    store = VoiceprintStore(tmp_path / "voiceprints.db", bytes(range(32)))
    rng = np.random.default_rng(0)
    store.add_user("alice", rng.standard_normal((3, 256)), "test-model/1", {"takes": 3})
    store.add_user("bob", rng.standard_normal((4, 256)), "test-model/1", {"takes": 4})
    _audit_lines(
        tmp_path / "audit.jsonl",
        [
            ("daemon_started", {}),
            ("decision", {"outcome": "granted", "user": "alice"}),
            ("lockout", {"user": "mallory"}),
            ("decision", {"outcome": "denied", "user": None}),
        ],
    )
    with open(tmp_path / "audit.jsonl", "a") as f:
        f.write("this line is damaged\n")
    changes: list[tuple[str, str]] = []
    admin = UserAdmin(
        store,
        cfg.speaker,
        cfg.vad,
        load_embedder=lambda: pytest.fail("listing/erasing must not load the model"),
        on_change=lambda kind, name: changes.append((kind, name)),
    )
    audit: list[tuple[str, dict]] = []
    app = create_app(
        cfg, admin, TOKEN.encode(), audit_event=lambda event, **f: audit.append((event, f))
    )
    server = ApiServer(app, "127.0.0.1", 0, poll_interval=0.05)
    server.start()
    yield {
        "client": Client(server.port),
        "port": server.port,
        "store": store,
        "changes": changes,
        "audit": audit,
    }
    server.stop()
    store.close()


def test_requests_without_the_right_token_are_refused(api: dict) -> None:
    for token in (None, "wrong-token-0123456789abcdef", TOKEN[:-1]):
        status, body, resp = Client(api["port"], token).request("GET", "/api/v1/users")
        assert status == 401
        assert body["error"] == "unauthorized"
        assert resp.getheader("WWW-Authenticate", "").startswith("Bearer")
    # A Basic header carrying the token is not accepted either.
    c = Client(api["port"], None)
    status, _, _ = c.request("GET", "/api/v1/health", headers={"Authorization": f"Basic {TOKEN}"})
    assert status == 401


def test_health_and_users(api: dict) -> None:
    c = api["client"]
    status, body, _ = c.request("GET", "/api/v1/health")
    assert status == 200
    assert body["status"] == "ok" and body["device_id"] == "door-test" and body["users"] == 2
    status, body, _ = c.request("GET", "/api/v1/users")
    assert status == 200
    assert [u["name"] for u in body["users"]] == ["alice", "bob"]
    assert body["users"][1]["takes"] == 4


def test_export_then_erase(api: dict) -> None:
    c = api["client"]
    status, body, _ = c.request("GET", "/api/v1/users/alice/export")
    assert status == 200
    assert body["name"] == "alice" and len(body["embeddings"]) == 3
    status, body, _ = c.request("DELETE", "/api/v1/users/alice")
    assert status == 200 and body == {"erased": "alice"}
    assert api["store"].get("alice") is None
    assert api["changes"] == [("erased", "alice")]
    assert [(e, f["user"], f["via"]) for e, f in api["audit"]] == [
        ("admin_export", "alice", "api"),
        ("admin_erase", "alice", "api"),
    ]
    status, body, _ = c.request("DELETE", "/api/v1/users/alice")
    assert status == 404 and body["error"] == "not_found"
    status, _, _ = c.request("GET", "/api/v1/users/alice/export")
    assert status == 404


def test_recent_decisions_from_the_audit_log(api: dict) -> None:
    c = api["client"]
    status, body, _ = c.request("GET", "/api/v1/decisions?limit=10")
    assert status == 200
    assert [e["outcome"] for e in body["events"]] == ["denied", "granted"]  # newest first
    assert body["skipped_lines"] == 1
    status, body, _ = c.request("GET", "/api/v1/decisions?limit=2&event=*")
    assert [e["event"] for e in body["events"]] == ["decision", "lockout"]
    for bad in ("limit=0", "limit=abc", "limit=100000"):
        status, body, _ = c.request("GET", f"/api/v1/decisions?{bad}")
        assert status == 400, bad
        assert body["error"] == "bad_request"


def test_damaged_or_unreadable_audit_log_does_not_break_decisions(
    api: dict, tmp_path: Path
) -> None:
    """A line that parses but whose `event` is a list or an object made every call a 500;
    so did an audit log that cannot be read."""
    c = api["client"]
    log_file = tmp_path / "audit.jsonl"
    with open(log_file, "a") as f:
        f.write('{"seq": 9, "ts": 1009.0, "event": ["decision"]}\n')
        f.write('{"seq": 10, "ts": 1010.0, "event": {"a": 1}}\n')
    for query in ("", "?event=*"):
        status, body, _ = c.request("GET", f"/api/v1/decisions{query}")
        assert status == 200, body
        assert body["skipped_lines"] == 3  # the two above and the fixture's damaged line
    status, body, _ = c.request("GET", "/api/v1/decisions")
    assert [e["outcome"] for e in body["events"]] == ["denied", "granted"]
    log_file.unlink()
    log_file.mkdir()  # a folder where the log should be
    status, body, _ = c.request("GET", "/api/v1/decisions")
    assert status == 503 and body["error"] == "audit_unavailable"
    assert str(tmp_path) not in body["message"]
    assert c.request("GET", "/api/v1/health")[0] == 200


def test_config_check(api: dict) -> None:
    c = api["client"]
    status, body, _ = c.request("POST", "/api/v1/config/check", b"speaker:\n  threads: 2\n")
    assert status == 200 and body == {"valid": True, "problems": []}
    status, body, _ = c.request("POST", "/api/v1/config/check", b"speaker:\n  threads: 99\n")
    assert status == 200 and not body["valid"]
    assert "line 2" in body["problems"][0] and "speaker.threads" in body["problems"][0]
    status, body, _ = c.request("POST", "/api/v1/config/check", b"\xff\xfe bad")
    assert status == 400
    status, body, _ = c.request("GET", "/api/v1/config")
    assert status == 200 and body["device_id"] == "door-test"


def test_malformed_uploads_are_rejected_cleanly(
    api: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    c = api["client"]
    caplog.set_level(logging.WARNING, logger="voxgate.api")
    # Not multipart at all.
    status, body, _ = c.request(
        "POST", "/api/v1/users/carol", b'{"x":1}', {"Content-Type": "application/json"}
    )
    assert status == 400 and "multipart" in body["message"]
    # Multipart without takes.
    status, body, _ = c.upload("/api/v1/users/carol", [], {"replace": "false"})
    assert status == 400 and "take" in body["message"]
    # A take that is not audio.
    status, body, _ = c.upload("/api/v1/users/carol", [("notes.wav", b"RIFF....not a wave")])
    assert status == 400
    assert "take 1 (notes.wav)" in body["message"]
    assert str(tmp_path) not in body["message"]  # no server paths leak into replies
    # An empty take.
    status, body, _ = c.upload("/api/v1/users/carol", [("empty.wav", b"")])
    assert status == 400 and "empty" in body["message"]
    # A bad user name (control character).
    status, body, _ = c.upload("/api/v1/users/car%07ol", [("a.wav", b"x")])
    assert status == 400 and "control" in body["message"]
    # Too many takes.
    wav = tmp_path / "short.wav"
    sf.write(wav, np.zeros(1600, dtype=np.int16), 16000)
    status, body, _ = c.upload("/api/v1/users/carol", [("t.wav", wav.read_bytes())] * 21)
    assert status == 400 and "at most 20" in body["message"]
    assert api["store"].get("carol") is None
    assert any("bad request" in r.getMessage() for r in caplog.records)


def test_oversized_upload_gets_413_before_the_body_is_read(api: dict) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", api["port"], timeout=30)
    conn.putrequest("POST", "/api/v1/users/carol")
    conn.putheader("Authorization", f"Bearer {TOKEN}")
    conn.putheader("Content-Type", "multipart/form-data; boundary=x")
    conn.putheader("Content-Length", str(50 * 1024 * 1024))
    conn.endheaders()
    conn.send(b"--x\r\n" + b"\0" * 65536)  # the rest never comes
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    assert resp.status == 413
    assert body["error"] == "request_entity_too_large"
    assert "1 MB" in body["message"]
    # The server is still serving.
    assert api["client"].request("GET", "/api/v1/health")[0] == 200


def test_a_chunked_config_larger_than_the_limit_gets_413(api: dict) -> None:
    """Without Content-Length the body was cut at api.max_upload_mb and the cut part judged:
    a config whose bad setting lay past the limit came back valid."""
    padding = b"# " + b"x" * 1000 + b"\n"
    body = [padding] * 1100 + [b"speaker:\n  threads: 99\n"]  # ~1.1 MB, over the 1 MB limit
    conn = http.client.HTTPConnection("127.0.0.1", api["port"], timeout=30)
    conn.request(
        "POST",
        "/api/v1/config/check",
        body=iter(body),
        headers={"Authorization": f"Bearer {TOKEN}", "Transfer-Encoding": "chunked"},
        encode_chunked=True,
    )
    resp = conn.getresponse()
    reply = json.loads(resp.read())
    conn.close()
    assert resp.status == 413, reply
    assert reply["error"] == "request_entity_too_large"
    assert api["client"].request("GET", "/api/v1/health")[0] == 200


def test_a_full_oversized_upload_is_refused_too(api: dict) -> None:
    big = np.random.default_rng(1).integers(-3000, 3000, 16000 * 40, dtype=np.int16)
    data = big.tobytes()  # ~1.3 MB, over the 1 MB limit of this fixture
    try:
        status, body, _ = api["client"].upload("/api/v1/users/carol", [("big.wav", data)])
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may close before the client has sent everything: also a refusal
    else:
        assert status == 413 and body["error"] == "request_entity_too_large"
    assert api["store"].get("carol") is None


def test_a_wrong_method_names_the_allowed_ones_in_json(api: dict) -> None:
    """A 405 must carry Allow (RFC 9110); OPTIONS answered an empty text/html body."""
    c = api["client"]
    status, body, resp = c.request("PUT", "/api/v1/users/alice")
    assert status == 405 and body["error"] == "method_not_allowed"
    assert {m.strip() for m in resp.getheader("Allow", "").split(",")} >= {"POST", "DELETE"}
    status, body, resp = c.request("OPTIONS", "/api/v1/users")
    assert status == 200 and "GET" in body["allow"] and "GET" in resp.getheader("Allow", "")


def test_each_request_is_logged_once_without_terminal_codes(
    api: dict, caplog: pytest.LogCaptureFixture
) -> None:
    """werkzeug's own access line repeated the app's, with colour codes inside the JSON log."""
    caplog.set_level(logging.INFO)
    api["client"].request("GET", "/api/v1/nothing-here")
    lines = [r.getMessage() for r in caplog.records if "nothing-here" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("API GET /api/v1/nothing-here -> 404")
    assert not any("\x1b" in r.getMessage() for r in caplog.records)


def _wav_claiming(rate: int, samples: int = 8000) -> bytes:
    """A small 16-bit mono WAV whose header says `rate` (any value the field can hold)."""
    data = b"\x00\x01" * samples
    fmt = struct.pack("<HHIIHH", 1, 1, rate, (rate * 2) & 0xFFFFFFFF, 2, 16)
    return (
        b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack("<I", 16) + fmt
        + b"data" + struct.pack("<I", len(data)) + data
    )  # fmt: skip


def test_an_upload_claiming_an_absurd_sample_rate_gets_400(api: dict) -> None:
    """The resampler's memory grows with the rate: 2147483647 Hz asked for 8 GiB (a 500, or
    the daemon killed by the OOM killer); 1 Hz took seconds of CPU per take."""
    c = api["client"]
    for rate in (1_000_000, 2_147_483_647, 1):
        status, body, _ = c.upload("/api/v1/users/carol", [("odd.wav", _wav_claiming(rate))])
        assert status == 400, (rate, body)
        assert f"take 1 (odd.wav): sample rate {rate} Hz; use 8000-192000 Hz" in body["message"]
    assert api["store"].get("carol") is None
    assert c.request("GET", "/api/v1/health")[0] == 200


def test_an_upload_cut_short_is_refused_not_enrolled_in_part(api: dict, tmp_path: Path) -> None:
    """An upload decodes through the reader the daemon streams files with, which reads a file
    cut short as far as it goes: half a take went into a voiceprint, with a log line only."""
    c = api["client"]
    noise = (0.1 * np.random.default_rng(6).standard_normal(4 * 16000)).astype(np.float32)
    for fmt, said in (
        ("wav", "cut short: its header promises 4.0 s of audio, the file holds 2.0 s"),
        ("flac", "read error after "),
    ):
        buf = io.BytesIO()
        sf.write(buf, noise, 16000, format=fmt.upper(), subtype="PCM_16")
        raw = buf.getvalue()
        status, body, _ = c.upload("/api/v1/users/carol", [(f"t.{fmt}", raw[: len(raw) // 2])])
        assert status == 400, body  # before the model is loaded (the fixture's fails the test)
        msg = body["message"]
        assert msg.startswith(f"take 1 (t.{fmt}): {said}") and str(tmp_path) not in msg, msg
        # What to do: not "send WAV or FLAC", which it is.
        assert msg.endswith("(an interrupted copy or recording?); record or copy it again"), msg
    assert api["store"].get("carol") is None


def test_the_api_will_not_start_without_a_good_token(tmp_path: Path, no_secret_env: None) -> None:
    token_file = tmp_path / "api-token"
    cfg = parse_config(f"api: {{token_file: {token_file}}}\n")
    with pytest.raises(ApiError, match="not found"):
        load_token(cfg)
    token_file.write_text("short\n")
    token_file.chmod(0o600)
    with pytest.raises(ApiError, match="at least 16"):
        load_token(cfg)
    token_file.write_text(TOKEN + "\n")
    assert load_token(cfg) == TOKEN.encode()


@pytest.fixture()
def enroll_api(tmp_path: Path) -> Iterator[dict]:
    from fleet_tts import ESPEAK

    if ESPEAK is None:
        pytest.skip("espeak-ng is not installed")
    from voxgate.embedding import load_embedder

    cfg = parse_config(
        f"device_id: door-test\ndata_dir: {tmp_path}\nspeaker: {{enroll_min_speech_s: 6}}\n"
    )
    store = VoiceprintStore(tmp_path / "voiceprints.db", bytes(range(32)))
    changes: list[tuple[str, str]] = []
    admin = UserAdmin(
        store, cfg.speaker, cfg.vad, load_embedder, on_change=lambda k, n: changes.append((k, n))
    )
    server = ApiServer(create_app(cfg, admin, TOKEN.encode()), "127.0.0.1", 0, poll_interval=0.05)
    server.start()
    yield {"client": Client(server.port), "store": store, "changes": changes}
    server.stop()
    store.close()


def test_enroll_from_uploaded_takes(enroll_api: dict, tmp_path: Path) -> None:
    from fleet_tts import DIGITS, say, write_wav

    c = enroll_api["client"]
    takes = [
        (f"take{i}.wav", write_wav(tmp_path / f"t{i}.wav", say(t, "en+m3")).read_bytes())
        for i, t in enumerate(DIGITS[:3])
    ]
    status, body, _ = c.upload("/api/v1/users/carol", takes)
    assert status == 201, body
    assert body["name"] == "carol" and body["version"] == 1
    assert [t["accepted"] for t in body["takes"]] == [True, True, True]
    assert body["model_id"].startswith("ge2e")
    assert enroll_api["store"].get("carol").embeddings.shape == (3, 256)
    assert enroll_api["changes"] == [("enrolled", "carol")]
    # Again without replace: refused; with replace: a new version.
    status, body, _ = c.upload("/api/v1/users/carol", takes)
    assert status == 409 and body["error"] == "conflict"
    status, body, _ = c.upload("/api/v1/users/CAROL", takes)  # carol herself, named as enrolled
    assert status == 409 and "user 'CAROL' is already enrolled as 'carol'" in body["message"]
    status, body, _ = c.upload("/api/v1/users/carol", takes, {"replace": "true"})
    assert status == 201 and body["version"] == 2
    # The same name in full-width letters was a second person: 409, with or without replace,
    # said before the takes are embedded (silence would otherwise be a 422 about the takes).
    silence = [("t.wav", write_wav(tmp_path / "s.wav", np.zeros(48000, np.int16)).read_bytes())]
    for fields in ({}, {"replace": "true"}):
        for upload in (takes, silence):
            status, body, _ = c.upload("/api/v1/users/%EF%BD%83arol", upload, fields)
            assert status == 409 and body["error"] == "conflict", body
            assert "already enrolled as 'carol'" in body["message"]
    # A line separator in a new name: the request's fault (400), not the store's (503).
    status, body, _ = c.upload("/api/v1/users/dave%E2%80%A8granted", takes)
    assert status == 400 and "line or paragraph separators" in body["message"], body
    assert [u.name for u in enroll_api["store"].users()] == ["carol"]


def test_enrolling_over_a_damaged_voiceprint(enroll_api: dict, tmp_path: Path) -> None:
    """A damaged row still belongs to its user: without replace the answer is 409 with the
    way out (not 503 'store unavailable'); with replace=true it is repaired."""
    from fleet_tts import DIGITS, say, write_wav

    from tests.store_helpers import damage_row

    c = enroll_api["client"]
    takes = [
        (f"take{i}.wav", write_wav(tmp_path / f"t{i}.wav", say(t, "en+m3")).read_bytes())
        for i, t in enumerate(DIGITS[:3])
    ]
    assert c.upload("/api/v1/users/erin", takes)[0] == 201
    damage_row(enroll_api["store"], "erin")
    status, body, _ = c.upload("/api/v1/users/erin", takes)
    assert status == 409 and "replace=true" in body["message"], body
    status, body, _ = c.upload("/api/v1/users/erin", takes, {"replace": "true"})
    assert status == 201 and body["version"] == 1, body
    assert enroll_api["store"].get("erin") is not None


def test_enroll_with_prompts_keeps_digit_templates(enroll_api: dict, tmp_path: Path) -> None:
    from fleet_tts import DIGITS, say, write_wav

    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    prompts = ["".join(str(names.index(w)) for w in t.split()) for t in DIGITS[:3]]
    c = enroll_api["client"]
    takes = [
        (f"take{i}.wav", write_wav(tmp_path / f"t{i}.wav", say(t, "en+m3")).read_bytes())
        for i, t in enumerate(DIGITS[:3])
    ]
    status, body, _ = c.upload("/api/v1/users/dave", takes, {"prompts": "1 2"})
    assert status == 400 and "one digit string per take" in body["message"]
    # Digits of other scripts pass str.isdigit() but no challenge ever asks for them.
    for odd in ("²¹⁴ ²⁷¹ ¹⁴¹", "١٢٣ 456 789", "１２３ 456 789"):
        status, body, _ = c.upload("/api/v1/users/dave", takes, {"prompts": odd})
        assert status == 400 and "one digit string per take" in body["message"], odd
    assert enroll_api["store"].get("dave") is None
    status, body, _ = c.upload("/api/v1/users/dave", takes, {"prompts": " ".join(prompts)})
    assert status == 201, body
    meta = enroll_api["store"].get("dave").meta
    assert set(meta["template_digits"]) == set("".join(prompts))


def test_a_duplicate_take_names_the_take_it_repeats(enroll_api: dict, tmp_path: Path) -> None:
    """The CLI says which earlier take a `duplicate` repeats (docs: "named with that take's
    number"); the API's report said only `duplicate`, so a caller could not tell the person
    which of their recordings was sent twice."""
    from fleet_tts import DIGITS, say, write_wav

    c = enroll_api["client"]
    takes = [
        (f"take{i}.wav", write_wav(tmp_path / f"t{i}.wav", say(t, "en+m3")).read_bytes())
        for i, t in enumerate(DIGITS[:3])
    ]
    status, body, _ = c.upload("/api/v1/users/erin", [*takes, ("again.wav", takes[1][1])])
    assert status == 201, body
    assert [(t["index"], t["reason"], t["same_as"]) for t in body["takes"]] == [
        (1, None, None),
        (2, None, None),
        (3, None, None),
        (4, "duplicate", 2),
    ]


def test_enrollment_with_unusable_takes_is_refused_with_reasons(
    enroll_api: dict, tmp_path: Path
) -> None:
    from fleet_tts import write_wav

    c = enroll_api["client"]
    rng = np.random.default_rng(5)
    quiet = (rng.standard_normal(16000 * 3) * 30).astype(np.int16)  # 3 s of faint hiss
    takes = [(f"n{i}.wav", write_wav(tmp_path / f"n{i}.wav", quiet).read_bytes()) for i in range(3)]
    status, body, _ = c.upload("/api/v1/users/dan", takes)
    assert status == 422, body
    assert body["error"] == "enrollment_refused"
    assert [t["accepted"] for t in body["report"]["takes"]] == [False, False, False]
    assert body["report"]["takes"][0]["reason"] == "too_short"
    assert enroll_api["store"].get("dan") is None
    assert enroll_api["changes"] == []


def test_enrolling_with_a_speaker_model_that_cannot_be_loaded_is_a_503_naming_it(
    tmp_path: Path,
) -> None:
    """The standalone `voxgate api` loads the model at the first enrollment; a mistyped
    `speaker.model` answered 500 internal_error with a traceback in the log. It is the
    device's setting, not a bug: 503 `model_unavailable` naming the file, nothing stored,
    and the next request tries again (the file may have been put in place meanwhile)."""
    from voxgate.embedding import load_embedder

    missing = tmp_path / "campp.onnx"
    cfg = parse_config(
        f"device_id: door-test\ndata_dir: {tmp_path}\nspeaker: {{model: {missing}}}\n"
    )
    store = VoiceprintStore(tmp_path / "voiceprints.db", bytes(range(32)))
    admin = UserAdmin(store, cfg.speaker, cfg.vad, lambda: load_embedder(cfg.speaker.model))
    server = ApiServer(create_app(cfg, admin, TOKEN.encode()), "127.0.0.1", 0, poll_interval=0.05)
    server.start()
    try:
        c = Client(server.port)
        speech = (np.sin(np.arange(48000) * 0.07) * 8000).astype(np.int16)
        buf = io.BytesIO()
        sf.write(buf, speech, 16000, format="WAV", subtype="PCM_16")
        for _ in range(2):
            status, body, _ = c.upload("/api/v1/users/carol", [("t.wav", buf.getvalue())])
            assert status == 503, body
            assert body["error"] == "model_unavailable"
            assert str(missing) in body["message"] and "does not exist" in body["message"]
        assert store.users() == []
    finally:
        server.stop()
        store.close()


def test_an_upload_longer_than_a_take_is_refused_before_it_is_decoded(
    enroll_api: dict, tmp_path: Path
) -> None:
    """The API decodes uploads inside the daemon: a long recording must not grow its memory."""
    import soundfile as sf

    c = enroll_api["client"]
    long = tmp_path / "long.flac"  # 130 s of digital silence: FLAC makes it a few kB
    sf.write(long, np.zeros(16000 * 130, np.int16), 16000, subtype="PCM_16")
    status, body, _ = c.upload("/api/v1/users/erin", [("long.flac", long.read_bytes())])
    assert status == 400, body
    assert "take 1 (long.flac): longer than 120 s" in body["message"]
    assert enroll_api["store"].get("erin") is None


@pytest.mark.parametrize(
    "text",
    [
        "device_id: 2001-02-30\n",  # YAML reads it as a date; there is no 30 February
        "metrics:\n  port: " + "9" * 5000 + "\n",  # past Python's int-from-text digit limit
    ],
)
def test_a_value_yaml_cannot_build_is_a_problem_not_a_500(
    api: dict, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    status, body, _ = api["client"].request("POST", "/api/v1/config/check", text.encode())
    assert status == 200 and body["valid"] is False, body
    assert body["problems"][0].startswith("line "), body
    assert "Traceback" not in caplog.text


def test_a_token_with_non_ascii_characters_can_authenticate(
    tmp_path: Path, no_secret_env: None
) -> None:
    # load_token takes any UTF-8 token; the header reaches the app decoded as Latin-1 (the
    # WSGI rule), so comparing its UTF-8 re-encoding refused the right token every time.
    token_file = tmp_path / "api-token"
    token_file.write_text("pässwörd-0123456789-ü\n")
    token_file.chmod(0o600)
    cfg = parse_config(f"data_dir: {tmp_path}\napi: {{token_file: {token_file}}}\n")
    token = load_token(cfg)
    store = VoiceprintStore(tmp_path / "voiceprints.db", bytes(range(32)))
    admin = UserAdmin(store, cfg.speaker, cfg.vad, load_embedder=lambda: None)
    server = ApiServer(create_app(cfg, admin, token), "127.0.0.1", 0, poll_interval=0.05)
    server.start()
    try:
        for sent, want in ((token, 200), (token[:-1] + b"x", 401), ("pässwörd".encode(), 401)):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            conn.putrequest("GET", "/api/v1/health")
            conn.putheader("Authorization", b"Bearer " + sent)  # the UTF-8 bytes, as curl sends
            conn.endheaders()
            resp = conn.getresponse()
            body = json.loads(resp.read())
            conn.close()
            assert resp.status == want, (sent, body)
    finally:
        server.stop()
        store.close()


def test_a_name_that_is_not_utf8_is_refused_not_replaced(api: dict) -> None:
    # Werkzeug decodes a path's bytes that are not UTF-8 to U+FFFD: 'Ren%E9' (Latin-1 é) and
    # 'Ren%E8' (è) both named 'Ren\ufffd', so erasing one erased the other person.
    store = api["store"]
    store.add_user("Ren\ufffd", np.ones((3, 256)), "test-model/1", {"takes": 3})
    c = api["client"]
    for method, path in (
        ("DELETE", "/api/v1/users/Ren%E8"),
        ("GET", "/api/v1/users/Ren%E8/export"),
        ("POST", "/api/v1/users/Ren%E8"),
    ):
        status, body, _ = c.request(method, path)
        assert status == 400 and "UTF-8" in body["message"], (method, body)
    assert store.get("Ren\ufffd") is not None and api["changes"] == []
    status, body, _ = c.request("GET", "/api/v1/users/Ren%C3%A9/export")
    assert status == 404 and body["error"] == "not_found"  # proper UTF-8 is still a name


def test_a_path_with_line_breaks_cannot_forge_log_lines(
    api: dict, caplog: pytest.LogCaptureFixture
) -> None:
    # The request path was logged as decoded: '%0A' started a new line in the text log (the
    # journal), so anyone reaching the port, token or not, could write lines that look like
    # the daemon's own ("enrolled mallory over the API").
    caplog.set_level(logging.INFO)
    forged = "/api/v1/users/x%0A2026-01-01%20voxgate.api.users%20INFO%20enrolled%20mallory%0D"
    for token in (None, TOKEN):
        Client(api["port"], token).request("DELETE", forged)
        Client(api["port"], token).request("GET", forged + "/export")
    api_lines = [r.getMessage() for r in caplog.records if r.name.startswith("voxgate.api")]
    assert len(api_lines) >= 4
    assert not any(c in line for line in api_lines for c in "\n\r"), api_lines
    assert any("x\\n2026-01-01" in line for line in api_lines)  # still readable, escaped


def test_an_upload_file_name_with_line_breaks_cannot_forge_log_lines(
    api: dict, caplog: pytest.LogCaptureFixture
) -> None:
    # The take's file name (RFC 2231 form, decoded by werkzeug) is in the 400 message, which
    # was logged as is.
    caplog.set_level(logging.INFO)
    body = (
        b'--bb\r\nContent-Disposition: form-data; name="take"; '
        b"filename*=UTF-8''a.wav%0A2026-01-01%20INFO%20enrolled%20mallory\r\n\r\nnot audio\r\n"
        b"--bb--\r\n"
    )
    status, reply, _ = api["client"].request(
        "POST", "/api/v1/users/carol", body, {"Content-Type": "multipart/form-data; boundary=bb"}
    )
    assert status == 400 and "a.wav\n2026" in reply["message"]  # the client sees its name
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("voxgate.api")]
    assert any("a.wav\\n2026" in line for line in lines), lines
    assert not any("\n" in line for line in lines), lines


def test_a_name_with_a_backslash_is_not_enrolled_and_a_slash_gets_a_clear_400(
    enroll_api: dict, tmp_path: Path
) -> None:
    # 'a%5Cb' was enrolled as 'a\b', a user voxgate enroll refuses and the MQTT commands
    # could never erase; 'a%2Fb' got a bare "URL not found" although openapi.yaml said any
    # percent-encoded name works.
    from fleet_tts import DIGITS, say, write_wav

    c = enroll_api["client"]
    takes = [
        (f"take{i}.wav", write_wav(tmp_path / f"t{i}.wav", say(t, "en+m3")).read_bytes())
        for i, t in enumerate(DIGITS[:3])
    ]
    status, body, _ = c.upload("/api/v1/users/a%5Cb", takes)
    assert status == 400 and body["error"] == "bad_request", body
    assert "must not contain / or \\" in body["message"]
    assert enroll_api["store"].users() == [] and enroll_api["changes"] == []
    for method, path in (
        ("POST", "/api/v1/users/a%2Fb"),
        ("DELETE", "/api/v1/users/a%2fb"),
        ("GET", "/api/v1/users/a%2Fb/export"),
    ):
        status, body, _ = c.request(method, path)
        assert status == 400 and "cannot contain / (%2F)" in body["message"], (method, body)
    status, body, _ = c.request("GET", "/api/v1/nothing%2Fhere")
    assert status == 404  # other unknown paths are still plain 404s
    # A user enrolled with a backslash before the rule can still be exported and erased.
    enroll_api["store"].add_user("old\\name", np.ones((3, 256)), "test-model/1", {"takes": 3})
    status, body, _ = c.request("GET", "/api/v1/users/old%5Cname/export")
    assert status == 200 and body["name"] == "old\\name"
    status, body, _ = c.request("DELETE", "/api/v1/users/old%5Cname")
    assert status == 200 and body == {"erased": "old\\name"}


def test_idle_connections_without_a_token_cannot_exhaust_the_daemons_threads(
    api: dict, tmp_path: Path
) -> None:
    """Each connection got a thread that waited for a request line for ever: 100 idle TCP
    connections, no token needed, made 100 threads in the process that hosts the API (the
    daemon, whose unit has TasksMax=64: then it could start no thread or program at all)."""
    import socket
    import threading
    import time

    from voxgate.httplimits import MAX_CONNECTIONS

    cfg = parse_config(f"device_id: door-test\ndata_dir: {tmp_path}\n")
    app = create_app(cfg, UserAdmin(api["store"], cfg.speaker, cfg.vad, lambda: None), b"t" * 20)
    server = ApiServer(
        app, "127.0.0.1", 0, poll_interval=0.05, request_timeout_s=1.0, header_timeout_s=1.0
    )
    server.start()
    before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(100)]
    try:
        time.sleep(0.5)
        assert threading.active_count() - before <= MAX_CONNECTIONS
        # Over the limit: a short 503 and the connection closed, not a thread.
        assert any(sent_so_far(s).startswith(b"HTTP/1.1 503") for s in idle)
        # The idle ones are closed after the request timeout; then the API answers again.
        idle[0].settimeout(5)
        assert idle[0].recv(100) == b""
        # The other idle connections from this address close at the same timeout, each
        # giving its slot back just after its socket closes: wait for that, not a fixed time.
        client = Client(server.port, "t" * 20)

        def answers() -> bool:
            return client.request("GET", "/api/v1/health")[0] == 200

        wait_until(answers, 5, "the API answering again")
    finally:
        for s in idle:
            s.close()
        server.stop()


def test_a_request_without_a_token_cannot_write_long_lines_or_escapes_into_the_log(
    api: dict, caplog: pytest.LogCaptureFixture
) -> None:
    """No token needed: a 60 kB path was logged whole, twice (120 kB of log per request),
    and a method holding terminal escapes ('\\x1b[2J' clears the screen of whoever reads the
    log in a terminal) was logged as sent."""
    import socket

    caplog.set_level(logging.INFO)
    for request in (
        b"GET /" + b"a" * 60_000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"\x1b[2J\x1b[31mGET /api/v1/users HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ):
        with socket.create_connection(("127.0.0.1", api["port"]), timeout=10) as s:
            s.sendall(request)
            assert s.recv(100).startswith(b"HTTP/1.1 401")
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("voxgate.api")]
    assert len(lines) >= 4
    assert all(len(line) < 600 for line in lines), [len(line) for line in lines]
    assert not any("\x1b" in line for line in lines), lines
    assert any("60001 characters" in line for line in lines), lines  # the length is told
    assert any("\\x1b[2J" in line for line in lines), lines  # shown escaped


def _idle_from(source: str, port: int, count: int) -> list[Any]:
    """`count` TCP connections to the API from the local address `source`, sending nothing."""
    import socket

    socks = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        socks.append(s)
    return socks


def _small_api(api: dict, tmp_path: Path, host: str = "127.0.0.1", **timeouts: float) -> Any:
    cfg = parse_config(f"device_id: door-test\ndata_dir: {tmp_path}\n")
    app = create_app(cfg, UserAdmin(api["store"], cfg.speaker, cfg.vad, lambda: None), b"t" * 20)
    server = ApiServer(app, host, 0, poll_interval=0.05, **timeouts)
    server.start()
    return server


def test_idle_sockets_from_one_address_do_not_keep_the_admin_out(
    api: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Eight idle sockets, no token needed, renewed before the silence timeout, took every
    slot: the administrator's own requests got 503 busy for as long as they were kept up.
    (All of loopback is one client: the sockets come from this machine's network address.)"""
    import socket
    import time

    address = _network_address()
    if address is None:
        pytest.skip("this machine has no address besides loopback")
    server = _small_api(api, tmp_path, host="0.0.0.0")
    with caplog.at_level(logging.WARNING, logger="voxgate.httplimits"):
        idle = [socket.create_connection((address, server.port)) for _ in range(8)]
        time.sleep(0.3)
    try:
        assert any(f"the latest from {address}" in r.getMessage() for r in caplog.records)
        # One address holds only its share; the rest are told so and closed.
        told = [sent_so_far(s) for s in idle]
        assert sum(r.startswith(b"HTTP/1.1 503") for r in told) == 5, told
        assert any(b"from this address" in r for r in told)
        status, body, _ = Client(server.port, "t" * 20).request("GET", "/api/v1/health")
        assert status == 200, body
    finally:
        for s in idle:
            s.close()
        server.stop()


def test_a_connection_dripping_its_headers_is_closed_at_the_header_deadline(
    api: dict, tmp_path: Path
) -> None:
    """A byte now and then renewed the silence timeout for ever: a slot held without a
    request. The request line and headers now have a deadline of their own."""
    import time

    server = _small_api(api, tmp_path, request_timeout_s=10.0, header_timeout_s=0.6)
    drip = _idle_from("127.0.0.3", server.port, 1)[0]
    drip.settimeout(0.1)
    started = time.monotonic()
    closed_after = None
    try:
        for byte in b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40:
            try:
                drip.sendall(bytes([byte]))  # one byte each 0.1 s: never 0.6 s of silence
                if drip.recv(1) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except OSError:
                closed_after = time.monotonic() - started
                break
        assert closed_after is not None and closed_after < 1.5, closed_after
        # The headers in time, then the body: the silence timeout applies, not the deadline.
        c = Client(server.port, "t" * 20)
        status, body, _ = c.request("GET", "/api/v1/health")
        assert status == 200, body
    finally:
        drip.close()
        server.stop()


def _network_address() -> str | None:
    """An address of this machine that is not loopback (None: it has none)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if address.startswith("127.") else address


def test_connections_from_the_network_leave_slots_for_the_administrator_on_loopback(
    api: dict, tmp_path: Path
) -> None:
    """Clients that are not loopback together hold at most 6 of the 8 slots."""
    import socket
    import time

    address = _network_address()
    if address is None:
        pytest.skip("this machine has no address besides loopback")
    server = _small_api(api, tmp_path, host="0.0.0.0")
    server._server.per_address = 8  # this machine has one such address: lift its share
    idle = []
    try:
        idle = [socket.create_connection((address, server.port)) for _ in range(8)]
        time.sleep(0.3)
        told = [sent_so_far(s) for s in idle]
        assert sum(r.startswith(b"HTTP/1.1 503") for r in told) == 2, told
        # Two at once from loopback still get in (one idle, one request).
        idle += _idle_from("127.0.0.1", server.port, 1)
        time.sleep(0.1)
        assert sent_so_far(idle[-1]) == b""
        status, body, _ = Client(server.port, "t" * 20).request("GET", "/api/v1/health")
        assert status == 200, body
    finally:
        for s in idle:
            s.close()
        server.stop()


def test_erase_and_export_name_the_person_as_enrolled(
    api: dict, caplog: pytest.LogCaptureFixture
) -> None:
    """DELETE /users/ALICE answered {"erased": "ALICE"} and audited "ALICE", while the
    daemon's own lines said "alice": the person is named as enrolled now."""
    c = api["client"]
    assert c.request("GET", "/api/v1/users/ALICE/export")[0] == 200
    with caplog.at_level(logging.INFO, logger="voxgate.api"):
        status, body, _ = c.request("DELETE", "/api/v1/users/ALICE")
    assert status == 200 and body == {"erased": "alice"}
    assert api["changes"] == [("erased", "alice")]
    assert [(e, f["user"]) for e, f in api["audit"]] == [
        ("admin_export", "alice"),
        ("admin_erase", "alice"),
    ]
    assert "erased alice over the API" in caplog.text


def test_a_flood_of_requests_without_the_token_is_logged_within_a_limit(
    api: dict, caplog: pytest.LogCaptureFixture
) -> None:
    """Anyone who reaches the port, no token needed, made two log lines per request: over
    one keep-alive connection about 1300 lines a second, past journald's rate limit (10000
    in 30 s by default) in seconds, which then dropped the daemon's own lines (decisions,
    lockouts) with them. Now the first few a minute are logged, then one notice."""
    from voxgate.httplimits import REJECTED_LOG_BURST

    caplog.set_level(logging.INFO)
    conn = http.client.HTTPConnection("127.0.0.1", api["port"], timeout=30)
    for _ in range(200):
        conn.request("GET", "/api/v1/users", headers={"Authorization": "Bearer wrong"})
        resp = conn.getresponse()
        assert resp.status == 401
        resp.read()
    conn.close()
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("voxgate")]
    rejected = [m for m in lines if "rejected GET /api/v1/users" in m]
    assert len(rejected) == REJECTED_LOG_BURST
    assert sum("-> 401" in m for m in lines) == REJECTED_LOG_BURST
    assert sum("held back" in m for m in lines) == 1, lines[-3:]
    # The administrator's requests are still logged.
    assert api["client"].request("GET", "/api/v1/health")[0] == 200
    assert "API GET /api/v1/health -> 200" in caplog.records[-1].getMessage()
    # Requests werkzeug cannot parse: an ERROR line each, ~700 a second.
    caplog.clear()
    for _ in range(100):
        with socket.create_connection(("127.0.0.1", api["port"]), timeout=10) as sock:
            sock.sendall(b"GARBAGE\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
            assert b"Error code: 400" in answer
    bad = [r for r in caplog.records if "Bad request syntax" in r.getMessage()]
    assert len(bad) == REJECTED_LOG_BURST
    assert sum("held back" in r.getMessage() for r in caplog.records) == 1


def test_a_client_that_waits_for_each_answer_is_never_refused_as_busy(
    api: dict, tmp_path: Path
) -> None:
    """A connection's slot was given back only after its socket was closed: a client that
    opened its next connection as soon as it read the answer's end (the server's close)
    could find its earlier slots still held, and got 503 busy with nothing else open. One
    slot per client makes any slot held past the close a refusal. (A client that stops
    reading at Content-Length, before the server closes, as http.client does: the tests
    of answered threads in test_api_limits.py.)"""
    server = _small_api(api, tmp_path)
    server._server.per_address = 1
    try:
        for i in range(300):
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.sendall(
                    b"GET /api/v1/health HTTP/1.0\r\nAuthorization: Bearer "
                    + b"t" * 20
                    + b"\r\n\r\n"
                )
                answer = b""
                while chunk := sock.recv(4096):
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 200") or answer.startswith(b"HTTP/1.0 200"), (
                i,
                answer[:120],
            )
    finally:
        server.stop()


def test_a_name_that_reads_as_an_enrolled_one_is_pointed_at_it(api: dict) -> None:
    """`users erase` and `users export` name the enrolled spelling of a look-alike name; the
    API answered 404 "no user ... enrolled" to a data request for "ａlice" (a full-width a)
    while alice's voiceprint stayed."""
    c = api["client"]
    for method, path in (
        ("GET", "/api/v1/users/%EF%BD%81lice/export"),
        ("DELETE", "/api/v1/users/%EF%BD%81lice"),
    ):
        status, body, _ = c.request(method, path)
        assert status == 404 and body["error"] == "not_found", body
        assert "but 'alice' is" in body["message"], body
    assert api["store"].get("alice") is not None
