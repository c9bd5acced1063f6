"""voxgate fleet: signing keys for fleet sync, and sending/withdrawing a user by hand."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from voxgate.commands.common import add_config_option, add_parser, ascii_seconds, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub,
        "fleet",
        help="fleet sync: keys, resend, revoke or erase a user, status",
        description="Voiceprint sync between doors (docs/fleet.md). keygen makes a door's "
        "Ed25519 signing key and prints the public half for fleet.signers; resend publishes a "
        "locally enrolled user again; revoke withdraws a user from some groups; erase tells every "
        "group to erase a user this door does not hold (`voxgate users erase` for one it does); "
        "status shows what the door has not sent yet and the users it knows by tag.",
        examples="""
            voxgate fleet keygen /etc/voxgate/credentials/fleet-signing-key
            voxgate fleet pubkey /etc/voxgate/credentials/fleet-signing-key
            voxgate fleet resend alice -c /etc/voxgate/voxgate.yaml
            voxgate fleet revoke alice --group hq_lab -c /etc/voxgate/voxgate.yaml
            voxgate fleet erase alice -c /etc/voxgate/voxgate.yaml
            voxgate fleet status -c /etc/voxgate/voxgate.yaml
        """,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    kg = add_parser(
        actions,
        "keygen",
        help="write a new signing key (0600); print its public key",
        description="Write a new Ed25519 signing key to FILE (mode 0600; an existing file is "
        "not overwritten) and print its public key, for fleet.signers on the other doors.",
        examples="voxgate fleet keygen /etc/voxgate/credentials/fleet-signing-key",
    )
    kg.add_argument("file", type=Path, metavar="FILE", help="where to write the key")
    kg.set_defaults(func=keygen)
    pk = add_parser(
        actions,
        "pubkey",
        help="print the public key of a signing key file",
        examples="voxgate fleet pubkey /etc/voxgate/credentials/fleet-signing-key",
    )
    pk.add_argument("file", type=Path, metavar="FILE", help="a key written by keygen")
    pk.set_defaults(func=pubkey)
    rs = add_parser(
        actions,
        "resend",
        help="publish a locally stored user to its groups again",
        examples="voxgate fleet resend alice -c /etc/voxgate/voxgate.yaml",
    )
    rs.add_argument("user", metavar="NAME", help="an enrolled user")
    _session_options(rs)
    rs.set_defaults(func=resend)
    rv = add_parser(
        actions,
        "revoke",
        help="withdraw a user from groups (doors there erase it)",
        examples="""
            voxgate fleet revoke alice --group hq_lab -c /etc/voxgate/voxgate.yaml
            voxgate fleet revoke alice --group hq_lab --group annex -c /etc/voxgate/voxgate.yaml
        """,
    )
    rv.add_argument("user", metavar="NAME", help="the user to withdraw")
    rv.add_argument("--group", action="append", required=True, help="group (repeatable)")
    _session_options(rv)
    rv.set_defaults(func=revoke)
    er = add_parser(
        actions,
        "erase",
        help="tell every group to erase a user this door does not hold",
        description="Publish an erase of NAME to every group in fleet.access: every door "
        "erases its copy and ignores older voiceprints of NAME from then on. For a person "
        "enrolled at a door that is gone or was re-imaged, and to replace an erase sent by "
        "older doors (whose tombstone held the name) with a nameless one. A user this door "
        "holds is erased with `voxgate users erase NAME`, which also tells the fleet.",
        examples="voxgate fleet erase alice -c /etc/voxgate/voxgate.yaml",
    )
    er.add_argument("user", metavar="NAME", help="the user to erase on every door")
    _session_options(er)
    er.set_defaults(func=erase)
    st = add_parser(
        actions,
        "status",
        help="what this door's fleet sync state holds: unsent changes, users by tag",
        description="Read this door's fleet sync state (fleet.state_file) without changing it "
        "or connecting: the outbox (changes made here that the broker has not acknowledged: "
        "until it is empty the other doors have not heard of them) and, per user tag, the "
        "newest change applied here, with the name of the voiceprint this door holds under "
        "that tag. Exit status: 0, the outbox is empty; 2, changes wait in the outbox; 1, an "
        "error.",
        examples="""
            voxgate fleet status -c /etc/voxgate/voxgate.yaml
            voxgate fleet status --json -c /etc/voxgate/voxgate.yaml
        """,
    )
    st.add_argument("--json", action="store_true", help="print the report as JSON")
    add_config_option(st)
    st.set_defaults(func=status)


def _session_options(p: argparse.ArgumentParser) -> None:
    """-c and --timeout, for the actions that talk to the broker."""
    add_config_option(p)
    p.add_argument(
        "--timeout", type=ascii_seconds, default=20.0, help="seconds to wait for the broker"
    )


def keygen(args: argparse.Namespace) -> int:
    from voxgate.config.secrets import PartialWrite, write_new_secret
    from voxgate.fleet import public_key_hex

    key = os.urandom(32)
    try:
        write_new_secret(args.file, key.hex() + "\n")
    except PartialWrite as exc:
        msg = f"{args.file}: {exc.strerror}; nothing written"
        print(f"voxgate fleet keygen: {msg}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(
            f"voxgate fleet keygen: {args.file}: {exc.strerror} (not overwritten)", file=sys.stderr
        )
        return 1
    print(public_key_hex(key))
    return 0


def pubkey(args: argparse.Namespace) -> int:
    from voxgate.fleet import FleetError, parse_key32, public_key_hex

    try:
        print(public_key_hex(parse_key32(args.file.read_bytes(), "signing key")))
    except (OSError, FleetError) as exc:
        print(f"voxgate fleet pubkey: {args.file}: {exc}", file=sys.stderr)
        return 1
    return 0


def _with_agent(args: argparse.Namespace, act: str) -> int:
    from voxgate.audit import open_log
    from voxgate.config.secrets import SecretError
    from voxgate.embedding import ModelError, load_card
    from voxgate.fleet import FleetError, FleetSync
    from voxgate.mqtt.client import MqttSetupError
    from voxgate.voiceprints import StoreError, open_store

    cfg = config_from_args(args)
    if cfg is None:
        return 1
    if not cfg.fleet.enabled:
        # Checked first: with sync off the fleet key is rarely set, and "fleet-key not found"
        # sent people looking for a key when the switch was the problem.
        where = args.config or "the embedded defaults (no --config)"
        print(
            f"voxgate fleet {act}: fleet sync is off in {where} (fleet.enabled: false); set "
            "fleet.enabled: true and the fleet key there first (docs/fleet.md)",
            file=sys.stderr,
        )
        return 1
    try:
        # While connected the agent also applies the fleet's retained messages: without the
        # model id it stored voiceprints of another model, which the daemon refuses.
        card = load_card(cfg.speaker.model)
        # What this door sends to the fleet, and what the session applies, is audited here.
        # A log found lost is said so first: a new log begun here hid the loss from the
        # daemon's next start and from `audit verify`.
        audit = open_log(cfg, note_loss=True)
        store = open_store(cfg)
    except (StoreError, ModelError, SecretError, OSError) as exc:
        print(f"voxgate fleet {act}: {exc}", file=sys.stderr)
        return 1
    try:
        agent = FleetSync.from_config(
            cfg,
            store,
            model_id=card.id,
            model_sha256=card.model.sha256,
            client_id=f"voxgate-{cfg.device_id}-fleet-cli",
            audit_event=audit.append,
        )
    except FleetError as exc:
        print(f"voxgate fleet {act}: {exc}", file=sys.stderr)
        store.close()
        return 1
    try:
        agent.start()
    except (MqttSetupError, SecretError) as exc:  # TLS files, a named password file
        print(f"voxgate fleet {act}: {exc}", file=sys.stderr)
        return 1
    try:
        if act == "resend":
            groups = agent.publish_enrollment(args.user)
        elif act == "erase":
            if store.get(args.user) is not None:
                print(
                    f"voxgate fleet erase: {args.user} is enrolled on this door; `voxgate users "
                    f"erase {args.user}` erases it here and tells the fleet",
                    file=sys.stderr,
                )
                return 1
            agent.publish_erase(args.user)
            groups = list(cfg.fleet.access)
        else:
            agent.publish_revoke(args.user, args.group)
            groups = args.group
        if groups:
            kind = {"resend": "voiceprint"}.get(act, act)
            audit.append("fleet_sent", kind=kind, user=args.user, groups=sorted(groups), via="cli")
        if not agent.wait_sent(args.timeout):
            print(
                f"voxgate fleet {act}: {agent.why_unsent(args.timeout)}; the update is "
                "queued and goes out with the daemon's next connection",
                file=sys.stderr,
            )
            return 2
    except (StoreError, FleetError) as exc:
        print(f"voxgate fleet {act}: {exc}", file=sys.stderr)
        return 1
    finally:
        agent.stop()
        store.close()
    print(f"{act}: {args.user} -> {', '.join(groups) or '(no group allows this user)'}")
    return 0


def resend(args: argparse.Namespace) -> int:
    return _with_agent(args, "resend")


def revoke(args: argparse.Namespace) -> int:
    return _with_agent(args, "revoke")


def erase(args: argparse.Namespace) -> int:
    return _with_agent(args, "erase")


def status(args: argparse.Namespace) -> int:
    import json
    import sqlite3

    from voxgate.fleet import status as fleetstatus

    cfg = config_from_args(args)
    if cfg is None:
        return 1
    try:
        report = fleetstatus.read(cfg)
    except (sqlite3.Error, OSError) as exc:  # OSError: a folder this user cannot enter
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        print(
            f"voxgate fleet status: {fleetstatus.state_file(cfg)}: cannot read the fleet sync "
            f"state ({why})",
            file=sys.stderr,
        )
        return 1
    if args.json:
        print(json.dumps(fleetstatus.as_json(report), indent=2))
    else:
        print(fleetstatus.render(report), end="")
    return 2 if report.outbox else 0
