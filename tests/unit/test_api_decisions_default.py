"""GET /api/v1/decisions returns at most api.decisions_limit entries (docs/api/openapi.yaml),
also when the request names no limit."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("flask")

from voxgate.api import UserAdmin, create_app
from voxgate.audit import open_log
from voxgate.config import parse_config
from voxgate.voiceprints import VoiceprintStore

TOKEN = b"t" * 32


def test_a_request_without_limit_gets_no_more_than_decisions_limit(tmp_path: Path) -> None:
    # The default of 50 was used as it was: with api.decisions_limit 3 a plain GET returned
    # 10 of 10 decisions, although limit=4 was refused as above the bound.
    cfg = parse_config(f"data_dir: {tmp_path}\napi: {{decisions_limit: 3}}\n")
    log = open_log(cfg)
    for i in range(10):
        log.append("decision", outcome="denied", user=None, n=i)
    store = VoiceprintStore(tmp_path / "voiceprints.db", bytes(32))
    admin = UserAdmin(store, cfg.speaker, cfg.vad, lambda: None)
    client = create_app(cfg, admin, TOKEN).test_client()
    auth = {"Authorization": f"Bearer {TOKEN.decode()}"}
    body = client.get("/api/v1/decisions", headers=auth).get_json()
    assert [e["n"] for e in body["events"]] == [9, 8, 7]
    assert client.get("/api/v1/decisions?limit=4", headers=auth).status_code == 400
    assert len(client.get("/api/v1/decisions?limit=2", headers=auth).get_json()["events"]) == 2
    store.close()
