"""The whole door on one machine, with voices synthesized by espeak-ng instead of people.

Starts a private mosquitto on a free loopback port, enrolls a synthetic speaker from prompted
digit strings with `voxgate enroll`, runs `voxgate run` on raw PCM fed through its standard
input (the same path as `arecord | voxgate run --source stdin`) and `voxgate actuator` as the
lock. Then three people come to the door: the enrolled speaker answering the challenge, an
impostor answering it, and a replay of the enrolled speaker's earlier answer.
"""

from __future__ import annotations

import json
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxgate.audio.file import read_audio
from voxgate.enrollment import prompt_plan

FRAME = 480  # 30 ms at 16 kHz
OWNER_VOICE = "en+m3"
IMPOSTOR_VOICE = "en+f4"


class DemoError(Exception):
    pass


def say(text: str, voice: str, path: Path, speed: int = 150, pitch: int = 50) -> np.ndarray:
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text],
        check=True,
        capture_output=True,
    )
    return read_audio(path)


def take_pace_and_pitch(i: int) -> tuple[int, int]:
    """espeak-ng speed and pitch for enrollment take i (from 0). A person never says a word
    twice with the same samples; espeak-ng does, and takes sharing two digits in a row were
    then one recording altered (enrollment's duplicate check): each take gets its own pace
    and pitch, as a person's do."""
    return 136 + 3 * i, 42 + (7 * i) % 17


def spoken(digits: str) -> str:
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    return ", ".join(names[int(d)] for d in digits)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_secret(path: Path, data: str) -> Path:
    path.write_text(data)
    path.chmod(0o600)
    return path


class Feeder(threading.Thread):
    """Writes 30 ms frames to the daemon's stdin at real time: queued speech, else silence."""

    def __init__(self, pipe: object) -> None:
        super().__init__(daemon=True)
        self.pipe = pipe
        self.clips: queue.Queue[np.ndarray] = queue.Queue()
        self.stop = threading.Event()
        self.idle = threading.Event()

    def play(self, pcm: np.ndarray) -> None:
        self.idle.clear()
        self.clips.put(pcm)

    def run(self) -> None:
        t0 = time.monotonic()
        sent = 0
        current = np.zeros(0, dtype=np.int16)
        while not self.stop.is_set():
            if not len(current):
                try:
                    current = self.clips.get_nowait()
                except queue.Empty:
                    self.idle.set()
                    current = np.zeros(FRAME, dtype=np.int16)
            frame, current = current[:FRAME], current[FRAME:]
            if len(frame) < FRAME:
                frame = np.concatenate([frame, np.zeros(FRAME - len(frame), np.int16)])
            try:
                self.pipe.write(frame.astype("<i2").tobytes())  # type: ignore[attr-defined]
                self.pipe.flush()  # type: ignore[attr-defined]
            except (BrokenPipeError, ValueError, OSError):
                return
            sent += 1
            delay = t0 + sent * 0.03 - time.monotonic()
            if delay > 0:
                time.sleep(delay)


@dataclass
class Outcome:
    outcome: str
    user: str | None
    reasons: list[str]


class Watcher:
    """Subscribes to the door's challenge and decision topics."""

    def __init__(self, port: int, device: str) -> None:
        import paho.mqtt.client as mqtt

        self.challenges: queue.Queue[dict] = queue.Queue()
        self.decisions: queue.Queue[Outcome] = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="voxgate-demo")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(
            [(f"voxgate/{device}/challenge", 1), (f"voxgate/{device}/decision", 1)]
        )
        self.client.loop_start()

    def _on_message(self, client: object, userdata: object, msg: object) -> None:
        topic: str = msg.topic  # type: ignore[attr-defined]
        data = json.loads(msg.payload)  # type: ignore[attr-defined]
        if topic.endswith("/challenge"):
            self.challenges.put(data)
        else:  # signed: {"alg", "body", "sig"}; the actuator checks the signature
            body = json.loads(data["body"])
            self.decisions.put(Outcome(body["outcome"], body.get("user"), body["reasons"]))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def enroll_summary(output: str) -> list[str]:
    """The lines of `voxgate enroll` worth showing: how many takes were used, the takes
    refused, the outcome. A failed enrollment is shown whole."""
    lines = output.strip().splitlines()
    if not lines or not lines[-1].startswith("enrolled "):
        return lines
    takes = [ln for ln in lines[1:-1] if not ln.endswith("  ok")]
    return [lines[0], *takes, lines[-1]]


def step(n: int, text: str) -> None:
    print(f"\n[{n}] {text}", flush=True)


@contextmanager
def process(argv: list[str], log: Path, **kw: object) -> Iterator[subprocess.Popen]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, **kw)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for(q: queue.Queue, seconds: float, what: str, log: Path) -> object:
    try:
        return q.get(timeout=seconds)
    except queue.Empty:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise DemoError(f"no {what} within {seconds:.0f} s; last lines of {log}:\n{tail}") from None


def run_demo(workdir: Path | None = None) -> int:
    for tool in ("espeak-ng", "mosquitto"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"voxgate demo needs {tool}: apt-get install {tool}", file=sys.stderr)
            return 1
    with ExitStack() as stack:
        work = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="voxgate-")))
        work.mkdir(parents=True, exist_ok=True)
        try:
            return _run(work, stack, keep=workdir is not None)
        except DemoError as exc:
            print(f"\ndemo failed: {exc}", file=sys.stderr)
            return 1


def _run(work: Path, stack: ExitStack, keep: bool) -> int:
    exe = [sys.executable, "-m", "voxgate"]
    device = "demo-door"
    port = free_port()
    step(1, f"working in {work}; a private MQTT broker on 127.0.0.1:{port}")
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    stack.enter_context(process([mosquitto, "-c", str(conf)], work / "mosquitto.log"))
    keys = {
        "voiceprint": write_secret(work / "voiceprint.key", secrets.token_hex(32)),
        "decision": write_secret(work / "decision.key", secrets.token_hex(32)),
        "command": write_secret(work / "command.key", secrets.token_hex(32)),
    }
    cfg = work / "voxgate.yaml"
    cfg.write_text(
        f"device_id: {device}\n"
        f"data_dir: {work / 'state'}\n"
        "audio: {source: stdin}\n"
        "metrics: {enabled: false}\n"
        f"speaker: {{key_file: {keys['voiceprint']}}}\n"
        "challenge: {mode: digits, length: 5, timeout_s: 15}\n"
        f"mqtt: {{host: 127.0.0.1, port: {port}, hmac_key_file: {keys['decision']}, "
        f"command_key_file: {keys['command']}, discovery_prefix: null}}\n"
    )

    step(2, f"enrolling 'alice' (espeak-ng voice {OWNER_VOICE}) from 14 prompted digit strings")
    takes, prompts = [], []
    # More takes than the 20 s minimum needs: a take can be refused (e.g. its pauses make the
    # SNR estimate low) and enrollment must still go through.
    for i, digits in enumerate(prompt_plan(14)):
        path = work / f"take{i + 1}.wav"  # named as the take is numbered
        say(spoken(digits), OWNER_VOICE, path, *take_pace_and_pitch(i))
        takes.append(str(path))
        prompts.append(digits)
        print(f'    take {i + 1}: "{spoken(digits)}"')
    enroll = subprocess.run(
        [*exe, "enroll", "alice", "-c", str(cfg), "--from", *takes, "--prompts", *prompts],
        capture_output=True,
        text=True,
    )
    print("    " + "\n    ".join(enroll_summary(enroll.stdout + enroll.stderr)))
    if enroll.returncode != 0:
        raise DemoError("enrollment failed")

    step(3, "starting the lock (voxgate actuator) and the door (voxgate run --source stdin)")
    opened = work / "door-opened.log"
    act_cfg = work / "actuator.yaml"
    act_cfg.write_text(
        f"broker: {{host: 127.0.0.1, port: {port}}}\n"
        f"devices: [{{id: {device}, key_file: {keys['decision']}}}]\n"
        f"state_file: {work / 'actuator-state.json'}\n"
        "command: {argv: ["
        + json.dumps(sys.executable)
        + ", -c, "
        + json.dumps(
            "import os,sys; open(sys.argv[1],'a').write('opened for '"
            "+os.environ['VOXGATE_USER']+'\\n')"
        )
        + ", "
        + json.dumps(str(opened))
        + "]}\n"
    )
    stack.enter_context(process([*exe, "actuator", "-c", str(act_cfg)], work / "actuator.log"))
    daemon_log = work / "daemon.log"
    daemon = stack.enter_context(
        process([*exe, "run", "-c", str(cfg)], daemon_log, stdin=subprocess.PIPE)
    )
    feeder = Feeder(daemon.stdin)
    feeder.start()
    stack.callback(feeder.stop.set)
    time.sleep(1.0)
    watcher = Watcher(port, device)
    stack.callback(watcher.close)
    time.sleep(2.0)  # the daemon loads its models, then listens

    results = []
    old_answer: np.ndarray | None = None
    scenes = [
        ("alice comes to the door and answers the challenge", OWNER_VOICE, False),
        (
            f"an impostor (voice {IMPOSTOR_VOICE}) answers the challenge correctly",
            IMPOSTOR_VOICE,
            False,
        ),
        ("someone plays back alice's earlier answer at a new challenge", OWNER_VOICE, True),
    ]
    for n, (title, voice, replay) in enumerate(scenes, start=4):
        step(n, title)
        feeder.play(say("hello door", voice, work / "wake.wav"))
        print('    (says) "hello door"')
        ch = wait_for(watcher.challenges, 20, "challenge", daemon_log)
        digits = str(ch["text"]).replace(" ", "")  # type: ignore[index]
        print(f"    door shows: {ch['text']}")  # type: ignore[index]
        if replay and old_answer is not None:
            answer = old_answer
            print("    (plays the recording of the previous answer)")
        else:
            answer = say(spoken(digits), voice, work / f"answer{n}.wav")
            print(f'    (says) "{spoken(digits)}"')
        if voice == OWNER_VOICE and not replay:
            old_answer = answer
        time.sleep(0.5)
        feeder.play(answer)
        d: Outcome = wait_for(watcher.decisions, 30, "decision", daemon_log)  # type: ignore[assignment]
        results.append(d.outcome)
        who = f" user={d.user}" if d.user else ""
        print(f"    decision: {d.outcome.upper()}{who}  reasons: {', '.join(d.reasons) or '-'}")
        time.sleep(2.5)  # the door shows the decision, then listens again

    time.sleep(1.0)
    acted = opened.read_text().strip().splitlines() if opened.exists() else []
    step(7, f"the lock acted {len(acted)} time(s): {'; '.join(acted) or 'never'}")
    audit = subprocess.run(
        [*exe, "audit", "verify", "-c", str(cfg)], capture_output=True, text=True
    )
    print("    audit log: " + (audit.stdout + audit.stderr).strip().splitlines()[-1])
    if keep:
        print(f"\nkept in {work}: config, keys, daemon.log, actuator.log, state/audit.jsonl")
    else:
        print("\n(voxgate demo --keep DIR keeps the config, keys, logs and audit log)")
    expected = ["granted", "denied", "denied"]
    if results == expected and len(acted) == 1:
        print("demo: done - alice was let in; the impostor and the replay were refused.")
        return 0
    print(f"demo: unexpected outcomes {results} (expected {expected}); see the logs above.")
    return 1
