"""Every route of the admin API is described in docs/api/openapi.yaml, and nothing more."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

pytest.importorskip("flask")

from voxgate.api import UserAdmin, create_app
from voxgate.config import VoxgateConfig
from voxgate.voiceprints import VoiceprintStore

SPEC = Path(__file__).resolve().parents[2] / "docs" / "api" / "openapi.yaml"
IGNORED = {"HEAD", "OPTIONS"}


def _app_routes(tmp_path: Path) -> set[tuple[str, str]]:
    store = VoiceprintStore(tmp_path / "vp.db", bytes(32))
    app = create_app(VoxgateConfig(), UserAdmin(store, None, None, lambda: None), b"x" * 32)
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in rule.methods - IGNORED:
            routes.add((method.lower(), path))
    store.close()
    return routes


def _spec_routes() -> set[tuple[str, str]]:
    spec = yaml.safe_load(SPEC.read_text())
    assert spec["openapi"].startswith("3.")
    methods = {"get", "post", "put", "patch", "delete"}
    return {(m, path) for path, item in spec["paths"].items() for m in item if m in methods}


def test_every_route_is_documented(tmp_path: Path) -> None:
    app_routes = _app_routes(tmp_path)
    assert len(app_routes) >= 8
    missing = app_routes - _spec_routes()
    assert not missing, f"routes missing from {SPEC.name}: {sorted(missing)}"


def test_spec_describes_no_route_the_app_lacks(tmp_path: Path) -> None:
    extra = _spec_routes() - _app_routes(tmp_path)
    assert not extra, f"{SPEC.name} describes routes the app does not serve: {sorted(extra)}"


def test_every_operation_documents_auth_failure() -> None:
    spec = yaml.safe_load(SPEC.read_text())
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            assert "401" in op["responses"], f"{method} {path}"


def test_every_reference_resolves() -> None:
    spec = yaml.safe_load(SPEC.read_text())
    refs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    refs.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(spec)
    assert refs
    for ref in refs:
        assert ref.startswith("#/"), ref
        node = spec
        for part in ref[2:].split("/"):
            assert part in node, f"unresolved $ref {ref}"
            node = node[part]
