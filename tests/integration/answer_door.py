"""A door answered with real FSDD digits: used by tests/integration/test_answer_pause.py and
benchmarks/bench_answer_pause.py.

One FSDD speaker is enrolled with the real `voxgate enroll --from` (their enroll.csv takes,
a `;`-joined row played as one recording with 0.2 s gaps). `voxgate run --source stdin`
runs with the spoken challenge on and MQTT to a real mosquitto: each attempt is a wake
phrase (another digit string of the same speaker), the challenge read from the `challenge`
topic, then the answer built from that speaker's own recordings of the challenge digits
with the given pause between digits. Decisions come from the audit log.

The challenge is drawn by the daemon's CSPRNG, so each run answers other digits with other
recordings, and the door's own digit check misreads about 1 in 100 of this speaker's answers
whatever the pauses or the load (docs/challenge.md: 98.3 % of genuine answers accepted).
`reads_as()` runs that check on an attempt's whole answer at once, after the attempt (the
challenge's time to answer is not spent on it): what the daemon decided can be compared with
it, so a test depends on how the daemon takes the answer in, not on which digits came up.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from broker import Broker
from mqtt_helpers import DaemonProcess, Recorder, child_env, wait_until, write_key

RATE = 16000
DEV = "pause-door"
DKEY = b"pause-door-decision-key-0123456789ab"
PROMPTS = ["40712", "95368", "28140", "63957"]  # every digit twice


def room_tone(seconds: float, seed: int = 0) -> np.ndarray:
    """A quiet room (about -80 dBFS). Louder white noise right after speech keeps webrtcvad
    (mode 2) calling frames speech for seconds (docs/service.md, Benchmarks)."""
    return np.random.default_rng(seed).normal(0, 3, int(seconds * RATE)).astype(np.int16)


class Digits:
    """One FSDD speaker's digit recordings, minus those used for enrollment."""

    def __init__(self, fsdd: Path, speaker: str) -> None:
        from voxgate.audio.file import read_audio

        self.root = fsdd
        self.speaker = speaker
        with open(fsdd / "enroll.csv", newline="") as f:
            self.takes = [r["path"] for r in csv.DictReader(f) if r["model"] == speaker]
        used = {p for t in self.takes for p in t.split(";")}
        self.paths: dict[str, list[str]] = {str(d): [] for d in range(10)}
        with open(fsdd / "manifest.csv", newline="") as f:
            for r in csv.DictReader(f):
                if r["speaker"] == speaker and r["path"] not in used:
                    self.paths[r["text"]].append(r["path"])
        # Prompted enrollment takes (each digit twice, so the person gets digit templates):
        # the first recordings of each digit, never used in an answer.
        self.prompts = PROMPTS
        self.prompted: list[str] = []
        for prompt in PROMPTS:
            self.prompted.append(";".join(self.paths[d].pop(0) for d in prompt))
        self._read = read_audio

    def take(self, field: str) -> np.ndarray:
        """An enroll.csv row as one recording (0.2 s of silence between its files)."""
        parts: list[np.ndarray] = []
        for i, rel in enumerate(field.split(";")):
            if i:
                parts.append(np.zeros(int(0.2 * RATE), np.int16))
            parts.append(self._read(self.root / rel))
        return np.concatenate(parts)

    def say(self, digits: str, pause_s: float, rng: np.random.Generator) -> np.ndarray:
        """The digits one by one, `pause_s` of room tone between them."""
        parts: list[np.ndarray] = []
        for i, d in enumerate(digits):
            if i:
                parts.append(room_tone(pause_s, seed=int(rng.integers(1 << 30))))
            # Each recording once (until a digit runs out): the door's replay check would
            # rightly refuse the same recording in a second answer.
            pool = self.paths[d]
            pick = int(rng.integers(len(pool)))
            rel = pool.pop(pick) if len(pool) > 1 else pool[pick]
            parts.append(self._read(self.root / rel))
        return np.concatenate(parts)


@dataclass
class Outcome:
    challenge: str
    pause_s: float
    decisions: list[dict[str, Any]]  # every decision the attempt caused, in order
    wait_s: float | None = None  # paced: end of the answer's speech -> first decision
    events: list[dict[str, Any]] | None = None  # the attempt's other audit lines (expiry)
    answer: np.ndarray | None = None  # what was said: room tone, then the digits

    @property
    def first(self) -> dict[str, Any]:
        return self.decisions[0]

    @property
    def granted(self) -> bool:
        return bool(self.decisions) and self.first["outcome"] == "granted"

    @property
    def cut(self) -> bool:
        """The answer was judged in pieces: more than one decision, or a short first one."""
        return len(self.decisions) > 1


class PauseDoor:
    """The enrolled door as a running daemon on stdin; `attempt()` plays one attempt."""

    def __init__(
        self,
        home: Path,
        fsdd: Path,
        speaker: str,
        extra: dict[str, Any],
        templates: bool = True,
    ) -> None:
        """templates: enroll with the takes' prompts, so the speaker's answers are checked
        against their own digits; False: without, so the phonemes engine checks them."""
        self.home = home
        self.digits = Digits(fsdd, speaker)
        self.broker = Broker(home / "broker", tls=False).start()
        key = home / "vp.key"
        self._voxgate("users", "init-key", str(key))
        mqtt = {
            **self.broker.mqtt_settings(None),
            "hmac_key_file": str(write_key(home / "decision.key", DKEY)),
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 1.0,
            "discovery_prefix": None,
        }
        doc: dict[str, Any] = {
            "device_id": DEV,
            "data_dir": str(home / "data"),
            "logging": {"level": "info"},
            "audio": {"source": "stdin"},
            "speaker": {"key_file": str(key), "enroll_min_speech_s": 6, "enroll_min_takes": 3},
            "challenge": {"mode": "digits", "length": 5, "timeout_s": 3},
            "lockout": {"max_failures": 100, "device_max_failures": 1000},
            "mqtt": mqtt,
            "metrics": {"enabled": False},
            "service": {"decided_hold_s": 0.3},
        }
        for section, values in extra.items():
            doc.setdefault(section, {}).update(values)
        self.config = home / "voxgate.yaml"
        self.config.write_text(yaml.safe_dump(doc))
        files = []
        for i, field in enumerate(self.digits.prompted):
            import soundfile as sf

            path = home / f"take{i}.wav"
            audio = np.concatenate([room_tone(0.5, i), self.digits.take(field), room_tone(0.5)])
            sf.write(path, audio, RATE, subtype="PCM_16")
            files.append(str(path))
        prompts = ["--prompts", *self.digits.prompts] if templates else []
        self._voxgate("enroll", speaker, "-c", str(self.config), "--from", *files, *prompts)
        self._check: tuple[Any, Any] | None = None  # reads_as(): recognizer, templates
        self.rec = Recorder(self.broker, "lock", [f"voxgate/{DEV}/#"])
        self.daemon = DaemonProcess(self.config)
        self.proc = self.daemon.proc
        self.feed(room_tone(0.5))
        try:
            wait_until(lambda: self.state() == "idle", 60, "the daemon to be idle")
        except AssertionError as exc:
            self.close()
            raise AssertionError(f"{exc}\n{self.log()[-3000:]}") from None

    def _voxgate(self, *args: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "voxgate", *args],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def log(self) -> str:
        return self.daemon.log()

    def feed(self, pcm: np.ndarray) -> None:
        self.daemon.feed(pcm)

    def state(self) -> str | None:
        states = self.rec.on(f"voxgate/{DEV}/state")
        return states[-1].payload.decode() if states else None

    def audit(self) -> list[dict[str, Any]]:
        path = self.home / "data" / "audit.jsonl"
        text = path.read_text() if path.exists() else ""
        return [json.loads(x) for x in text[: text.rfind("\n") + 1].splitlines()]

    def decisions(self) -> list[dict[str, Any]]:
        return [e for e in self.audit() if e.get("event") == "decision"]

    def reads_as(self, got: Outcome) -> bool:
        """Whether the door's own digit check (the speaker's templates, sealed in the
        voiceprint the daemon reads) reads the attempt's answer as its challenge, given the
        whole answer at once. The quiet that ends an answer (challenge.answer_pause_ms) goes
        in too, as in the daemon."""
        from voxgate.config import load_config
        from voxgate.enrollment import templates_of
        from voxgate.stt import digits_to_words, load_recognizer
        from voxgate.voiceprints import open_store

        cfg = load_config(self.config)
        if self._check is None:
            with open_store(cfg, read_only=True) as store:
                vp = store.get(self.digits.speaker)
            tm = templates_of(vp.meta) if vp is not None else None
            assert tm is not None, f"{self.digits.speaker} has no digit templates"
            self._check = (load_recognizer(cfg.stt), tm)
        recognizer, tm = self._check
        assert got.answer is not None
        said = np.concatenate([got.answer, room_tone(cfg.challenge.answer_pause_ms / 1000)])
        return bool(recognizer.check_prompt(said, digits_to_words(got.challenge), tm).ok)

    def challenges(self) -> list[dict[str, Any]]:
        msgs = self.rec.on(f"voxgate/{DEV}/challenge")
        bodies = [json.loads(m.payload) for m in msgs if m.payload]
        return [b for b in bodies if b.get("mode") == "digits"]

    def attempt(
        self,
        wake_field: str,
        pause_s: float,
        rng: np.random.Generator,
        paced: bool = False,
    ) -> Outcome:
        """Wake, read the challenge, answer it with `pause_s` between digits; every decision
        until the door is idle again (a cut answer's leftover digits wake it again).

        paced: the answer and the quiet after it go in at real time, 30 ms at a time, as a
        microphone gives them; `Outcome.wait_s` is then the wall time from the end of the
        answer's last loud sample to the first decision's audit line."""
        seen_ch, seen_audit = len(self.challenges()), len(self.audit())
        self.feed(np.concatenate([room_tone(0.3), self.digits.take(wake_field), room_tone(1.0)]))
        wait_until(lambda: len(self.challenges()) > seen_ch, 30, "a challenge")
        challenge = self.challenges()[seen_ch]["text"]
        answer = np.concatenate([room_tone(0.3), self.digits.say(challenge, pause_s, rng)])
        after = room_tone(3.0)
        spoken_end = None
        if paced:
            loud = np.flatnonzero(np.abs(answer.astype(np.int32)) > 328)  # above 1 % of full
            stream = np.concatenate([answer, after])
            chunk = 480
            t0 = time.monotonic()
            for i in range(0, len(stream), chunk):
                self.feed(stream[i : i + chunk])
                if spoken_end is None and i + chunk > loud[-1]:
                    spoken_end = time.time()
                time.sleep(max(0.0, t0 + (i + chunk) / RATE - time.monotonic()))
        else:
            self.feed(np.concatenate([answer, after]))
        wait_until(
            lambda: any(e.get("event") == "decision" for e in self.audit()[seen_audit:]),
            30,
            "a decision",
        )
        # Leftover pieces may open further challenges: let them expire (challenge.timeout_s).
        last = [time.monotonic(), len(self.rec.on(f"voxgate/{DEV}/state"))]

        def settled() -> bool:
            n = len(self.rec.on(f"voxgate/{DEV}/state"))
            if n != last[1]:
                last[:] = [time.monotonic(), n]
            return self.state() == "idle" and time.monotonic() - last[0] > 0.5

        wait_until(settled, 30, "the door to be idle again")
        lines = self.audit()[seen_audit:]
        got = Outcome(challenge, pause_s, [e for e in lines if e.get("event") == "decision"])
        got.events = [e for e in lines if e.get("event") != "decision"]
        got.answer = answer
        if spoken_end is not None:
            got.wait_s = got.first["ts"] - spoken_end
        return got

    def close(self) -> int:
        try:
            if self.proc.stdin is not None and not self.proc.stdin.closed:
                self.proc.stdin.close()
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.rec.close()
            self.broker.kill()


def wake_fields(fsdd: Path, speaker: str) -> list[str]:
    """Digit strings of the speaker for waking the door (trials.csv target rows)."""
    with open(fsdd / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["path"] for r in rows if r["model"] == speaker and r["target"] == "1"]
