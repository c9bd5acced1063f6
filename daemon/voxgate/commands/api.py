"""voxgate api: serve the local admin HTTP API on its own (the daemon can also host it)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from voxgate.commands.common import add_config_option, add_parser, ascii_int, config_from_args

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub,
        "api",
        help="serve the local admin HTTP API",
        description="Serve the token-authenticated admin API (users, enrollment upload, erase, "
        "export, recent decisions, config check) described in docs/api/openapi.yaml. The token "
        "comes from $VOXGATE_API_TOKEN, the systemd credential 'api-token' or api.token_file. "
        "The user endpoints need the voiceprint key (speaker.key_file, "
        "$VOXGATE_VOICEPRINT_KEY or the credential 'voiceprint-key'); without it, health, "
        "decisions and config are served and the user endpoints answer 503 "
        "voiceprint_key_missing (fleet sync needs the key to start).",
        examples="""
            voxgate api -c /etc/voxgate/voxgate.yaml
            openssl rand -hex 32 > token; chmod 600 token      # a token, once
            VOXGATE_API_TOKEN=$(cat token) voxgate api -c /etc/voxgate/voxgate.yaml --port 9800
            curl -H "Authorization: Bearer $(cat token)" http://127.0.0.1:9800/api/v1/users
        """,
    )
    add_config_option(p)
    p.add_argument("--host", help="bind address (default: api.host, normally 127.0.0.1)")
    p.add_argument("--port", type=ascii_int, help="port (default: api.port)")
    p.set_defaults(func=run)


def load_embedder_for(cfg: Any) -> Any:
    from voxgate.embedding import load_embedder

    return load_embedder(cfg.speaker.model, threads=cfg.speaker.threads)


def run(args: argparse.Namespace) -> int:
    from voxgate.api import ApiError, ApiServer, UserAdmin, create_app, load_token
    from voxgate.audit import open_log
    from voxgate.config.secrets import SecretError
    from voxgate.erasure import after_erase
    from voxgate.voiceprints import KeyMissing, StoreError, open_store

    cfg = config_from_args(args)
    if cfg is None:
        return 1
    logging.basicConfig(
        level=cfg.logging.level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    host = args.host or cfg.api.host
    port = args.port or cfg.api.port
    try:
        token = load_token(cfg)
        # Changes made here go to the audit log like the daemon's API and the CLI's: without
        # it an erase or enrollment through this server left no line at all.
        # Before anything here writes: a log found lost begins with audit_log_lost, where
        # the empty log opening it creates hid the loss from the daemon's next start.
        audit = open_log(cfg, note_loss=True)
    except (ApiError, SecretError, OSError) as exc:
        print(f"voxgate api: {exc}", file=sys.stderr)
        return 1
    store, no_key = None, None
    try:
        store = open_store(cfg)
    except KeyMissing as exc:
        # Health, decisions and config do not read voiceprints: an integrator may serve
        # them without giving this process the biometric key. Fleet sync does need it.
        if cfg.fleet.enabled:
            print(f"voxgate api: fleet sync needs the voiceprint key: {exc}", file=sys.stderr)
            return 1
        no_key = str(exc)
        log.warning(
            "no voiceprint key: serving health, decisions and config; the user endpoints "
            "answer 503 voiceprint_key_missing (%s)",
            exc,
        )
    except (StoreError, OSError) as exc:
        print(f"voxgate api: {exc}", file=sys.stderr)
        return 1
    agent = None
    if cfg.fleet.enabled:
        assert store is not None
        from voxgate.embedding import ModelError, load_card
        from voxgate.fleet import FleetError, FleetSync

        try:
            card = load_card(cfg.speaker.model)
            agent = FleetSync.from_config(
                cfg,
                store,
                card.id,
                model_sha256=card.model.sha256,
                audit_event=audit.append,
            )
        except (FleetError, ModelError) as exc:
            print(f"voxgate api: {exc}", file=sys.stderr)
            store.close()
            return 1
        agent.start()
    admin = UserAdmin(
        store,
        cfg.speaker,
        cfg.vad,
        lambda: load_embedder_for(cfg),
        on_change=after_erase(cfg, agent.on_local_change if agent else None),
        template_threshold=cfg.stt.template_threshold,
        no_store=no_key,
    )
    if host not in {"127.0.0.1", "::1", "localhost"}:
        log.warning("admin API bound to %s: reachable from the network, keep the token safe", host)
    try:
        app = create_app(cfg, admin, token, audit_event=audit.append)
        server = ApiServer(app, host, port)
    except OSError as exc:
        print(f"voxgate api: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        if agent is not None:
            agent.stop()
        if store is not None:
            store.close()
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    print(f"voxgate api: serving on {server.url}", file=sys.stderr)
    stop.wait()
    server.stop()
    if agent is not None:
        agent.stop()
    if store is not None:
        store.close()
    return 0
