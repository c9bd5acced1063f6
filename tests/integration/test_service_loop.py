"""The daemon loop on real audio (espeak-ng speech in real WAV files), real SQLite/audit files,
with simple stand-ins for the stages that other parts of voxgate provide."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

from service_standins import (
    SR,
    WINDOW,
    MelEmbedder,
    NotifyListener,
    RecordingLink,
    attempt_recording,
    espeak,
    silence,
    standin_stages,
    write_wav,
)

from voxgate.audio.file import FileSource
from voxgate.audit import verify
from voxgate.config import VoxgateConfig, load_config
from voxgate.service.loop import Daemon
from voxgate.service.notify import Notifier

if TYPE_CHECKING:
    from collections.abc import Iterator

    from voxgate.service.stages import AttemptResult, EmbeddingStream, Stages

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="needs espeak-ng for test speech"
)


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audio")


@pytest.fixture(scope="module")
def voiceprint() -> np.ndarray:
    # "Enrolled" from other words spoken by the same synthetic voice as the answer.
    return MelEmbedder().embed(espeak("three, eight, two, five, six", voice="en+m3"))


def config(tmp_path: Path, path: Path, **extra: object) -> VoxgateConfig:
    data: dict[str, object] = {
        "data_dir": str(tmp_path / "data"),
        "audio": {"source": "file", "path": str(path)},
        "metrics": {"enabled": False},
        **extra,
    }
    return VoxgateConfig.model_validate(data)


def run(cfg: VoxgateConfig, stages: Stages, **kw: object) -> tuple[Daemon, int]:
    d = Daemon(cfg, stage_factory=lambda c: stages, notifier=Notifier({}), **kw)  # type: ignore[arg-type]
    return d, d.run()


def audit_events(tmp_path: Path) -> list[dict]:
    p = tmp_path / "data" / "audit.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()]


def test_one_attempt_goes_through_every_state(
    tmp_path: Path, audio_dir: Path, voiceprint: np.ndarray
) -> None:
    rec = attempt_recording(audio_dir)
    link = RecordingLink()
    stages = standin_stages(FileSource(rec), {"me": voiceprint}, link)
    _, code = run(config(tmp_path, rec), stages)
    assert code == 0
    states = link.of("state")
    assert states == ["idle", "listening", "challenge", "verifying", "decided", "offline"]
    (decision,) = link.of("decision")
    assert decision["outcome"] == "granted" and decision["user"] == "me"
    assert len(link.of("challenge")[0]) == 5
    # Streaming: full windows were computed while the answer was spoken; finish() only had
    # the last partial window left.
    ((windows_before_finish, left),) = stages.embedder.finishes
    assert windows_before_finish >= 2 and left < WINDOW
    events = [e["event"] for e in audit_events(tmp_path)]
    assert events == ["service_start", "decision", "service_stop"]
    assert verify(tmp_path / "data" / "audit.jsonl").ok


def test_challenge_off_verifies_the_first_utterance(
    tmp_path: Path, audio_dir: Path, voiceprint: np.ndarray
) -> None:
    path = write_wav(
        audio_dir / "answer_only.wav",
        np.concatenate([silence(0.5), espeak("four, seven, one, nine, two", "en+m3"), silence(1)]),
    )
    link = RecordingLink()
    stages = standin_stages(FileSource(path), {"me": voiceprint}, link, challenge=False)
    _, code = run(config(tmp_path, path, challenge={"mode": "off"}), stages)
    assert code == 0
    assert link.of("state")[:4] == ["idle", "listening", "verifying", "decided"]
    assert link.of("decision")[0]["outcome"] == "granted"


def test_unanswered_challenge_expires_without_counting_as_failure(
    tmp_path: Path, audio_dir: Path, voiceprint: np.ndarray
) -> None:
    path = write_wav(
        audio_dir / "no_answer.wav",
        np.concatenate([silence(0.5), espeak("hello there"), silence(4.0)]),
    )
    link = RecordingLink()
    stages = standin_stages(FileSource(path), {"me": voiceprint}, link)
    cfg = config(tmp_path, path, challenge={"timeout_s": 2})
    d = Daemon(cfg, stage_factory=lambda c: stages, notifier=Notifier({}))
    # Challenge time follows the audio, so expiry does not depend on how fast this machine is.
    d.clock = d.elapsed = lambda: d.endpointer.time_s if d.endpointer else 0.0
    assert d.run() == 0
    assert link.of("state")[:4] == ["idle", "listening", "challenge", "idle"]
    assert not link.of("decision")
    assert [e["event"] for e in audit_events(tmp_path)][1] == "attempt_expired"
    assert d.lockout is not None


def test_five_failures_lock_the_door_and_no_more_challenges(
    tmp_path: Path, audio_dir: Path
) -> None:
    answers = ["one two three", "four five six", "seven eight nine", "two four six"]
    parts = []
    for digits in [*answers, "eight six four", "nine nine one"]:
        parts += [silence(0.6), espeak("hello"), silence(1.2), espeak(digits, "en+f2")]
        parts.append(silence(1.2))
    path = write_wav(audio_dir / "six_attempts.wav", np.concatenate(parts))
    link = RecordingLink()
    # The enrolled voice is a different one: every attempt is a mismatch.
    other = MelEmbedder().embed(espeak("three, eight, two, five, six", "en+m3"))
    stages = standin_stages(FileSource(path), {"me": other}, link, threshold=0.99)
    d, code = run(config(tmp_path, path), stages)
    assert code == 0
    outcomes = [x["outcome"] for x in link.of("decision")]
    assert outcomes == ["denied"] * 5
    published = link.of("lockout")
    assert published[0] == []  # at start: nothing locked
    locked = published[1]
    assert locked[0]["key"] == "device" and locked[0]["failures"] == 5
    assert len(link.of("challenge")) == 5  # the sixth visitor got no challenge
    events = [e["event"] for e in audit_events(tmp_path)]
    assert events.count("lockout") == 1
    (lock,) = [e for e in audit_events(tmp_path) if e["event"] == "lockout"]
    assert (lock["key"], lock["failures"], lock["window_failures"]) == ("device", 5, 5)
    # The lockout outlives the process.
    from voxgate.lockout import LockoutBook

    assert LockoutBook(tmp_path / "data" / "lockout.db", d.cfg.lockout).state(None).locked


def test_a_stage_error_aborts_the_attempt_and_the_daemon_goes_on(
    tmp_path: Path, audio_dir: Path, voiceprint: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    rec = attempt_recording(audio_dir)
    once, _ = sf.read(str(rec), dtype="int16")
    path = write_wav(audio_dir / "two_attempts.wav", np.concatenate([once, once]))
    link = RecordingLink()
    stages = standin_stages(FileSource(path), {"me": voiceprint}, link)
    calls = {"n": 0}
    real_stream = stages.embedder.stream

    def flaky_stream() -> EmbeddingStream:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("model exploded")
        return real_stream()

    stages.embedder.stream = flaky_stream  # type: ignore[method-assign]
    _, code = run(config(tmp_path, path), stages)
    assert code == 0
    assert "model exploded" in caplog.text
    assert [x["outcome"] for x in link.of("decision")] == ["granted"]
    events = [e["event"] for e in audit_events(tmp_path)]
    assert "attempt_aborted" in events and "decision" in events


def test_missing_stage_exits_69_and_unwritable_data_dir_73(tmp_path: Path, audio_dir: Path) -> None:
    from voxgate.service.stages import StageUnavailable

    rec = attempt_recording(audio_dir)

    def missing(cfg: VoxgateConfig) -> NoReturn:
        raise StageUnavailable("speaker stage: model file is corrupt")

    d = Daemon(config(tmp_path, rec), stage_factory=missing, notifier=Notifier({}))
    assert d.run() == 69
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cfg = VoxgateConfig.model_validate({"data_dir": str(blocker / "sub")})
    assert Daemon(cfg, stage_factory=missing, notifier=Notifier({})).run() == 73


def test_kept_audio_is_encrypted(tmp_path: Path, audio_dir: Path, voiceprint: np.ndarray) -> None:
    from voxgate.service.keep import AudioKeeper

    rec = attempt_recording(audio_dir)
    key = tmp_path / "audio-key"
    key.write_text("ab" * 32)
    key.chmod(0o600)
    cfg = config(tmp_path, rec, audit={"keep_audio": True, "audio_key_file": str(key)})
    stages = standin_stages(FileSource(rec), {"me": voiceprint})
    _, code = run(cfg, stages)
    assert code == 0
    (kept,) = (tmp_path / "data" / "audio").glob("*.vxa")
    raw = kept.read_bytes()
    pcm = AudioKeeper(kept.parent, b"ab" * 32, 7).load(kept)
    assert len(pcm) > SR  # the answer, seconds long
    assert pcm.tobytes()[:4000] not in raw  # not stored in the clear
    decision = next(e for e in audit_events(tmp_path) if e["event"] == "decision")
    assert decision["audio"] == str(kept)


def test_mqtt_attempt_command_starts_a_challenge_for_a_claimed_user(
    tmp_path: Path, audio_dir: Path, voiceprint: np.ndarray
) -> None:
    import threading

    from service_standins import wait_until

    path = write_wav(
        audio_dir / "late_answer.wav",
        np.concatenate([silence(1.5), espeak("four, seven, one, nine, two", "en+m3"), silence(1)]),
    )
    link = RecordingLink()
    stages = standin_stages(FileSource(path, realtime=True), {"me": voiceprint}, link)
    d = Daemon(config(tmp_path, path), stage_factory=lambda c: stages, notifier=Notifier({}))
    replies: list[dict] = []

    def door_keypad() -> None:  # what the MQTT thread does when a command arrives
        assert wait_until(lambda: "attempt" in link.handlers and link.of("state"), 10)
        handler = link.handlers["attempt"]
        replies.append(handler(["not", "an", "object"]))  # type: ignore[arg-type]
        replies.append(handler({"user": ""}))
        replies.append(handler({"user": "me"}))

    t = threading.Thread(target=door_keypad)
    t.start()
    assert d.run() == 0
    t.join()
    assert [r["ok"] for r in replies] == [False, False, True]
    assert link.of("state")[:4] == ["idle", "challenge", "verifying", "decided"]
    (decision,) = link.of("decision")
    assert (decision["outcome"], decision["user"]) == ("granted", "me")
    audited = next(e for e in audit_events(tmp_path) if e["event"] == "decision")
    assert audited["claimed_user"] == "me"


def test_an_attempt_command_while_a_challenge_is_open_is_answered_busy(
    tmp_path: Path, audio_dir: Path, voiceprint: np.ndarray
) -> None:
    # Found sending `attempt` to a running daemon over a real broker while a challenge was
    # open: the reply said ok (signed, {"ok": true}) and the log alone said "attempt command
    # ignored: busy", so the operator's tool showed a challenge that was never issued.
    import threading

    from service_standins import wait_until

    path = write_wav(
        audio_dir / "late_answer_busy.wav",
        np.concatenate([silence(1.5), espeak("four, seven, one, nine, two", "en+m3"), silence(1)]),
    )
    link = RecordingLink()
    stages = standin_stages(FileSource(path, realtime=True), {"me": voiceprint}, link)
    d = Daemon(config(tmp_path, path), stage_factory=lambda c: stages, notifier=Notifier({}))
    replies: list[dict] = []

    def door_keypad() -> None:
        assert wait_until(lambda: "attempt" in link.handlers and link.of("state"), 10)
        handler = link.handlers["attempt"]
        replies.append(handler({"user": "me"}))
        assert wait_until(lambda: "challenge" in link.of("state"), 10)
        replies.append(handler({"user": "someone-else"}))

    t = threading.Thread(target=door_keypad)
    t.start()
    assert d.run() == 0
    t.join()
    assert [r["ok"] for r in replies] == [True, False], replies
    assert "busy" in replies[1]["error"] and "challenge" in replies[1]["error"], replies
    (decision,) = link.of("decision")  # the open challenge went on, for its own user
    assert (decision["outcome"], decision["user"]) == ("granted", "me")


def test_full_disk_for_the_audit_log_is_logged_and_the_door_still_decides(
    tmp_path: Path, audio_dir: Path, voiceprint: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    rec = attempt_recording(audio_dir)
    full = tmp_path / "audit-on-full-disk.jsonl"
    full.symlink_to("/dev/full")  # every write: ENOSPC
    link = RecordingLink()
    stages = standin_stages(FileSource(rec), {"me": voiceprint}, link)
    cfg = config(tmp_path, rec, audit={"path": str(full)}, metrics={"port": 0})
    d, code = run(cfg, stages)
    assert code == 0
    assert [x["outcome"] for x in link.of("decision")] == ["granted"]
    assert "cannot write (disk full)" in caplog.text
    assert d.audit is not None and d.audit.pending == 3  # start, decision, stop: held in memory


def test_no_audio_is_kept_by_default(
    tmp_path: Path, audio_dir: Path, voiceprint: np.ndarray
) -> None:
    rec = attempt_recording(audio_dir)
    _, code = run(config(tmp_path, rec), standin_stages(FileSource(rec), {"me": voiceprint}))
    assert code == 0
    files = sorted(p.name for p in (tmp_path / "data").rglob("*") if p.is_file())
    assert all(f.startswith(("audit.jsonl", "lockout.db")) for f in files), files


def test_a_wake_phrase_longer_than_the_vad_limit_is_not_taken_as_the_answer(
    tmp_path: Path, audio_dir: Path, voiceprint: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    # Found by benchmarks/soak.py: the VAD splits long speech at max_utterance_ms; the rest
    # of the wake phrase ends after the challenge was issued and must be ignored.
    path = write_wav(
        audio_dir / "long_wake.wav",
        np.concatenate(
            [
                silence(0.5),
                espeak("hello, this is a rather long greeting for a door, and it goes on and on"),
                silence(1.5),
                espeak("four, seven, one, nine, two", "en+m3"),
                silence(1.5),
            ]
        ),
    )
    link = RecordingLink()
    stages = standin_stages(FileSource(path), {"me": voiceprint}, link)
    cfg = config(tmp_path, path, vad={"max_utterance_ms": 3300})
    _, code = run(cfg, stages)
    assert code == 0
    assert "stage error" not in caplog.text
    assert link.of("state")[:4] == ["idle", "listening", "challenge", "verifying"]
    assert [x["outcome"] for x in link.of("decision")] == ["granted"]


class WedgedMic:
    """Gives a little room tone, then blocks like a wedged USB microphone."""

    def __init__(self) -> None:
        import threading

        self.closed = threading.Event()

    def frames(self, frame_ms: int = 30) -> Iterator[np.ndarray]:
        rng = np.random.default_rng(0)
        for _ in range(20):
            yield rng.normal(0, 30, 16 * frame_ms).astype(np.int16)
        self.closed.wait()

    def close(self) -> None:
        self.closed.set()


def test_a_microphone_that_stops_delivering_exits_74_for_a_restart(tmp_path: Path) -> None:
    from service_standins import CosineScorer, MelEmbedder

    from voxgate.service.stages import Stages

    mic = WedgedMic()
    stages = Stages(
        source=mic,
        embedder=MelEmbedder(),
        scorer=CosineScorer({}),
        link=RecordingLink(),
        make_decision=dict,
        close=[mic.close],
    )
    cfg = VoxgateConfig.model_validate(
        {
            "data_dir": str(tmp_path / "data"),
            "audio": {"source": "mic"},
            "service": {"audio_timeout_s": 1},
            "metrics": {"enabled": False},
        }
    )
    d = Daemon(cfg, stage_factory=lambda c: stages, notifier=Notifier({}))
    assert d.run() == 74
    last = audit_events(tmp_path)[-1]
    assert last["event"] == "service_stop" and last["reason"] == "microphone stalled"


def test_a_decision_that_cannot_be_published_is_still_audited_and_counted(
    tmp_path: Path, audio_dir: Path, voiceprint: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    rec = attempt_recording(audio_dir)
    stages = standin_stages(FileSource(rec), {"me": voiceprint})

    def unsignable(result: AttemptResult) -> NoReturn:
        raise ValueError("Out of range float values are not JSON compliant")

    stages.make_decision = unsignable
    d, code = run(config(tmp_path, rec), stages)
    assert code == 0
    assert "could not be published" in caplog.text
    audited = next(e for e in audit_events(tmp_path) if e["event"] == "decision")
    assert audited["outcome"] == "granted" and audited["published"] is False
    assert d.lockout is not None and d.lockout.state("me").device_failures == 0


def test_stop_during_an_answer_lets_it_finish(
    tmp_path: Path, audio_dir: Path, voiceprint: np.ndarray
) -> None:
    import threading
    import time

    from service_standins import wait_until

    path = write_wav(
        audio_dir / "answer_then_more.wav",
        np.concatenate(
            [silence(0.3), espeak("four, seven, one, nine, two", "en+m3"), silence(10.0)]
        ),
    )
    link = RecordingLink()
    stages = standin_stages(
        FileSource(path, realtime=True), {"me": voiceprint}, link, challenge=False
    )
    cfg = config(tmp_path, path, challenge={"mode": "off"})
    d = Daemon(cfg, stage_factory=lambda c: stages, notifier=Notifier({}))
    codes: list[int] = []
    t = threading.Thread(target=lambda: codes.append(d.run()))
    t.start()
    assert wait_until(lambda: stages.embedder.pushes > 5, 10)  # the answer is being spoken
    t0 = time.monotonic()
    d.request_stop("SIGTERM")  # what the signal handler does
    t.join(10)
    assert codes == [0]
    assert time.monotonic() - t0 < 5
    assert [x["outcome"] for x in link.of("decision")] == ["granted"]  # finished, not dropped
    assert link.of("state")[-1] == "offline"


def test_an_ended_lock_is_published_as_ended(tmp_path: Path, audio_dir: Path) -> None:
    path = write_wav(
        audio_dir / "one_failure.wav",
        np.concatenate(
            [
                silence(0.5),
                espeak("hello"),
                silence(1.2),
                espeak("one two three", "en+f2"),
                silence(4.0),
            ]
        ),
    )
    link = RecordingLink()
    other = MelEmbedder().embed(espeak("three, eight, two, five, six", "en+m3"))
    stages = standin_stages(FileSource(path), {"me": other}, link, threshold=0.99)
    cfg = config(tmp_path, path, lockout={"device_max_failures": 1, "initial_s": 1})
    d = Daemon(cfg, stage_factory=lambda c: stages, notifier=Notifier({}))
    # Lock time follows the audio, so the test does not wait for the wall clock.
    d.clock = lambda: 1.0e9 + (d.endpointer.time_s if d.endpointer else 0.0)
    assert d.run() == 0
    published = link.of("lockout")
    assert [[e["key"] for e in p] for p in published] == [[], ["device"], []]


def test_a_spoken_challenge_heard_by_the_microphone_is_not_the_answer(
    tmp_path: Path, audio_dir: Path, voiceprint: np.ndarray
) -> None:
    # The door's loudspeaker reads the digits right after the wake phrase; the microphone
    # hears that too. Only the person's answer after it may count.
    path = write_wav(
        audio_dir / "prompt_echo.wav",
        np.concatenate(
            [
                silence(0.5),
                espeak("hello there"),
                silence(0.6),  # hangover: the challenge is issued in here
                espeak("three, one, four, one, five", "en+f3"),  # the prompt, as heard
                silence(1.5),
                espeak("four, seven, one, nine, two", "en+m3"),  # the person
                silence(1.5),
            ]
        ),
    )
    link = RecordingLink()
    stages = standin_stages(FileSource(path), {"me": voiceprint}, link)
    spoken: list[str] = []
    stages.speak = lambda ch: spoken.append(ch.digits)
    _, code = run(config(tmp_path, path, challenge={"speak": True}), stages)
    assert code == 0
    assert spoken == link.of("challenge")
    # One decision, on the person's answer (the stand-in scorer matches only that voice).
    assert [x["outcome"] for x in link.of("decision")] == ["granted"]


def test_a_source_without_any_audio_is_logged_not_a_quiet_exit(
    tmp_path: Path, audio_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # `voxgate run --file x.wav` on a header-only WAV ended 'source ended', exit 0, with no
    # line saying that nothing at all had been heard.
    path = audio_dir / "header_only.wav"
    sf.write(path, np.zeros(0, np.int16), SR, subtype="PCM_16")
    stages = standin_stages(FileSource(path), {}, RecordingLink())
    with caplog.at_level("WARNING", logger="voxgate.service.loop"):
        _, code = run(config(tmp_path, path), stages)
    assert code == 0
    assert f"the file source ended without any audio ({path})" in caplog.text
    stop = audit_events(tmp_path)[-1]
    assert stop["event"] == "service_stop" and stop["reason"] == "source ended without audio"


def test_a_source_failing_before_its_first_frame_is_a_failed_start(
    tmp_path: Path, audio_dir: Path
) -> None:
    # A microphone that cannot be opened (busy, unplugged) or a stdin stream in the wrong
    # format fails inside the capture thread: the daemon sent READY=1, published 'idle' and
    # audited service_start, then stopped. It is now a start that failed, as other audio
    # errors at start are (exit 74, no READY).
    path = audio_dir / "header_only_loop.wav"
    sf.write(path, np.zeros(0, np.int16), SR, subtype="PCM_16")
    listener = NotifyListener(tmp_path / "notify")
    link = RecordingLink()
    stages = standin_stages(FileSource(path, loop=True), {}, link)
    d = Daemon(
        config(tmp_path, path, audio={"source": "file", "path": str(path), "loop": True}),
        stage_factory=lambda c: stages,
        notifier=Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")}),
    )
    try:
        assert d.run() == 74
        deadline = time.monotonic() + 5
        while not listener.has("STOPPING=1") and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        listener.close()
    assert not listener.has("READY=1")
    last = listener.statuses()[-1]
    assert last.startswith("stopping: cannot start (exit 74): audio input: "), last
    assert "no audio samples" in last
    assert "idle" not in link.of("state")


def test_a_reload_command_with_a_broken_config_file_is_answered_failed(tmp_path: Path) -> None:
    # Found sending `reload` over a real broker after a bad edit of the config file: the
    # signed reply said ok ({"queued": true}) while the loop then refused the file and kept
    # the running config, which only the door's log and audit said. The MQTT handler is
    # what the link calls for cmd/reload.
    path = tmp_path / "voxgate.yaml"
    path.write_text(f"data_dir: {tmp_path / 'data'}\n")
    d = Daemon(load_config(path), config_path=path, notifier=Notifier({}))
    path.write_text(f"data_dir: {tmp_path / 'data'}\nvad:\n  aggressiveness: 7\n")
    reply = d._command_reload({})
    assert reply["ok"] is False, reply
    assert "vad.aggressiveness" in reply["error"] and "keeping the running config" in reply["error"]
    assert not d._reload.is_set()  # nothing queued: the loop would refuse it anyway
    path.write_text(f"data_dir: {tmp_path / 'data'}\nvad:\n  aggressiveness: 3\n")
    assert d._command_reload({}) == {"queued": True}
    assert d._reload.is_set()
