"""Decision latency of the whole door: end of speech -> signed decision on the broker -> lock
acted, over real recordings from ../shared/data, with `voxgate run` pinned to one core.

    python benchmarks/bench_latency.py                          # vcc2018_eval, 4 speakers
    python benchmarks/bench_latency.py --sets vcc2018_eval speechcommands_v001_sample \\
        --speakers 4 --items 16 --core 1

What runs (each a real process): mosquitto on loopback; `voxgate enroll NAME --from TAKES`
for each speaker from the set's enroll.csv (a `;`-joined row is one recording with 0.2 s gaps,
as the README of the data says); `voxgate run` with the real stages (shipped speaker model,
cohort-centred cosine scoring, identify mode, signed decisions over MQTT 5) plus the admin API
and fleet sync loaded, `challenge.mode: off`; `voxgate actuator` running a small program that
records when it ran. The recordings are written into the daemon's standard input at real-time
pace, in 30 ms chunks, the way a microphone delivers them.

Why stdin and not the PyAudio/ALSA `file` PCM (tests/integration/test_mic_alsa.py): that PCM
has no clock (its `null` slave is always ready), so PyAudio reads a whole file in a few
milliseconds and then keeps returning the last buffer after the end; a live source's queue
would drop the real audio under that flood. Pacing the pipe gives the daemon what a
microphone gives it; from the queue on, the code path is the same.

Figures (milliseconds):
- endpoint -> published: from the VAD's end-of-utterance event (hangover_ms of silence after
  the last speech frame) to the decision handed to the broker connection; measured inside
  the daemon (the `latency_s` of each audit `decision` line; the metric
  voxgate_decision_latency_seconds is the same number).
- endpoint -> on broker: from the moment the audio that completes the endpoint (the last
  hangover frame) went into the pipe to a subscriber holding the verified decision. The
  frame positions come from running the same endpointer over the same stream here.
- endpoint -> acted: the same, to the actuator's program starting (grants only).
The end of speech itself is vad.hangover_ms (500 ms by default) before the endpoint: that
wait is the VAD's, a setting, and is printed beside the figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "daemon"))

RATE = 16000
CHUNK = 480  # 30 ms
DKEY = b"bench-decision-key-0123456789abcdef"
ACTION = """
import sys, time
with open(sys.argv[1], "a") as f:
    f.write(repr(time.time()) + " " + __import__("os").environ["VOXGATE_SEQ"] + "\\n")
"""


def load_recording(root: Path, field: str) -> np.ndarray:
    """One recording: `;`-joined paths are played in order with 0.2 s of silence between."""
    from voxgate.audio.file import read_audio

    parts: list[np.ndarray] = []
    for i, rel in enumerate(field.split(";")):
        if i:
            parts.append(np.zeros(int(0.2 * RATE), np.int16))
        parts.append(read_audio(root / rel))
    return np.concatenate(parts)


def room_tone(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Quiet noise (about -80 dBFS) between recordings. Louder white noise (std 20, about
    -64 dBFS) right after speech keeps webrtcvad (mode 2) calling frames speech for seconds,
    which merges recordings into one 15 s utterance; that is a VAD finding of its own, not
    what this benchmark measures."""
    return rng.normal(0, 3, int(seconds * RATE)).astype(np.int16)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


def summary(name: str, ms: list[float]) -> str:
    if not ms:
        return f"{name:28s} n=   0"
    return (
        f"{name:28s} n={len(ms):4d}  p50={statistics.median(ms):7.1f}  p95={pct(ms, 95):7.1f}  "
        f"max={max(ms):7.1f}  mean={statistics.fmean(ms):7.1f}"
    )


def pick(data: Path, sets: list[str], speakers: int, items: int, seed: int) -> tuple[dict, list]:
    """{set: {model: [take fields]}} and [(set, model, field, target)] test items."""
    rng = random.Random(seed)
    enroll: dict[str, dict[str, list[str]]] = {}
    tests: list[tuple[str, str, str, int]] = []
    for name in sets:
        root = data / name
        takes: dict[str, list[str]] = {}
        with open(root / "enroll.csv") as f:
            for row in csv.DictReader(f):
                takes.setdefault(row["model"], []).append(row["path"])
        chosen = sorted(rng.sample(sorted(takes), min(speakers, len(takes))))
        enroll[name] = {m: takes[m] for m in chosen}
        with open(root / "trials.csv") as f:
            trials = [r for r in csv.DictReader(f) if r["model"] in chosen]
        # Half from enrolled speakers (grants), half from the others (denials).
        target = [r for r in trials if r["target"] == "1"]
        other = [
            r
            for r in trials
            if r["target"] == "0" and not any(f"/{m}/" in r["path"] for m in chosen)
        ]
        per = items // 2
        for r in rng.sample(target, min(per, len(target))) + rng.sample(
            other, min(per, len(other))
        ):
            tests.append((name, r["model"], r["path"], int(r["target"])))
    rng.shuffle(tests)
    return enroll, tests


ALSA_CONF = """\
</usr/share/alsa/alsa.conf>
pcm.voxgate_bench_mic {{
  type file
  slave.pcm "null"
  file "/dev/null"
  infile "{raw}"
  format "raw"
  hint {{ show on description "voxgate benchmark microphone" }}
}}
"""


def run_alsa_route(
    args: argparse.Namespace,
    work: Path,
    config: Path,
    cfg: dict[str, Any],
    env: dict[str, str],
    audio: np.ndarray,
    procs: list[subprocess.Popen[Any]],
) -> int:
    """The daemon reads the session through PyAudio from an ALSA `file` PCM, paced by the
    source. Latency is the daemon's own (audit `latency_s`): end of utterance -> published."""
    raw = work / "session.raw"
    raw.write_bytes(audio.astype("<i2").tobytes())
    conf = work / "asound.conf"
    conf.write_text(ALSA_CONF.format(raw=raw))
    cfg["audio"] = {
        "source": "mic",
        "device": "voxgate_bench_mic",
        "device_rate": RATE,
        "realtime": True,
    }
    config.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "voxgate", "run", "-c", str(config)]
    cpus = daemon_cpus(args)
    daemon = subprocess.Popen(
        cmd,
        env={**env, "ALSA_CONFIG_PATH": str(conf)},
        stdin=subprocess.DEVNULL,
        stderr=open(work / "daemon.log", "w"),  # noqa: SIM115
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    )
    procs.append(daemon)
    seconds = len(audio) / RATE
    print(f"playing {seconds:.0f} s through PyAudio/ALSA (paced) ...", flush=True)
    time.sleep(seconds + 3.0)  # after the file, ALSA repeats its last (quiet) buffer
    status = Path(f"/proc/{daemon.pid}/status").read_text().splitlines()
    rss = {k: int(v.split()[0]) for k, _, v in (x.partition(":") for x in status) if k == "VmRSS"}
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(15)
    audit = [json.loads(x) for x in (work / "data" / "audit.jsonl").read_text().splitlines()]
    made = [x for x in audit if x["event"] == "decision"]
    print(
        f"bench_latency: route alsa (PyAudio -> PortAudio -> ALSA file PCM), CPU {cpu_list(cpus)}"
    )
    print(f"rerun: python {shlex.join(['benchmarks/bench_latency.py', *sys.argv[1:]])}")
    print(f"decisions: {len(made)}; published {sum(1 for x in made if x['published'])}")
    print(summary("endpoint -> published", [x["latency_s"] * 1000 for x in made]))
    print(f"daemon RSS at the end: {rss.get('VmRSS', 0) / 1024:.1f} MB")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--sets", nargs="+", default=["vcc2018_eval"])
    ap.add_argument("--speakers", type=int, default=4, help="speakers enrolled per set")
    ap.add_argument("--items", type=int, default=16, help="test recordings per set")
    ap.add_argument("--core", type=int, default=0, help="CPU the daemon is pinned to")
    ap.add_argument(
        "--cpus",
        help="CPUs the daemon may run on instead, comma-separated (0,1); a Pi has 4, and numpy's "
        "OpenBLAS starts a thread per CPU it may use unless OPENBLAS_NUM_THREADS says otherwise",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    ap.add_argument("--gap-s", type=float, default=2.0, help="silence after each recording")
    ap.add_argument(
        "--route",
        choices=["stdin", "alsa"],
        default="stdin",
        help="stdin: paced writes into `voxgate run --source stdin`; alsa: the PyAudio/"
        "PortAudio/ALSA microphone path, fed by an ALSA `file` PCM and paced by the source "
        "(audio.realtime); only the in-daemon latency is measured then",
    )
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"bench_latency: no data at {args.data}", file=sys.stderr)
        return 2

    from broker import Broker

    from voxgate.decision import verify
    from voxgate.fleet import public_key_hex

    work = Path(tempfile.mkdtemp(prefix="voxgate-latency-"))
    broker = Broker(work / "broker", tls=False).start()
    procs: list[subprocess.Popen[Any]] = []
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
        env["PYTHONPATH"] = str(REPO / "daemon")
        env["VOXGATE_API_TOKEN"] = "b" * 40

        def secret(name: str, value: bytes) -> str:
            p = work / name
            p.write_bytes(value)
            p.chmod(0o600)
            return str(p)

        signing = os.urandom(32)
        cfg: dict[str, Any] = {
            "device_id": "bench-door",
            "data_dir": str(work / "data"),
            "logging": {"level": "info"},
            "audio": {"source": "stdin"},
            "speaker": {
                "key_file": secret("voiceprint.key", os.urandom(32).hex().encode()),
                "enroll_min_takes": 2,
                "enroll_min_speech_s": 2,
            },
            "challenge": {"mode": "off"},
            "mqtt": {
                "host": broker.host,
                "port": broker.port,
                "hmac_key_file": secret("decision.key", DKEY),
            },
            "metrics": {"enabled": False},
            "service": {"decided_hold_s": 0.3},
            "api": {"enabled": True, "port": free_port()},
            "fleet": {
                "enabled": True,
                "site": "bench",
                "key_file": secret("fleet.key", os.urandom(32).hex().encode()),
                "signing_key_file": secret("fleet-signing.key", signing.hex().encode()),
                "signers": {"bench-door": public_key_hex(signing)},
                "groups": ["all"],
                "access": {"all": ["*"]},
            },
        }
        config = work / "voxgate.yaml"
        config.write_text(yaml.safe_dump(cfg))
        hangover = 0.5  # vad.hangover_ms default
        enroll, tests = pick(args.data, args.sets, args.speakers, args.items, args.seed)

        t0 = time.monotonic()
        for set_name, models in enroll.items():
            for model, takes in models.items():
                files = []
                for i, field in enumerate(takes):
                    f = work / f"{model}-{i}.wav"
                    sf.write(f, load_recording(args.data / set_name, field), RATE)
                    files.append(str(f))
                r = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "voxgate",
                        "enroll",
                        model,
                        "--from",
                        *files,
                        "-c",
                        str(config),
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                )
                if r.returncode != 0:
                    print(f"enroll {model} failed: {r.stdout}{r.stderr}", file=sys.stderr)
        print(
            f"enrolled {sum(len(m) for m in enroll.values())} speakers "
            f"in {time.monotonic() - t0:.0f} s"
        )

        acted = work / "acted.txt"
        (work / "action.py").write_text(ACTION)
        (work / "lock.key").write_bytes(DKEY)
        (work / "lock.key").chmod(0o600)
        (work / "actuator.yaml").write_text(
            yaml.safe_dump(
                {
                    "broker": {"host": broker.host, "port": broker.port},
                    "devices": [{"id": "bench-door", "key_file": str(work / "lock.key")}],
                    "state_file": str(work / "actuator-state.json"),
                    "command": {"argv": [sys.executable, str(work / "action.py"), str(acted)]},
                }
            )
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "voxgate", "actuator", "-c", str(work / "actuator.yaml")],
                env=env,
                stderr=open(work / "actuator.log", "w"),  # noqa: SIM115
            )
        )

        import paho.mqtt.client as mqtt

        got: list[tuple[float, bytes]] = []
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        subscribed = threading.Event()
        sub.on_connect = lambda c, *a: c.subscribe("voxgate/bench-door/decision", 1)
        sub.on_subscribe = lambda *a: subscribed.set()
        sub.on_message = lambda c, u, m: got.append((time.time(), bytes(m.payload)))
        sub.connect(broker.host, broker.port)
        sub.loop_start()
        subscribed.wait(10)

        rng = np.random.default_rng(args.seed)
        lead = room_tone(0.3, rng)  # lets it reach READY (sent after the first frame)
        stream: list[np.ndarray] = [lead, room_tone(1.0, rng)]
        for set_name, _model, field, _target in tests:
            stream += [load_recording(args.data / set_name, field), room_tone(args.gap_s, rng)]
        audio = np.concatenate(stream)
        if args.route == "alsa":
            return run_alsa_route(args, work, config, cfg, env, audio, procs)
        cmd = [sys.executable, "-m", "voxgate", "run", "-c", str(config)]
        cpus = daemon_cpus(args)
        daemon = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.PIPE,
            stderr=open(work / "daemon.log", "w"),  # noqa: SIM115
            preexec_fn=lambda: os.sched_setaffinity(0, cpus),
        )
        procs.append(daemon)
        assert daemon.stdin is not None
        # The daemon's endpointer is deterministic: run the same one over the same frames to
        # know at which sample each utterance ends (a recording with a long pause inside can
        # give two utterances, and two decisions). The k-th utterance gives the k-th decision.
        from voxgate.config import VoxgateConfig
        from voxgate.vad import Endpointer, SpeechEnded

        ep = Endpointer(VoxgateConfig().vad, 30)
        ends: list[int] = []  # stream sample at which the VAD declares each utterance ended
        for i in range(0, len(audio) - CHUNK + 1, CHUNK):
            for ev in ep.feed(audio[i : i + CHUNK]):
                if isinstance(ev, SpeechEnded) and ev.utterance is not None:
                    ends.append(i + CHUNK)

        daemon.stdin.write(lead.tobytes())
        daemon.stdin.flush()
        deadline = time.monotonic() + 60
        while "MQTT: connected" not in (work / "daemon.log").read_text():
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("daemon did not start:\n" + (work / "daemon.log").read_text())
            time.sleep(0.05)
        cpu_started = process_cpu_s(daemon.pid)
        written_at: list[float] = []  # wall time each end sample went into the pipe
        start = time.monotonic()
        wall0 = time.time() - start
        for i in range(len(lead), len(audio), CHUNK):
            due = start + (i - len(lead)) / RATE
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            daemon.stdin.write(audio[i : i + CHUNK].tobytes())
            daemon.stdin.flush()
            now = time.monotonic()
            while len(written_at) < len(ends) and ends[len(written_at)] <= i + CHUNK:
                written_at.append(wall0 + now)
        time.sleep(2.0)
        cpu_session = process_cpu_s(daemon.pid) - cpu_started
        status = Path(f"/proc/{daemon.pid}/status").read_text().splitlines()
        mem = {
            k: int(v.split()[0])
            for k, _, v in (x.partition(":") for x in status)
            if k in ("VmRSS", "VmHWM")
        }
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(15)
        sub.loop_stop()

        audit = [json.loads(x) for x in (work / "data" / "audit.jsonl").read_text().splitlines()]
        made = [x for x in audit if x["event"] == "decision"]
        decisions = sorted(
            ((at, verify(p, DKEY, at, None)) for at, p in got), key=lambda x: x[1].seq
        )
        acts = {}
        if acted.exists():
            for line in acted.read_text().splitlines():
                t, seq = line.split()
                acts[int(seq)] = float(t)
        on_broker, to_act = [], []
        if len(decisions) != len(written_at):
            print(
                f"warning: {len(written_at)} utterances but {len(decisions)} decisions; "
                "matching in order",
                file=sys.stderr,
            )
        for (at, d), t_end in zip(decisions, written_at, strict=False):
            on_broker.append((at - t_end) * 1000)
            if d.seq in acts:
                to_act.append((acts[d.seq] - t_end) * 1000)
        outcomes = {
            o: sum(1 for x in made if x["outcome"] == o) for o in ("granted", "denied", "retry")
        }
        print(
            f"bench_latency: {len(tests)} recordings from {', '.join(args.sets)}; "
            f"daemon pinned to CPU {cpu_list(cpus)}; {os.cpu_count()} CPUs; "
            f"OPENBLAS_NUM_THREADS {os.environ.get('OPENBLAS_NUM_THREADS') or 'not set'}; "
            f"load average {os.getloadavg()[0]:.2f}; python {sys.version.split()[0]}"
        )
        print(f"rerun: python {shlex.join(['benchmarks/bench_latency.py', *sys.argv[1:]])}")
        print(f"daemon: {shlex.join(['taskset', '-c', cpu_list(cpus), 'python', *cmd[1:]])}")
        print(
            f"decisions: {len(made)} ({', '.join(f'{k} {v}' for k, v in outcomes.items())}); "
            f"published {sum(1 for x in made if x['published'])}; acted {len(acts)}"
        )
        print(summary("endpoint -> published", [x["latency_s"] * 1000 for x in made]))
        print(
            f"daemon CPU (user+sys, all threads) to start {cpu_started:.2f} s; over the session "
            f"{cpu_session:.2f} s, {cpu_session / max(1, len(made)) * 1000:.0f} ms per decision "
            "(the silence between recordings included)"
        )
        print(summary("endpoint -> on broker", on_broker))
        print(summary("endpoint -> acted (grants)", to_act))
        print(
            f"(the end of speech is vad.hangover_ms = {hangover * 1000:.0f} ms before the endpoint)"
        )
        print(
            f"daemon RSS at the end (models, API, fleet sync loaded): {mem['VmRSS'] / 1024:.1f} MB "
            f"(peak {mem['VmHWM'] / 1024:.1f} MB)"
        )
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        broker.kill()
        import shutil

        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def daemon_cpus(args: argparse.Namespace) -> set[int]:
    if args.cpus:
        return {int(c) for c in args.cpus.split(",")}
    return {args.core % (os.cpu_count() or 1)}


def cpu_list(cpus: set[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process, all its threads (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())
