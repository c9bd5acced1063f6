"""voxgate actuator: the reference lock controller (verifies decisions, acts on grants)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from voxgate.commands.common import add_parser

EXAMPLES = """
voxgate actuator -c /etc/voxgate/actuator.yaml
voxgate actuator -c actuator.yaml --check          validate the file and the keys, then exit
voxgate actuator -c actuator.yaml -v               debug logging, paho included
voxgate actuator -c actuator.yaml --forget front-door
                      the actuator stopped: accept front-door's decisions again after its
                      sequence numbers went backwards (docs/mqtt.md)

actuator.yaml:
  broker: {host: mqtt.lan, port: 8883, username: lock-front, tls: {ca_file: /etc/voxgate/ca.crt}}
  devices: [{id: front-door, key_file: /etc/voxgate/front-door.key}]
  state_file: /var/lib/voxgate-actuator/state.json
  command: {argv: [/usr/local/bin/open-door, --seconds, "3"]}   # or gpio: {pin: GPIO17}
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = add_parser(
        sub,
        "actuator",
        help="reference lock controller: obey signed decisions",
        description="Subscribe to doors' decisions, refuse anything forged, tampered, replayed "
        "or expired (each refusal is logged with its reason and reported to the door on "
        "<prefix>/<device>/decision/refused, signed with that door's key), and on 'granted' "
        "pulse a GPIO or run a program (no shell; decision fields in VOXGATE_* environment "
        "variables).",
        examples=EXAMPLES,
    )
    p.add_argument("-c", "--config", metavar="FILE", required=True, help="actuator config (YAML)")
    p.add_argument("--check", action="store_true", help="validate config and keys, then exit")
    p.add_argument(
        "--forget",
        metavar="DEVICE",
        help="remove DEVICE's last accepted sequence number from the state file (a door whose "
        "numbers went backwards), then exit; refused while the actuator runs",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from voxgate.actuator import (
        Actuator,
        ActuatorSetupError,
        check_action,
        forget_device,
        hold_state_lock,
        load_actuator_config,
    )

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        logging.getLogger("paho").setLevel(logging.WARNING)
    try:
        cfg = load_actuator_config(args.config)
        if args.forget is not None:
            last, issued = forget_device(cfg, args.forget)
            when = "" if issued is None else f", issued at {issued:.3f}"
            print(
                f"{cfg.state_file}: forgot {args.forget!r} (its last accepted seq was "
                f"{last}{when}); the actuator accepts that door's next signed decision "
                "whatever its number"
            )
            return 0
        check_action(cfg)
        # Before the state is read: from here on --forget sees this actuator running.
        lock = None if args.check else hold_state_lock(cfg)  # noqa: F841 (held until exit)
        actuator = Actuator(cfg, config_path=args.config)
    except ActuatorSetupError as exc:
        print(f"voxgate actuator: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{args.config}: OK ({len(cfg.devices)} device(s))")
        return 0
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    actuator.run(stop)
    return 0
