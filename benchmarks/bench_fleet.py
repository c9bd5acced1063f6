"""Fleet sync over loopback: how fast an enrollment reaches another door, and how fast a new
door catches up with every retained voiceprint.

Starts its own mosquitto (TLS, password file and the per-group fleet ACL; see
tests/integration/broker.py) and two sync agents (FleetSync) with their own SQLite voiceprint
stores. Voiceprints are random unit vectors of the shipped model's size (3 takes x 256): the
transport, crypto and store work do not depend on what the numbers are. Prints:
  propagate: A's publish_enrollment() called -> B has stored the voiceprint (sign, encrypt,
             broker, verify, decrypt, SQLite write), one user at a time
  catch-up:  a new door B2 connects -> it holds all N retained voiceprints
  erase:     A's publish_erase() called -> B has erased the user, for --erases users while B
             holds the N (a tombstone carries no name: B finds the row by the user tag, one
             pass over its store)

    PYTHONPATH=daemon python benchmarks/bench_fleet.py            # 100 users
    PYTHONPATH=daemon python benchmarks/bench_fleet.py -n 300 --no-tls
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

from _stats import report  # noqa: E402
from broker import Broker, have_mosquitto  # noqa: E402
from mqtt_helpers import wait_until  # noqa: E402

from voxgate.config import VoxgateConfig  # noqa: E402
from voxgate.fleet import FleetKeys, FleetSync, public_key_hex, topic_root  # noqa: E402
from voxgate.voiceprints import VoiceprintStore  # noqa: E402

ROOT = topic_root("voxgate", "bench")
USERS = {"door-a": "bench-a-pass", "door-b": "bench-b-pass", "door-b2": "bench-b2-pass"}
ACL = "\n".join(
    [
        "user door-a",
        f"topic read {ROOT}/lobby/#",
        f"topic write {ROOT}/#",
        "user door-b",
        f"topic read {ROOT}/lobby/#",
        "user door-b2",
        f"topic read {ROOT}/lobby/#",
    ]
)


class Door:
    def __init__(self, tmp: Path, name: str, broker: Broker, keys: FleetKeys) -> None:
        settings = broker.mqtt_settings(name)
        cfg = VoxgateConfig.model_validate(
            {
                "device_id": name,
                "mqtt": settings,
                "fleet": {
                    "enabled": True,
                    "site": "bench",
                    "groups": ["lobby"],
                    "access": {"lobby": ["*"]},
                },
            }
        )
        self.stored: dict[str, float] = {}
        self.erased: dict[str, float] = {}
        self.done = threading.Condition()
        self.store = VoiceprintStore(tmp / f"{name}.db", os.urandom(32))
        self.agent = FleetSync(
            cfg.fleet,
            cfg.mqtt,
            name,
            self.store,
            tmp / f"{name}-fleet.db",
            keys=keys,
            audit_event=self._audit,
        )

    def _audit(self, event: str, **fields: Any) -> None:
        seen = {"fleet_stored": self.stored, "fleet_erased": self.erased}.get(event)
        if seen is not None:
            with self.done:
                seen[fields["user"]] = time.perf_counter()
                self.done.notify_all()

    def start(self) -> None:
        self.agent.start()
        wait_until(self.agent.connected.is_set, 20, "connected")

    def stop(self) -> None:
        self.agent.stop()
        self.store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-n", type=int, default=100, help="users to enroll (default 100)")
    ap.add_argument("--no-tls", action="store_true", help="plain TCP listener")
    ap.add_argument("--erases", type=int, default=20, help="users erased at the end (default 20)")
    args = ap.parse_args()
    if not have_mosquitto():
        print("mosquitto is not installed", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmpdir:
        tmp = Path(tmpdir)
        broker = Broker(tmp / "broker", tls=not args.no_tls, users=USERS, acl=ACL).start()
        fleet_key, sk = os.urandom(32), os.urandom(32)
        signers = {"door-a": bytes.fromhex(public_key_hex(sk))}
        a = Door(tmp, "door-a", broker, FleetKeys(fleet_key, sk, signers))
        b = Door(tmp, "door-b", broker, FleetKeys(fleet_key, None, signers))
        try:
            a.start()
            b.start()
            latencies = []
            for i in range(args.n):
                name = f"user{i:04d}"
                emb = rng.standard_normal((3, 256)).astype(np.float32)
                a.store.add_user(name, emb, "bench/1")
                t0 = time.perf_counter()
                a.agent.publish_enrollment(name)
                with b.done:
                    if not b.done.wait_for(lambda name=name: name in b.stored, timeout=20):
                        print(f"{name} never arrived", file=sys.stderr)
                        return 1
                latencies.append((b.stored[name] - t0) * 1000)
            print(f"mosquitto {'TLS' if not args.no_tls else 'TCP'} loopback, MQTT 5, QoS 1")
            report("propagate", latencies)

            b2 = Door(tmp, "door-b2", broker, FleetKeys(fleet_key, None, signers))
            t0 = time.perf_counter()
            b2.start()
            with b2.done:
                ok = b2.done.wait_for(lambda: len(b2.stored) == args.n, timeout=300)
            took = time.perf_counter() - t0
            if not ok:
                print(f"catch-up incomplete: {len(b2.stored)}/{args.n}", file=sys.stderr)
                return 1
            print(
                f"catch-up   {args.n} retained voiceprints in {took:.2f} s "
                f"({args.n / took:.0f} users/s, connect included)"
            )
            b2.stop()

            erase_ms = []
            for i in range(min(args.erases, args.n)):
                name = f"user{i:04d}"
                t0 = time.perf_counter()
                a.agent.publish_erase(name)
                with b.done:
                    if not b.done.wait_for(lambda name=name: name in b.erased, timeout=20):
                        print(f"the erase of {name} never arrived", file=sys.stderr)
                        return 1
                erase_ms.append((b.erased[name] - t0) * 1000)
            if erase_ms:
                report("erase", erase_ms)
        finally:
            a.stop()
            b.stop()
            broker.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
