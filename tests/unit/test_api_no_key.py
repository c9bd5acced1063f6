"""The admin API run without the voiceprint key (`voxgate api`, UserAdmin without a store):
an enrollment is answered 503 voiceprint_key_missing before its upload is looked at."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

pytest.importorskip("flask")

from voxgate.api import UserAdmin, create_app
from voxgate.config import parse_config

TOKEN = b"t" * 32


def test_an_enrollment_without_the_voiceprint_key_names_the_key_not_the_takes(
    tmp_path: Path,
) -> None:
    # It decoded the takes first: a take that is not audio was answered 400, telling the
    # integrator to fix an upload when the key was what was missing (and a good upload was
    # decoded, in CPU and a temporary file of the voice, for a 503 after all).
    cfg = parse_config(f"data_dir: {tmp_path}\n")
    why = f"no voiceprint key; create it with: voxgate users init-key {tmp_path / 'k'}"
    admin = UserAdmin(None, cfg.speaker, cfg.vad, lambda: None, no_store=why)
    client = create_app(cfg, admin, TOKEN).test_client()
    auth = {"Authorization": f"Bearer {TOKEN.decode()}"}
    resp = client.post(
        "/api/v1/users/alice",
        headers=auth,
        data={"take": (io.BytesIO(b"not audio at all"), "take1.wav")},
        content_type="multipart/form-data",
    )
    body = resp.get_json()
    assert resp.status_code == 503 and body["error"] == "voiceprint_key_missing", body
    assert str(tmp_path / "k") in body["message"], body
