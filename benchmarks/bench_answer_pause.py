"""Answers said with pauses between digits: how many open the door, and what the longer
answer endpoint (challenge.answer_pause_ms) costs in waiting.

    python benchmarks/bench_answer_pause.py                       # both parts, defaults
    python benchmarks/bench_answer_pause.py --part vad --answers 20
    python benchmarks/bench_answer_pause.py --part door --answer-pause-ms 300 --trials 5
    python benchmarks/bench_answer_pause.py --part door --paced --no-templates
    python benchmarks/bench_answer_pause.py --part door --pauses 0.8 --trials 35  # vs reads_as

Part `vad` (seconds, no services): real FSDD digits of all six speakers, `--answers` random
5-digit answers per speaker and pause, joined with room tone; the daemon's endpointer run
over each answer at the wake phrase's endpoint (vad.hangover_ms) and at the answer's
(max of it and answer_pause_ms). Printed: answers kept whole (one utterance), and the wait
from the end of the answer's last loud sample to the endpoint (median, max), i.e. what the
person waits before the door starts judging.

Part `door` (about a minute): the real daemon (`voxgate run`, stdin, real stages) with one
FSDD speaker enrolled by `voxgate enroll --from ... --prompts` (so they have digit templates)
and MQTT to a real mosquitto for the challenge; `--trials` attempts per pause. Printed:
granted attempts, attempts cut into several decisions, and with --paced (answers written
into the pipe at real time) the wall-clock wait from the end of the answer's speech to the
decision's audit line. With digit templates, each answer is also checked after the attempt by
the door's own digit check on the whole answer at once (answer_door.PauseDoor.reads_as):
printed are the answers it reads as the challenge, and the attempts whose decisions differ
from it (granted, one decision, when read; one liveness_failed decision when misread), i.e.
what test_answer_pause would fail on. The challenge is random, so a misread answer is a
property of the recordings drawn, not of the pauses or of the load. Also printed: the
daemon's CPU per attempt (user + system of the whole process, all threads, from
/proc/PID/stat, over all attempts: wake phrase, challenge, answer, the quiet after) and its
peak RSS. The daemon inherits this process's CPU affinity and environment, so
`taskset -c 0,1` and OPENBLAS_NUM_THREADS apply to it (docs/service.md, "OpenBLAS threads").
`--answer-pause-ms 300` gives the old behaviour (the larger of it and vad.hangover_ms,
500 ms, applies).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "daemon"))

SPEAKERS = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]


def vad_part(fsdd: Path, pauses: list[float], answers: int, answer_ms: int) -> None:
    from answer_door import Digits, room_tone

    from voxgate.config.audio import VadConfig
    from voxgate.vad import Endpointer, SpeechEnded

    wake_ms = VadConfig().hangover_ms
    print(f"endpoint after the answer: {wake_ms} ms (wake, before) vs {answer_ms} ms (answer)")
    print(f"{'pause s':>8} {'endpoint ms':>12} {'whole':>9} {'wait median':>12} {'wait max':>9}")
    for pause in pauses:
        rng = np.random.default_rng(1)
        made = []
        for spk in SPEAKERS:
            d = Digits(fsdd, spk)
            for _ in range(answers):
                digits = "".join(str(x) for x in rng.integers(0, 10, 5))
                made.append(np.concatenate([room_tone(0.3), d.say(digits, pause, rng)]))
        for ms in (wake_ms, max(wake_ms, answer_ms)):
            whole, waits = 0, []
            for answer in made:
                ep = Endpointer(VadConfig(), 30)
                ep.set_hangover_ms(ms)
                pcm = np.concatenate([answer, room_tone(ms / 1000 + 1.0)])
                n = ep.frame_len
                frames = pcm[: len(pcm) // n * n].reshape(-1, n)
                ends = [
                    (i + 1) * n / 16000
                    for i, f in enumerate(frames)
                    for ev in ep.feed(f)
                    if isinstance(ev, SpeechEnded) and ev.utterance is not None
                ]
                whole += len(ends) == 1
                loud_end = (np.flatnonzero(np.abs(answer.astype(np.int32)) > 328)[-1] + 1) / 16000
                waits.append((ends[-1] - loud_end) * 1000)
            print(
                f"{pause:8.1f} {ms:12d} {whole:4d}/{len(made):<4d} "
                f"{statistics.median(waits):12.0f} {max(waits):9.0f}"
            )


def door_part(
    fsdd: Path,
    pauses: list[float],
    trials: int,
    answer_ms: int | None,
    paced: bool,
    templates: bool,
) -> None:
    from answer_door import PauseDoor, wake_fields

    extra = {"challenge": {"answer_pause_ms": answer_ms}} if answer_ms else {}
    speaker = "george"
    with tempfile.TemporaryDirectory(prefix="bench_answer_pause_") as tmp:
        door = PauseDoor(Path(tmp), fsdd, speaker, extra, templates=templates)
        try:
            wakes = wake_fields(fsdd, speaker)
            rng = np.random.default_rng(7)
            print(
                f"door: {speaker}, answer_pause_ms {answer_ms or 'default'}, paced {paced}, "
                f"digit templates {templates}; CPUs {sorted(os.sched_getaffinity(0))}, "
                f"OPENBLAS_NUM_THREADS {os.environ.get('OPENBLAS_NUM_THREADS') or 'not set'}, "
                f"load average {os.getloadavg()[0]:.2f}"
            )
            cpu_before = process_cpu_s(door.proc.pid)
            k = 0
            for pause in pauses:
                got = []
                for _ in range(trials):
                    got.append(door.attempt(wakes[k % len(wakes)], pause, rng, paced=paced))
                    k += 1
                granted = sum(o.granted for o in got)
                cut = sum(o.cut for o in got)
                # A cut answer's first decision comes before the answer ends: no wait.
                waits = [o.wait_s * 1000 for o in got if o.wait_s is not None and not o.cut]
                wait = f"  wait median {statistics.median(waits):.0f} ms" if waits else ""
                first = sorted({",".join(o.first["reasons"]) or "-" for o in got})
                print(
                    f"pause {pause:.1f} s: granted {granted}/{trials}, cut {cut}/{trials}, "
                    f"first decisions' reasons {first}{wait}"
                )
                if templates:
                    read = [door.reads_as(o) for o in got]
                    differ = sum(not _as_read(o, r) for o, r in zip(got, read, strict=True))
                    print(
                        f"  whole-answer check: read as the challenge {sum(read)}/{trials}; "
                        f"decisions that differ from it {differ}/{trials}"
                    )
            cpu = process_cpu_s(door.proc.pid) - cpu_before
            status = Path(f"/proc/{door.proc.pid}/status").read_text()
            peak = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmHWM"))
            print(
                f"daemon CPU {cpu:.2f} s over {k} attempts: {cpu / max(1, k) * 1000:.0f} ms per "
                f"attempt; peak RSS {peak / 1024:.1f} MB; load average {os.getloadavg()[0]:.2f}"
            )
        finally:
            door.close()


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process, all its threads (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _as_read(o: Any, read: bool) -> bool:
    """The attempt's decisions are what the whole-answer check owes: granted when it read
    the answer as the challenge, else one decision denied for liveness."""
    summary = [(d["outcome"], d["reasons"]) for d in o.decisions]
    if read:
        return summary == [("granted", [])]
    return len(summary) == 1 and "liveness_failed" in summary[0][1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--part", choices=["vad", "door", "both"], default="both")
    ap.add_argument("--pauses", type=float, nargs="+", default=[0.3, 0.6, 0.9, 1.2])
    ap.add_argument("--answers", type=int, default=10, help="vad: answers per speaker/pause")
    ap.add_argument("--trials", type=int, default=3, help="door: attempts per pause")
    ap.add_argument("--answer-pause-ms", type=int, default=None)
    ap.add_argument("--paced", action="store_true", help="door: answers at real time")
    ap.add_argument(
        "--no-templates",
        action="store_true",
        help="door: enroll without prompts, so the phonemes engine checks the answers",
    )
    args = ap.parse_args()
    fsdd = args.data / "fsdd"
    if not (fsdd / "manifest.csv").exists():
        print(f"no FSDD data at {fsdd}", file=sys.stderr)
        return 1
    from voxgate.config.stt import ChallengeConfig

    answer_ms = args.answer_pause_ms or ChallengeConfig().answer_pause_ms
    if args.part in ("vad", "both"):
        vad_part(fsdd, args.pauses, args.answers, answer_ms)
    if args.part in ("door", "both"):
        door_part(
            fsdd, args.pauses, args.trials, args.answer_pause_ms, args.paced, not args.no_templates
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
