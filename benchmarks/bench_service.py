"""Service figures: cold start to READY=1, idle CPU while listening to silence, RSS.

    python benchmarks/bench_service.py                  # 3 starts, 30 s of idle listening
    python benchmarks/bench_service.py --idle-s 60 --starts 5

The daemon runs as its own process with a real notify socket (the way systemd runs it) and
an audio file of silence paced in real time and looped, standing in for a quiet microphone.
Stages: `voxgate run` with the real stages when this build has them (--daemon real), else
the loop with the simple stand-in stages from tests/support (--daemon standin), which
measures the service itself without model loading. Goals: READY within 1 s, idle CPU at or
below 2 % of one core.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "tests" / "support" / "service_harness.py"


def clk_tck() -> int:
    return os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / clk_tck()  # utime + stime


def status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    return out


def start(
    cmd: list[str], env: dict[str, str], sock: socket.socket, log: Path
) -> tuple[subprocess.Popen, float]:
    t0 = time.monotonic()
    with open(log, "a") as err:  # a file, not a pipe: a chatty daemon must not block on it
        proc = subprocess.Popen(cmd, env=env, stderr=err)
    while True:
        try:
            msg = sock.recv(4096).decode()
        except TimeoutError:
            msg = ""
        if not msg:
            if proc.poll() is not None:
                raise SystemExit(f"daemon exited with {proc.returncode}: {log.read_text()}")
            if time.monotonic() - t0 > 120:
                proc.kill()
                raise SystemExit("no READY=1 within 120 s")
            continue
        if "READY=1" in msg.split("\n"):
            return proc, time.monotonic() - t0


def stop(proc: subprocess.Popen) -> float:
    t0 = time.monotonic()
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return time.monotonic() - t0


def real_extras(work: Path, with_api_fleet: bool) -> dict:
    """Keys and sections the real daemon needs (the broker need not run: the link retries in
    the background), and with_api_fleet: the admin API and fleet sync loaded too."""
    import secrets as pysecrets

    from voxgate.fleet import public_key_hex

    def secret(name: str, value: bytes) -> str:
        p = work / name
        p.write_bytes(value)
        p.chmod(0o600)
        return str(p)

    out: dict = {
        "speaker": {"key_file": secret("voiceprint.key", pysecrets.token_hex(32).encode())},
        "mqtt": {"hmac_key_file": secret("decision.key", pysecrets.token_hex(32).encode())},
    }
    try:  # the spoken challenge (STT) is loaded when this build has it
        import voxgate.challenge
        import voxgate.stt  # noqa: F401
    except ImportError:
        print("bench_service: no challenge/STT stage in this build: challenge.mode off")
        out["challenge"] = {"mode": "off"}
    if with_api_fleet:
        signing = pysecrets.token_bytes(32)
        out["api"] = {"enabled": True, "port": free_port()}
        out["fleet"] = {
            "enabled": True,
            "key_file": secret("fleet.key", pysecrets.token_hex(32).encode()),
            "signing_key_file": secret("fleet-signing.key", signing.hex().encode()),
            "signers": {"voxgate": public_key_hex(signing)},
            "groups": ["all"],
            "access": {"all": ["*"]},
        }
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--starts", type=int, default=3, help="cold starts to time")
    ap.add_argument("--idle-s", type=float, default=30.0, help="idle window to measure CPU over")
    ap.add_argument("--daemon", choices=["auto", "real", "standin"], default="auto")
    ap.add_argument(
        "--no-api-fleet",
        action="store_true",
        help="real daemon without the admin API and fleet sync (they are on by default)",
    )
    args = ap.parse_args()
    if args.daemon == "auto":
        try:
            import voxgate.embedding
            import voxgate.mqtt.client  # noqa: F401

            args.daemon = "real"
        except ImportError:
            args.daemon = "standin"

    work = Path(tempfile.mkdtemp(prefix="voxgate-bench-"))
    quiet = work / "silence.wav"
    rng = np.random.default_rng(0)
    # Room tone: low-level noise, not digital zeros, so the VAD sees what a quiet mic gives.
    sf.write(str(quiet), (rng.normal(0, 30, 16000 * 10)).astype(np.int16), 16000)
    conf = work / "voxgate.yaml"
    doc: dict = {
        "data_dir": str(work / "data"),
        "audio": {"source": "file", "path": str(quiet), "realtime": True, "loop": True},
        "metrics": {"port": 0},
        "logging": {"level": "warning"},
    }
    if args.daemon == "real":
        doc.update(real_extras(work, with_api_fleet=not args.no_api_fleet))
    conf.write_text(yaml.safe_dump(doc))
    if args.daemon == "real":
        cmd = [sys.executable, "-m", "voxgate", "run", "-c", str(conf)]
    else:
        cmd = [sys.executable, str(HARNESS), str(conf), str(work / "link.jsonl")]
    sock_path = work / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.2)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "daemon"),
        "NOTIFY_SOCKET": str(sock_path),
        "WATCHDOG_USEC": "10000000",
        "VOXGATE_API_TOKEN": "b" * 40,
    }

    extras = "" if args.daemon != "real" or args.no_api_fleet else " + admin API + fleet sync"
    print(f"bench_service: daemon={args.daemon}{extras}; {os.cpu_count()} CPU(s)")
    starts, stops = [], []
    for i in range(args.starts):
        proc, took = start(cmd, env, sock, work / "daemon.log")
        starts.append(took)
        if i < args.starts - 1:
            stops.append(stop(proc))
    print(
        f"cold start to READY=1: median {statistics.median(starts):.2f} s "
        f"(runs: {', '.join(f'{s:.2f}' for s in starts)}; goal <= 1 s)"
    )
    time.sleep(2.0)  # let the start-up settle before measuring idle
    c0, t0 = cpu_seconds(proc.pid), time.monotonic()
    time.sleep(args.idle_s)
    c1, t1 = cpu_seconds(proc.pid), time.monotonic()
    st = status(proc.pid)
    stops.append(stop(proc))
    pct = 100 * (c1 - c0) / (t1 - t0)
    print(
        f"idle CPU listening to silence: {pct:.2f} % of one core over {t1 - t0:.0f} s (goal <= 2 %)"
    )
    print(
        f"RSS while idle: {st['VmRSS'] / 1024:.1f} MB (peak {st['VmHWM'] / 1024:.1f} MB), "
        f"{st['Threads']} threads"
    )
    print(f"SIGTERM to exit: max {max(stops):.2f} s over {len(stops)} stops (limit 5 s)")
    sock.close()
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
