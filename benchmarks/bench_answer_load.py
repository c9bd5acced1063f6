"""Does CPU load change what the door hears? The same answers through the real daemon, idle
and beside busy loops, written into its stdin at once or in 30 ms pieces at real time.

    python benchmarks/bench_answer_load.py                  # 20 answers, 3 busy loops
    python benchmarks/bench_answer_load.py --answers 10 --busy 2

Each run is a fresh door (answer_door.PauseDoor: george enrolled with prompted takes, MQTT
to a real mosquitto). The answers are fixed digit strings of george's recordings with 0.8 s
pauses, not the challenge (which is random), so what the template check heard (the
decision's liveness_heard) and the net speech (speech_s) depend only on the audio and on how
the daemon takes it in. Printed: each run's readings, and how many match the idle run's.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "daemon"))


def _busy() -> None:
    while True:
        pass


def run(fsdd: Path, answers: int, paced: bool) -> list[tuple[Any, ...]]:
    from answer_door import PauseDoor, room_tone, wake_fields
    from mqtt_helpers import wait_until

    got: list[tuple[Any, ...]] = []
    with tempfile.TemporaryDirectory(prefix="bench_answer_load_") as tmp:
        door = PauseDoor(Path(tmp), fsdd, "george", {})
        try:
            wakes = wake_fields(fsdd, "george")
            rng = np.random.default_rng(3)
            for k in range(answers):
                digits = "".join(str(x) for x in rng.integers(0, 10, 5))
                said = door.digits.say(digits, 0.8, rng)
                answer = np.concatenate([room_tone(0.3), said, room_tone(3.0)])
                seen_ch, seen_dec = len(door.challenges()), len(door.decisions())
                wake = door.digits.take(wakes[k % len(wakes)])
                door.feed(np.concatenate([room_tone(0.3), wake, room_tone(1.0)]))
                wait_until(lambda n=seen_ch: len(door.challenges()) > n, 30, "a challenge")
                if paced:
                    for i in range(0, len(answer), 480):
                        door.feed(answer[i : i + 480])
                        time.sleep(0.03)
                else:
                    door.feed(answer)

                def done(seen: int = seen_dec) -> bool:
                    return len(door.decisions()) > seen and door.state() == "idle"

                wait_until(done, 30, "a decision")
                time.sleep(0.5)  # a cut answer's next piece would show up by now
                decided = door.decisions()[seen_dec:]
                got.append((digits, *[(d["liveness_heard"], d["speech_s"]) for d in decided]))
        finally:
            door.close()
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--answers", type=int, default=20)
    ap.add_argument("--busy", type=int, default=3, help="busy loops beside the loaded runs")
    args = ap.parse_args()
    fsdd = args.data / "fsdd"
    if not (fsdd / "manifest.csv").exists():
        print(f"no FSDD data at {fsdd}", file=sys.stderr)
        return 1
    idle = run(fsdd, args.answers, paced=False)
    print(f"idle, written at once: {idle}")
    loops = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(args.busy)]
    for p in loops:
        p.start()
    try:
        for paced in (False, True):
            loaded = run(fsdd, args.answers, paced)
            how = "in 30 ms pieces" if paced else "at once"
            same = sum(a == b for a, b in zip(idle, loaded, strict=True))
            print(f"{args.busy} busy loops, written {how}: {loaded}")
            print(f"  same readings and speech_s as idle: {same}/{args.answers}")
    finally:
        for p in loops:
            p.terminate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
