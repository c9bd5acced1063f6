"""Integers in the admin API's query strings are ASCII digits only. Python's int() also reads
other scripts' digits ('٣' is 3), surrounding spaces, '+' and '_' separators, so
`?limit=٣` or `?limit=1_0` was taken as a number: what the operator's tool sent and what the
API did no longer matched. Over a real socket with the real app."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

pytest.importorskip("flask")

from voxgate.api import ApiServer, UserAdmin, create_app
from voxgate.config import parse_config
from voxgate.voiceprints import VoiceprintStore

TOKEN = "test-token-0123456789abcdef"


@pytest.fixture()
def port(tmp_path: Path) -> Iterator[int]:
    cfg = parse_config(f"device_id: door-test\ndata_dir: {tmp_path}\n")
    (tmp_path / "audit.jsonl").write_text("")
    store = VoiceprintStore(tmp_path / "voiceprints.db", bytes(range(32)))
    admin = UserAdmin(
        store, cfg.speaker, cfg.vad, load_embedder=lambda: pytest.fail("no model needed")
    )
    server = ApiServer(create_app(cfg, admin, TOKEN.encode()), "127.0.0.1", 0, poll_interval=0.05)
    server.start()
    yield server.port
    server.stop()
    store.close()


def get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    return resp.status, body


def test_limit_takes_ascii_digits_only(port: int) -> None:
    for good in ("3", "50", "007"):
        status, _ = get(port, f"/api/v1/decisions?limit={good}")
        assert status == 200, good
    for bad in ("٣", "３", "1_0", "+5", " 5", "5 ", "²", "-1", "", "0x10", "9" * 5000):
        status, body = get(port, f"/api/v1/decisions?limit={quote(bad)}")
        assert status == 400, bad
        assert body["error"] == "bad_request"
        assert "limit" in body["message"] and "digits" in body["message"], body
