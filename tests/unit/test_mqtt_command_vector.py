"""docs/mqtt.md's command and reply test vectors: an integrator who signs commands and checks
replies from the doc alone (not with voxgate's code) gets what the door accepts and sends."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from pathlib import Path

import pytest

from voxgate.mqtt.commands import CommandError, CommandGate, make_reply, read_reply

DOCS = Path(__file__).resolve().parents[2] / "docs" / "mqtt.md"
NOW = 1_767_225_610.0  # within the vector's validity


def _vector(name: str) -> str:
    m = re.search(rf"<!-- vector:{name} -->\n```\w*\n(.*?)\n```", DOCS.read_text(), re.S)
    assert m, f"docs/mqtt.md lacks the vector:{name} block"
    return m.group(1)


def _sign(key: bytes, domain: bytes, body: str) -> bytes:
    """The envelope as the doc describes it, built without voxgate's code."""
    sig = hmac.new(key, domain + body.encode("utf-8"), hashlib.sha256).hexdigest()
    return json.dumps({"alg": "HMAC-SHA256", "body": body, "sig": sig}).encode()


def _gate(key: bytes) -> CommandGate:
    return CommandGate("front-door", key, started_at=NOW - 100)


def test_the_documented_command_is_accepted_by_the_door() -> None:
    key, body = _vector("command-key").encode(), _vector("command-body")
    sig = _vector("command-sig")
    assert hmac.new(key, b"voxgate.command.v1\n" + body.encode(), "sha256").hexdigest() == sig
    command = _gate(key).check("erase-user", _sign(key, b"voxgate.command.v1\n", body), NOW)
    assert command.args == {"user": "José"}
    assert command.nonce == "00112233445566778899aabbccddeeff"


def test_a_body_in_any_key_order_and_spacing_is_accepted() -> None:
    key = _vector("command-key").encode()
    fields = json.loads(_vector("command-body"))
    body = json.dumps(dict(reversed(list(fields.items()))), indent=2)  # ASCII, not canonical
    assert _gate(key).check("erase-user", _sign(key, b"voxgate.command.v1\n", body), NOW)


def test_a_body_with_raw_non_ascii_is_refused_as_the_doc_says() -> None:
    """JavaScript's JSON.stringify leaves 'é' raw: the door refuses it (the doc says so and
    how to send it instead)."""
    key = _vector("command-key").encode()
    body = json.dumps(json.loads(_vector("command-body")), ensure_ascii=False)
    with pytest.raises(CommandError) as err:
        _gate(key).check("erase-user", _sign(key, b"voxgate.command.v1\n", body), NOW)
    assert err.value.code == "malformed"
    assert "body must be ASCII (canonical JSON)" in DOCS.read_text()
    assert "body must be ASCII (canonical JSON)" in str(err.value)


def test_the_documented_reply_is_what_the_door_sends_and_checks_with_plain_hmac() -> None:
    key = b"voxgate-test-vector-key-0123456789abcdef"
    assert key.decode() in DOCS.read_text()
    body, sig = _vector("reply-body"), _vector("reply-sig")
    assert hmac.new(key, b"voxgate.reply.v1\n" + body.encode("ascii"), "sha256").hexdigest() == sig
    fields = json.loads(body)
    sent = make_reply(
        key,
        "front-door",
        "erase-user",
        nonce=fields["nonce"],
        ok=True,
        now=fields["at"],
        result=fields["result"],
    )
    assert json.loads(sent) == {"alg": "HMAC-SHA256", "body": body, "sig": sig}
    assert read_reply(sent, key) == fields
