"""Decision latency over loopback: decision made -> `voxgate actuator` acted.

Starts its own mosquitto (TLS with a throwaway CA, password file, ACL; see
tests/integration/broker.py), a real `voxgate actuator` child process whose action is a tiny
`sh` command that appends "$VOXGATE_SEQ <time>" to a file, and an MqttLink publishing signed
decisions one at a time. Prints p50/p95/max for:
  delivered: issued_at -> a plain subscriber received the payload (broker path only)
  acted:     issued_at -> the action command ran (verify + replay state fsync + fork/exec)

    PYTHONPATH=daemon python benchmarks/bench_mqtt.py            # 200 decisions, TLS, MQTT 5
    PYTHONPATH=daemon python benchmarks/bench_mqtt.py -n 500 --protocol 3.1.1 --no-tls
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

from _stats import report  # noqa: E402
from broker import STANDARD_USERS, Broker, have_mosquitto, standard_acl  # noqa: E402
from mqtt_helpers import ActuatorProcess, Recorder, link_config, wait_until, write_key  # noqa: E402

from voxgate.decision import Issuer, SequenceCounter  # noqa: E402
from voxgate.mqtt.client import MqttLink  # noqa: E402

DEV = "bench-door"
KEY = b"bench-decision-key-0123456789abcdef"
ACTION = 'echo "$VOXGATE_SEQ $(date +%s.%N)" >> "$0"'


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-n", type=int, default=200, help="decisions to send (default 200)")
    ap.add_argument("--gap-ms", type=float, default=20, help="pause between decisions")
    ap.add_argument("--protocol", choices=["5", "3.1.1"], default="5")
    ap.add_argument("--no-tls", action="store_true", help="plain TCP listener")
    args = ap.parse_args()
    if not have_mosquitto():
        print("mosquitto is not installed", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmpdir:
        tmp = Path(tmpdir)
        broker = Broker(
            tmp / "broker",
            tls=not args.no_tls,
            users=STANDARD_USERS,
            acl=standard_acl(),
        ).start()
        out = tmp / "acted.txt"
        actuator = ActuatorProcess(
            tmp,
            broker,
            {DEV: write_key(tmp / "key", KEY)},
            argv=["/bin/sh", "-c", ACTION, str(out)],
        )
        actuator.out = out
        link = None
        rec = None
        try:
            actuator.start()
            actuator.wait_log("subscribed to 1 topic", 15)
            rec = Recorder(broker, "lock", [f"voxgate/{DEV}/decision"])
            link = MqttLink(link_config(broker, protocol=args.protocol), DEV, decision_key=KEY)
            link.start()
            wait_until(lambda: link.connected, 15, "link connected")
            issuer = Issuer(DEV, SequenceCounter(tmp / "seq.json"), ttl_s=5)
            issued: dict[int, float] = {}
            for _ in range(args.n):
                now = time.time()
                d = issuer.issue("granted", "bench", now)
                issued[d.seq] = now
                link.publish_decision(d)
                time.sleep(args.gap_ms / 1000)
            wait_until(
                lambda: out.exists() and len(out.read_text().splitlines()) >= args.n,
                60,
                "all actions",
            )
            acted = {}
            for line in out.read_text().splitlines():
                seq, t = line.split()
                acted[int(seq)] = float(t)
            delivered = {}
            for m in rec.on(f"voxgate/{DEV}/decision"):
                body = json.loads(json.loads(m.payload)["body"])
                delivered[body["seq"]] = m.at
            print(
                f"bench_mqtt: {args.n} decisions, MQTT {args.protocol}, "
                f"{'plain TCP' if args.no_tls else 'TLS'} loopback, {platform.machine()}, "
                f"python {platform.python_version()}"
            )
            report("delivered", [(delivered[s] - issued[s]) * 1000 for s in issued])
            report("acted", [(acted[s] - issued[s]) * 1000 for s in issued])
            rejected = actuator.log_count("REJECTED")
            print(f"actuator rejections: {rejected}; link stats: {link.stats}")
        finally:
            if link is not None:
                link.stop()
            if rec is not None:
                rec.close()
            actuator.stop()
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
