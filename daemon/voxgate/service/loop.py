"""The daemon loop: source -> VAD -> (embedding + STT, streamed) -> policy -> decision.

One thread captures audio into a bounded queue (service/capture.py); the main thread runs
this loop. An attempt goes idle -> listening (someone speaks) -> challenge (a one-time
challenge is published; the answer's audio is pushed into the embedding stream and the
speech decoder frame by frame while it is spoken) -> verifying (only the last window and the
decoder's end remain) -> decided -> idle. With challenge.mode off, the first utterance is
the attempt. An MQTT `attempt` command ({"user": NAME}) starts a challenge for a claimed user.

Start steps run in order and are undone in reverse. Signals only set flags; the loop acts
on them between frames: SIGTERM/SIGINT finish the answer in progress (up to
service.stop_timeout_s) or abort it, publish offline and return 0; SIGHUP reloads the config
(an invalid file keeps the old one). The loop sends WATCHDOG=1 from its own iterations.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from voxgate import clocks
from voxgate.audit import AuditError, AuditLog
from voxgate.challenge import audit_fields
from voxgate.config import ConfigError, VoxgateConfig, load_config
from voxgate.lockout import LockoutBook, RecordResult
from voxgate.mqtt.commands import REFUSAL_CODES
from voxgate.mqtt.refusal import ADVICE, Refusal
from voxgate.ownership import what_to_do
from voxgate.quality import GATE_REASONS
from voxgate.service.attempt import Attempt, conclude
from voxgate.service.capture import Capture, EndOfStream, FrameQueue
from voxgate.service.datadir import (
    DataDirInUse,
    check_access,
    data_files,
    hold_data_dir,
    probe_writable,
)
from voxgate.service.keep import open_keeper
from voxgate.service.notify import Notifier
from voxgate.service.reload import plan_reload
from voxgate.service.stages import AttemptResult, Stages, build_stages
from voxgate.service.states import State, StateMachine
from voxgate.service.status import STATUS, ZEROS_S, problems, status_line
from voxgate.vad import Endpointer, SpeechAudio, SpeechEnded, SpeechStarted, Utterance

log = logging.getLogger(__name__)

EX_OK = 0
EX_UNAVAILABLE = 69  # a stage or model could not be loaded
EX_CANTCREAT = 73  # data_dir not writable
EX_CONFIG = 78  # a setting or secret is missing or wrong
EX_IOERR = 74  # audio capture failed while running (systemd restarts us)

# How long a spoken challenge plays (espeak-ng at 140 words/min, digits with pauses).
SPEAK_S_PER_WORD = 0.45
SPEAK_TAIL_S = 0.8
TICK_S = 0.1  # longest the loop waits for a frame before doing its housekeeping
HOUSEKEEPING_S = 1.0
STORE_PROBE_S = 5.0  # unreadable voiceprints are read again this often, for STATUS=


def _speak_s(challenge: Any) -> float:
    """A guess at how long a challenge takes to say, for a speaker that does not tell."""
    return SPEAK_S_PER_WORD * len(challenge.words) + SPEAK_TAIL_S


def _queue_frames(cfg: VoxgateConfig) -> int:
    """Frames the capture queue holds: service.queue_s of audio."""
    return int(cfg.service.queue_s * (1000 / cfg.audio.frame_ms))


class Daemon:
    def __init__(
        self,
        cfg: VoxgateConfig,
        *,
        config_path: str | Path | None = None,
        stage_factory: Callable[[VoxgateConfig], Stages] = build_stages,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.time,
        load: Callable[[Path], VoxgateConfig] = load_config,
        elapsed: Callable[[], float] = clocks.elapsed,
    ) -> None:
        """`clock`: the wall clock (times shown, signed and audited); `elapsed`: a clock no
        step moves, for how long a challenge stays open (tests inject both)."""
        self.cfg = cfg
        self.config_path = Path(config_path) if config_path else None
        self.load = load  # reads config_path again at a reload (with command-line overrides)
        self.stage_factory = stage_factory
        self.notifier = notifier or Notifier()
        self.clock = clock
        self.elapsed = elapsed
        self.sm = StateMachine()
        self.stages: Stages | None = None
        self.audit: AuditLog | None = None
        self.lockout: LockoutBook | None = None
        self.metrics: Any = None
        self.metrics_port: int | None = None
        self.capture: Capture | None = None
        self.frames: FrameQueue | None = None
        self.endpointer: Endpointer | None = None
        self.attempt: Attempt | None = None
        self.exit_code = EX_OK
        self._stop = threading.Event()
        self._stop_reason = ""
        self._reload = threading.Event()
        self._commands: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue(maxsize=16)
        self._undo: list[tuple[str, Callable[[], None]]] = []
        self._decided_until = 0.0
        self._stop_deadline: float | None = None
        self._next_housekeeping = 0.0
        self._frames_since = 0
        self._deaf_frames = 0
        self._frames_per_s = 1000 // cfg.audio.frame_ms
        self._dropped_seen = 0
        self._drop_warned_at = 0.0
        self._vad_pending = False
        self._enroll_prompt: dict[str, Any] | None = None  # waits while an attempt runs
        self.keeper: Any = None
        self.users: Any = None  # service.users.UserServices, once the stages are built
        self._mqtt_up = True  # until housekeeping learns otherwise
        self._zero_frames = 0  # frames in a row with every sample 0
        self._audio_frames = 0  # frames the loop took, for what the end of a source says
        self._utterances = 0  # speech the VAD ended as an utterance (not a click)
        self._muted = False  # ZEROS_S of them: said in the log and in STATUS=
        self._store_unreadable = False  # the last attempt that scored could not read them
        self._next_store_probe = 0.0  # while unreadable: when housekeeping reads them again
        self._problems: tuple[str, ...] = ()  # what STATUS= adds to the state
        self._status_why = ""
        self._published_locks: tuple[tuple[str, float | None], ...] | None = None
        self.sm.subscribe(self._on_state)

    # -- public -------------------------------------------------------------------------

    def request_stop(self, reason: str = "requested") -> None:
        self._stop_reason = self._stop_reason or reason
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    def run(self) -> int:
        """Start, loop until stopped or the source ends, shut down; returns the exit code."""
        from voxgate.service.malloc import tune_malloc

        tune_malloc()
        restore = self._install_signals()
        try:
            if not self._start():
                return self.exit_code
            self._loop()
            return self.exit_code
        finally:
            self._shutdown()
            restore()

    # -- start and stop -----------------------------------------------------------------

    def _step(self, name: str, undo: Callable[[], None] | None = None) -> None:
        self.notifier.status(f"starting: {name}")
        self.notifier.watchdog_if_due()
        if undo is not None:
            self._undo.append((name, undo))

    def _start(self) -> bool:
        from voxgate.audio import AudioError
        from voxgate.config.secrets import SecretError
        from voxgate.service.keep import KeepError
        from voxgate.service.stages import StageUnavailable

        cfg = self.cfg
        self._step("audit log and lockout state")
        try:
            probe_writable(Path(cfg.data_dir))
            held = hold_data_dir(Path(cfg.data_dir))
            self._undo.append(("data_dir lock", lambda: os.close(held)))  # released last
            check_access(data_files(cfg))
            self.audit = self._open_audit(cfg)
            self.lockout = LockoutBook(cfg.lockout.path or cfg.data_dir / "lockout.db", cfg.lockout)
            self._undo.append(("lockout", self.lockout.close))
            self.keeper = self._open_keeper(cfg)
        except DataDirInUse as exc:
            log.error("cannot start: %s", exc)
            return self._cannot_start(EX_UNAVAILABLE, str(exc))
        except OSError as exc:
            why = exc.strerror or str(exc)
            if exc.errno == errno.EROFS:
                why += " (an SD card the kernel remounted read-only after errors? see dmesg)"
            log.error("cannot use data_dir %s: %s", cfg.data_dir, why)
            return self._cannot_start(EX_CANTCREAT, f"data_dir {cfg.data_dir}: {why}")
        except (SecretError, KeepError, AuditError) as exc:
            log.error("cannot start: %s", exc)
            return self._cannot_start(EX_CONFIG, str(exc))

        self._step("loading models and opening audio")
        try:
            self.stages = self.stage_factory(cfg)
        except StageUnavailable as exc:
            log.error("cannot start: %s", exc)
            return self._cannot_start(EX_CONFIG if exc.config else EX_UNAVAILABLE, str(exc))
        except AudioError as exc:
            log.error("cannot open audio input: %s", exc)
            return self._cannot_start(EX_IOERR, f"audio input: {exc}")
        except Exception as exc:
            log.exception("cannot start: building the stages failed")
            return self._cannot_start(EX_UNAVAILABLE, f"building the stages failed: {exc}")
        stages = self.stages
        self._undo.append(("stages", self._close_stages))

        from voxgate.service.users import StartError, UserServices

        self.users = UserServices(
            cfg,
            stages.store,
            stages.embedder,
            self._audit,
            lockout=self.lockout,
            link=stages.link,
            replay=stages.replay,
        )
        self.users.on_prompt = self._queue_enroll_prompt
        self._step("MQTT link", undo=self._stop_link)
        stages.link.on_command("attempt", self._command_attempt)
        stages.link.on_command("reload", self._command_reload)
        if stages.store is not None:
            stages.link.on_command("erase-user", self.users.command_erase)
            stages.link.on_command("enroll-start", self.users.command_enroll_start)
            stages.link.on_command("enroll-finish", self.users.command_enroll_finish)
        from voxgate.mqtt.client import MqttLink  # as build_stages does: paho only when used

        if isinstance(stages.link, MqttLink):
            stages.link.on_lock_refusal = self._lock_refused
            stages.link.on_command_refusal = self._command_refused
        stages.link.start()

        self._step("fleet sync and admin API")
        try:
            self.users.start(lambda name, stop: self._undo.append((name, stop)))
        except StartError as exc:
            log.error("cannot start: %s", exc)
            return self._cannot_start(EX_CONFIG if exc.config else EX_UNAVAILABLE, str(exc))

        self._step("audio capture")
        live = cfg.audio.source == "mic" or cfg.audio.realtime
        self.frames = FrameQueue(_queue_frames(cfg), drop_oldest=live)
        self.endpointer = Endpointer(cfg.vad, cfg.audio.frame_ms)
        self.capture = Capture(stages.source, cfg.audio.frame_ms, self.frames)
        self.capture.start()
        self._undo.append(("capture", self.capture.stop))
        self.notifier.status(f"starting: waiting for audio from {cfg.audio.source}")
        deadline = time.monotonic() + cfg.service.audio_timeout_s
        while not self.capture.first_frame.wait(TICK_S):
            self.notifier.watchdog_if_due()
            if self._stop.is_set():
                return False
            if time.monotonic() > deadline:
                log.error(
                    "no audio from %s within %.0f s; check the device (voxgate devices)",
                    cfg.audio.source,
                    cfg.service.audio_timeout_s,
                )
                return self._cannot_start(EX_IOERR, f"no audio from {cfg.audio.source}")
        if not self.frames.received and self.frames.error is not None:
            # The source failed before its first frame (a microphone busy or gone, a stdin
            # stream in the wrong format): a failed start, not READY and then a stop.
            log.error("cannot open audio input: %s", self.frames.error)
            return self._cannot_start(EX_IOERR, f"audio input: {self.frames.error}")

        self.notifier.ready(STATUS[State.IDLE])
        if cfg.metrics.enabled:
            # After READY: the door works without it, and prometheus_client costs ~0.2 s
            # of import on a small board.
            from voxgate.service.metrics import Metrics

            self.metrics = Metrics()
            self.metrics_port = self.metrics.serve(cfg.metrics.host, cfg.metrics.port)
            self._undo.append(("metrics", self.metrics.stop))
        self._publish_state()
        self._sync_lockout()  # after a restart: what is still locked
        self._audit("service_start", device=cfg.device_id, source=cfg.audio.source)
        log.info("ready: %s", STATUS[State.IDLE])
        return True

    def _lock_refused(self, r: Refusal) -> None:
        """Counted (the link has logged it): the metrics endpoint starts after the link."""
        if self.metrics is not None:
            self.metrics.lock_refusals.labels(r.reason if r.reason in ADVICE else "other").inc()

    def _command_refused(self, code: str) -> None:
        """Counted (the link logs within its rate limit, so the count is the whole story)."""
        if self.metrics is not None:
            known = code in REFUSAL_CODES
            self.metrics.command_refusals.labels(code if known else "other").inc()

    def _cannot_start(self, code: int, why: str) -> bool:
        """The exit code, and the reason for the last STATUS= (what systemctl status shows
        once the unit has failed)."""
        self.exit_code = code
        self._stop_reason = self._stop_reason or f"cannot start (exit {code}): {why}"
        return False

    def _open_audit(self, cfg: VoxgateConfig) -> AuditLog:
        from voxgate.audit import open_log

        return open_log(cfg, note_loss=True)

    def _open_keeper(self, cfg: VoxgateConfig) -> Any:
        return open_keeper(cfg)

    def _close_stages(self) -> None:
        if self.stages is None:
            return
        for closer in reversed(self.stages.close):
            try:
                closer()
            except Exception as exc:
                log.warning("closing a stage: %s", exc)

    def _stop_link(self) -> None:
        if self.stages is None:
            return
        link = self.stages.link
        with contextlib.suppress(Exception):
            link.publish_state("offline")
        link.stop()

    def _shutdown(self) -> None:
        # The last line says why the daemon stops (an end of input exited 0 after
        # 'MQTT: disconnected', a SIGTERM without a word of its own).
        log.info("stopping: %s", self._stop_reason or "source ended")
        if self.attempt is not None:
            self._abort_attempt(f"shutdown ({self._stop_reason or 'source ended'})")
        self.notifier.stopping(f"stopping: {self._stop_reason or 'source ended'}")
        if self.audit is not None and self.stages is not None:
            self._audit("service_stop", reason=self._stop_reason or "source ended")
        for name, undo in reversed(self._undo):
            t0 = time.monotonic()
            try:
                undo()
            except Exception:
                log.exception("stopping %s failed", name)
            log.debug("stopped %s in %.3f s", name, time.monotonic() - t0)
        self._undo.clear()
        self._hand_over_unwritten_audit()
        self.notifier.close()

    def _hand_over_unwritten_audit(self) -> None:
        """Lines a full or failing disk held in memory die with the process: the journal
        (kept elsewhere) gets them instead, whole, so none is lost without a trace."""
        if self.audit is None or not self.audit.pending or not self.audit.flush_pending():
            return
        held = self.audit.held()
        log.error(
            "audit log %s: %d line(s) could not be written before stopping; each follows as "
            "'unwritten audit line' so the record survives in this log (%s)",
            self.audit.path,
            len(held),
            what_to_do(self.audit.path),
        )
        for body in held:
            log.error("unwritten audit line: %s", json.dumps(body, sort_keys=True))

    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None  # tests running the loop on a thread: no signals there
        old = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop("SIGTERM"))
        signal.signal(signal.SIGINT, lambda *_: self.request_stop("SIGINT"))
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())
        from voxgate.service.early_hup import take_pending

        if take_pending():
            log.info("a SIGHUP arrived while starting; the config is read again once started")
            self.request_reload()

        def restore() -> None:
            for sig, handler in old.items():
                signal.signal(sig, handler)

        return restore

    # -- the loop -----------------------------------------------------------------------

    def _loop(self) -> None:
        assert self.frames is not None and self.endpointer is not None
        while True:
            self.notifier.watchdog_if_due()
            now = time.monotonic()
            if self._stop.is_set() and self._finished_stopping(now):
                break
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            self._run_commands()
            item = self.frames.get(TICK_S)
            if isinstance(item, EndOfStream):
                if item.error is None and self.endpointer.in_speech:
                    # A writer that died mid-word, a recording cut short: the verdict that
                    # follows is on a piece of an utterance, and the log should say so.
                    # Without the pause that ends speech at a microphone, a piece with
                    # under PAUSE_S of pauses is a retry (too_noisy): say how to avoid it.
                    log.warning(
                        "the %s source ended during speech: the utterance is judged as far "
                        "as it went (end a recording with 0.5 s of silence, or it may be a "
                        "retry: too_noisy)",
                        self.cfg.audio.source,
                    )
                for ev in self.endpointer.flush():
                    self._on_event(ev)
                if item.error is not None and not self._stop.is_set():
                    self.exit_code = EX_IOERR
                elif item.error is None and not self.frames.received:
                    # A header-only WAV or an empty pipe: say so, rather than a quiet exit
                    # that looks like a recording with nobody in it.
                    where = self.cfg.audio.path if self.cfg.audio.source == "file" else None
                    log.warning(
                        "the %s source ended without any audio%s: nothing was checked",
                        self.cfg.audio.source,
                        f" ({where})" if where else "",
                    )
                    self._stop_reason = self._stop_reason or "source ended without audio"
                elif item.error is None and not self._utterances:
                    # Room tone, or a recording of nobody: exit 0 with no verdict read like
                    # a check that passed.
                    where = self.cfg.audio.path if self.cfg.audio.source == "file" else None
                    log.warning(
                        "the %s source ended after %.1f s of audio without speech%s: nothing "
                        "was checked",
                        self.cfg.audio.source,
                        self._audio_frames * self.cfg.audio.frame_ms / 1000,
                        f" ({where})" if where else "",
                    )
                elif item.error is None and self._waiting_for_answer():
                    # A recording opens the challenge but cannot answer digits drawn after
                    # it was made: say why nothing was decided, and what checks a recording.
                    log.warning(
                        "the %s source ended while the challenge waited for its answer: "
                        "nothing was decided (to check a recording, use challenge.mode: off "
                        "or voxgate verify)",
                        self.cfg.audio.source,
                    )
                self._stop_reason = self._stop_reason or (
                    f"audio error: {item.error}" if item.error else "source ended"
                )
                break
            if item is not None:
                self._frames_since += 1
                self._audio_frames += 1
                self._watch_zeros(item)
                if self._deaf_frames > 0:  # our own prompt is playing
                    self._deaf_frames -= 1
                    if not self._deaf_frames:
                        self.endpointer = self.endpointer.restart()
                    continue
                for ev in self.endpointer.feed(item):
                    self._on_event(ev)
            self._tick(time.monotonic())

    def _watch_zeros(self, frame: np.ndarray) -> None:
        """A muted capture switch or a dead microphone gives exact zeros: the door looked
        healthy (READY, watchdog, `idle: listening for speech`) and heard nobody."""
        if frame.any():
            if self._muted:
                self._muted = False
                log.warning(
                    "the %s input gives sound again after %.0f s of digital silence",
                    self.cfg.audio.source,
                    self._zero_frames * self.cfg.audio.frame_ms / 1000,
                )
                self._status()
            self._zero_frames = 0
            return
        self._zero_frames += 1
        if not self._muted and self._zero_frames * self.cfg.audio.frame_ms >= ZEROS_S * 1000:
            self._muted = True
            log.warning(
                "the %s input has given digital silence (every sample 0) for %.0f s: a muted "
                "capture switch, a level at zero or a dead microphone? (alsamixer, voxgate "
                "devices). Nobody can be heard until it gives sound again",
                self.cfg.audio.source,
                ZEROS_S,
            )
            self._status()

    def _waiting_for_answer(self) -> bool:
        a = self.attempt
        return a is not None and a.challenge is not None and not a.answering

    def _finished_stopping(self, now: float) -> bool:
        """On SIGTERM an answer being spoken may finish, within stop_timeout_s."""
        if self.attempt is None or not self.attempt.answering:
            return True
        if self._stop_deadline is None:
            self._stop_deadline = now + self.cfg.service.stop_timeout_s
            log.info("stop requested: letting the answer in progress finish")
        return now >= self._stop_deadline

    def _tick(self, now: float) -> None:
        assert self.endpointer is not None  # only called from _loop, after _start set it
        state = self.sm.state
        if state == State.DECIDED and now >= self._decided_until:
            self.sm.move(State.IDLE, "decision shown")
        elif state == State.CHALLENGE and self.attempt is not None:
            a = self.attempt
            if a.challenge is not None and not a.answering and self._past(a.deadline):
                self._audit("attempt_expired", user=a.claimed_user, nonce=a.challenge.nonce)
                self.attempt = None
                self.sm.move(State.IDLE, "challenge expired without an answer")
        if self._vad_pending and self.sm.state == State.IDLE and not self.endpointer.in_speech:
            self.endpointer = self.endpointer.restart(self.cfg.vad)
            self._vad_pending = False
            log.info("new VAD settings in effect")
        self._set_endpoint()
        # Every second of wall time or of audio (a file read faster than real time).
        if now >= self._next_housekeeping or self._frames_since >= self._frames_per_s:
            self._next_housekeeping = now + HOUSEKEEPING_S
            self._frames_since = 0
            self._housekeeping(now)

    def _past(self, deadline: float | None) -> bool:
        """`deadline` (on the elapsed clock) has passed."""
        return deadline is not None and self.elapsed() > deadline

    def _set_endpoint(self) -> None:
        """The silence that ends an utterance: challenge.answer_pause_ms while a challenge
        waits for its answer or an enrollment at the door takes its takes (people pause
        between digits: at vad.hangover_ms a slow reader's first digit was judged as the
        whole answer and the next one woke the door again), the VAD's own for the wake."""
        assert self.endpointer is not None
        ep = self.endpointer
        ms = ep.cfg.hangover_ms
        answer = self.sm.state == State.CHALLENGE or (
            self.attempt is None and self.users is not None and self.users.enrolling
        )
        if answer:
            ms = max(ms, self.cfg.challenge.answer_pause_ms)
        ep.set_hangover_ms(ms)

    def _housekeeping(self, now: float) -> None:
        assert self.frames is not None and self.stages is not None
        if self.cfg.audio.source == "mic" and self.capture is not None:
            silent_for = now - self.capture.last_frame_at
            if silent_for > self.cfg.service.audio_timeout_s:
                # A wedged device: exit non-zero so systemd restarts us and reopens it.
                log.error("no audio from the microphone for %.0f s; stopping", silent_for)
                self.exit_code = EX_IOERR
                self.request_stop("microphone stalled")
        dropped = self.frames.dropped
        new = dropped - self._dropped_seen
        self._dropped_seen = dropped
        if new:
            if self.metrics is not None:
                self.metrics.dropped_audio.inc(new * self.cfg.audio.frame_ms / 1000)
            if now - self._drop_warned_at > 10:
                self._drop_warned_at = now
                log.warning(
                    "processing fell behind: %d frame(s) of audio dropped (%d in total)",
                    new,
                    dropped,
                )
        if self.audit is not None and self.audit.failing:
            self.audit.flush_pending()
        if self.users is not None:
            self.users.housekeeping(now)
        if self._store_unreadable and now >= self._next_store_probe:
            self._probe_store(now)
        try:
            connected = bool(self.stages.link.connected)
        except Exception:
            connected = False
        if self.metrics is not None:
            self.metrics.mqtt_connected.set(1 if connected else 0)
            # Polled here, so the audio sources know nothing of metrics.
            offset = getattr(self.stages.source, "dc_offset", None)
            if offset is not None:
                self.metrics.dc_offset.set(offset)
        if connected != self._mqtt_up or self._current_problems() != self._problems:
            self._mqtt_up = connected
            self._status()
        self._take_lockout_clears()
        if self.stages.sequence is not None:  # as the lockout: a restart must not rewind it
            self.stages.sequence.save_held()
        if self.lockout is not None:  # a quiet door's stale entries go too
            self.lockout.save_held()
            self.lockout.expire(self.clock())
        self._sync_lockout()

    def _probe_store(self, now: float) -> None:
        """Voiceprints that could not be read: read them again now and then, so that a
        restored file clears STATUS= without waiting for someone at the door."""
        self._next_store_probe = now + STORE_PROBE_S
        store = self.stages.store if self.stages is not None else None
        if store is None:
            return
        try:
            store.readable()
        except Exception:  # StoreError, sqlite3 errors: still unreadable, said already
            return
        self._store_unreadable = False
        log.info("voiceprints can be read again")

    def _take_lockout_clears(self) -> None:
        """Apply what `voxgate lockout clear` queued in the lockout file (the command
        audits it; the daemon's memory is what it enforces, so the clear counts from here)."""
        if self.lockout is None:
            return
        try:
            cleared = self.lockout.take_clears()
        except Exception:
            log.exception("applying lockout clears failed")
            return
        for c in cleared:
            e = c.entry
            log.warning(
                "lockout: %s cleared by %s (voxgate lockout clear): it had %d consecutive "
                "failure(s)%s%s",
                e.key,
                c.by,
                e.failures,
                "" if c.window_failures is None else f", {c.window_failures} door failure time(s)",
                ""
                if e.locked_until is None
                else ", locked until " + time.strftime("%H:%M:%S", time.localtime(e.locked_until)),
            )

    # -- events -------------------------------------------------------------------------

    def _on_event(self, ev: SpeechStarted | SpeechAudio | SpeechEnded) -> None:
        try:
            if isinstance(ev, SpeechStarted):
                self._speech_started(ev)
            elif isinstance(ev, SpeechAudio):
                self._push(ev.pcm)
            else:
                self._speech_ended(ev.utterance)
        except Exception as exc:
            # A stage failing on odd audio must not take the door down.
            log.exception("attempt aborted by a stage error: %s", exc)
            if self.metrics is not None:
                self.metrics.attempt_errors.inc()
            self._abort_attempt(f"error: {type(exc).__name__}: {exc}")

    def _speech_started(self, ev: SpeechStarted) -> None:
        if self.attempt is None and self.users is not None and self.users.enrolling:
            return  # an enrollment takes the utterances (MQTT enroll-start)
        state = self.sm.state
        if state in (State.IDLE, State.DECIDED):
            challenge_on = self.stages is not None and self.stages.new_challenge is not None
            self.attempt = Attempt(claimed_user=None)
            if not challenge_on:
                self._open_streams(ev.pre_roll)
            self.sm.move(State.LISTENING, "speech started")
        elif state == State.CHALLENGE and self.attempt is not None:
            self.attempt.answer_started = self.elapsed()
            self._open_streams(ev.pre_roll)

    def _open_streams(self, pre_roll: np.ndarray) -> None:
        assert self.stages is not None and self.attempt is not None
        a = self.attempt
        a.emb_stream = self.stages.embedder.stream()
        if self.stages.recognizer is not None and a.challenge is not None:
            words = a.challenge.words
            digits = getattr(a.challenge, "digits", None)
            lookup = self.stages.templates_for
            own = lookup(a.claimed_user) if lookup is not None and digits else {}
            a.user_streams = {
                user: self.stages.recognizer.start(words, user_templates=tm)
                for user, tm in own.items()
                if tm is not None and tm.covers(digits)
            }
            # The engine runs only when someone may answer without templates of their own.
            if not a.user_streams or len(a.user_streams) < len(own):
                a.prompt_stream = self.stages.recognizer.start(words)
        if a.answer_started is None:
            a.answer_started = self.elapsed()
        self._push(pre_roll)

    def _push(self, pcm: np.ndarray) -> None:
        a = self.attempt
        if a is None or not a.answering or not len(pcm):
            return
        a.emb_stream.push(pcm)
        if a.prompt_stream is not None:
            a.prompt_stream.push(pcm)
        for stream in a.user_streams.values():
            stream.push(pcm)

    def _speech_ended(self, utt: Utterance | None) -> None:
        if utt is not None:
            self._utterances += 1
            if self.metrics is not None:
                self.metrics.utterances.inc()
        a = self.attempt
        if a is None:
            if utt is not None and self.users is not None:
                self.users.take(utt.pcm)
            return
        if utt is None:  # a click or cough, not speech
            if self.sm.state == State.LISTENING:
                self.attempt = None
                self.sm.move(State.IDLE, "too short to be speech")
            else:  # during a challenge: drop the partial answer, wait for the real one
                a.emb_stream = a.prompt_stream = None
                a.user_streams = {}
                a.answer_started = None
            return
        if self.sm.state == State.LISTENING and not a.answering:
            self._issue_challenge(a)  # the wake utterance: now ask for the answer
            return
        if not a.answering:
            return  # speech that began before the challenge (a long wake split by the VAD)
        a.ended_at = time.monotonic()
        self.sm.move(State.VERIFYING, "answer ended")
        self._verify(a, utt)

    def _issue_challenge(self, a: Attempt) -> None:
        assert self.stages is not None and self.stages.new_challenge is not None
        assert self.lockout is not None
        st = self.lockout.state(a.claimed_user, self.clock())
        if st.locked:
            log.info(
                "not issuing a challenge: %s locked for %.0f s more",
                st.scope,
                st.remaining_s(self.clock()),
            )
            self.attempt = None
            self.sm.move(State.IDLE, "locked out")
            return
        a.challenge = self.stages.new_challenge(self.cfg.challenge, self.clock())
        # Its expiry is decided on the clock no step moves: an NTP step forward during the
        # challenge expired it at once (the right person got challenge_expired), a step
        # back kept it open for as long as the step.
        a.deadline = self.elapsed() + (a.challenge.expires_at - a.challenge.issued_at)
        if self.stages.speak is not None:
            seconds = self._speak(a.challenge)
            # The door is deaf while it says the prompt, so challenge.timeout_s counts from
            # the end of it: from the issue, `timeout_s: 2` expired every challenge while
            # the door was still saying it (a new challenge at each answer, for ever).
            a.challenge = dataclasses.replace(
                a.challenge,  # type: ignore[type-var]  # the stage's Challenge is a dataclass
                expires_at=a.challenge.expires_at + seconds,
            )
            a.deadline += seconds
        self.stages.link.publish_challenge(a.challenge)
        self.sm.move(State.CHALLENGE, "challenge issued")

    def _speak(self, challenge: Any) -> float:
        """Say the challenge on the door's speaker. The microphone hears it too, and a
        machine reading the digits must not become the answer: the loop is deaf (frames
        are dropped, not fed to the VAD) for as long as the prompt plays (as the speaker
        measured it, else a guess from the word count). Returns those seconds."""
        assert self.stages is not None and self.stages.speak is not None
        try:
            played = self.stages.speak(challenge)
        except Exception as exc:
            log.warning("speaking the challenge failed: %s", exc)
            return 0.0
        if played is False or played == 0:
            return 0.0  # nothing was said (espeak-ng missing or failed)
        seconds = played if isinstance(played, float) else _speak_s(challenge)
        self._deaf_frames = int(seconds * 1000 / self.cfg.audio.frame_ms)
        return seconds

    def _command_attempt(self, payload: dict[str, Any]) -> dict[str, Any]:
        """MQTT thread: queue a claimed-user attempt for the loop."""
        if not isinstance(payload, dict):
            return {"ok": False, "error": "payload must be a JSON object"}
        user = payload.get("user")
        if user is not None and (not isinstance(user, str) or not 0 < len(user) <= 64):
            return {"ok": False, "error": "user must be a name of 1-64 characters"}
        if user is not None:
            from voxgate.voiceprints import StoreError, normalize_name

            try:
                # As the store reads names: one it refuses would reach the scorer as a
                # StoreError, i.e. a decision saying the voiceprint file is unreadable.
                user = normalize_name(user)
            except StoreError as exc:
                return {"ok": False, "error": str(exc)}
        if self.stages is None or self.stages.new_challenge is None:
            return {"ok": False, "error": "challenge mode is off; just speak"}
        if self._attempt_busy():  # the reply said ok while the loop ignored it
            return {"ok": False, "error": f"busy: the door is in {self.sm.state.value}; send later"}
        try:
            self._commands.put_nowait(("attempt", {"user": user}))
        except queue.Full:
            return {"ok": False, "error": "busy"}
        return {"ok": True}

    def _attempt_busy(self) -> bool:
        """A challenge, a verification or someone's speech is under way."""
        speaking = self.endpointer is not None and self.endpointer.in_speech
        return self.sm.state not in (State.IDLE, State.DECIDED) or speaking

    def _command_reload(self, payload: dict[str, Any]) -> dict[str, Any]:
        """MQTT `reload`: the same as SIGHUP (the loop re-reads the file between frames).
        Voiceprints need no reload: the scorer reads the store at every attempt."""
        if self.config_path is None:
            return {"ok": False, "error": "no config file was given; nothing to reload"}
        try:  # the schema check here, so that the reply says what the loop would refuse
            self.load(self.config_path)
        except ConfigError as exc:
            return {"ok": False, "error": f"keeping the running config: {exc}"}
        self.request_reload()
        return {"queued": True}

    def _run_commands(self) -> None:
        assert self.endpointer is not None  # only called from _loop, after _start set it
        if self._enroll_prompt is not None and self._quiet():
            pending, self._enroll_prompt = self._enroll_prompt, None
            self._show_enroll_prompt(pending)
        while True:
            try:
                name, payload = self._commands.get_nowait()
            except queue.Empty:
                return
            if name == "prompt":
                if self._quiet():
                    self._show_enroll_prompt(payload)
                else:  # never over a live challenge or into someone's speech
                    self._enroll_prompt = payload
            elif name == "attempt":
                if self._attempt_busy():
                    log.info("attempt command ignored: busy (%s)", self.sm.state.value)
                    continue
                self.attempt = Attempt(claimed_user=payload.get("user"))
                self._issue_challenge(self.attempt)

    def _queue_enroll_prompt(self, digits: str, take: int, session: int, ttl_s: float) -> None:
        """Any thread: show enrollment take `take`'s prompt from the loop (which may speak it
        and must then be deaf while it plays)."""
        item = {"digits": digits, "take": take, "session": session, "ttl_s": ttl_s}
        try:
            self._commands.put_nowait(("prompt", item))
        except queue.Full:
            log.warning("enrollment prompt %d not shown: command queue full", take)

    def _quiet(self) -> bool:
        assert self.endpointer is not None  # only called from _loop, after _start set it
        return self.attempt is None and not self.endpointer.in_speech

    def _show_enroll_prompt(self, p: dict[str, Any]) -> None:
        from voxgate.challenge import enroll_prompt

        assert self.stages is not None and self.users is not None
        if not self.users.prompt_is_current(p["session"], p["take"]):
            return  # a take arrived meanwhile, or the enrollment ended
        prompt = enroll_prompt(p["digits"], p["take"], self.clock(), p["ttl_s"])
        log.info("enrollment take %d: say %s", p["take"], prompt.spoken_form())
        self.stages.link.publish_challenge(prompt)
        if self.stages.speak is not None:
            self._speak(prompt)

    # -- deciding -----------------------------------------------------------------------

    def _verify(self, a: Attempt, utt: Utterance) -> None:
        assert self.stages is not None and self.lockout is not None
        now = self.clock()
        done = conclude(a, utt, self.stages, self.lockout, self.cfg, now, self.clock)
        if done.record is not None:
            self._announce_locks(done.record)
        result = done.result
        verdict = result.verdict
        if result.speaker is not None:  # the store was read, or failed to be
            self._store_unreadable = "store_unreadable" in getattr(result.speaker, "reasons", ())
        published = self._publish_decision(result)
        latency = time.monotonic() - a.ended_at
        self.attempt = None
        if self.metrics is not None:
            self.metrics.decisions.labels(verdict.outcome).inc()
            self.metrics.latency.observe(latency)
        kept = None
        if self.keeper is not None:
            tag = a.challenge.nonce if a.challenge is not None else f"{now:.0f}"
            kept = self.keeper.store(utt.pcm, tag, now)
        gate = [r for r in getattr(result.speaker, "reasons", ()) if r in GATE_REASONS]
        self._audit(
            "decision",
            outcome=verdict.outcome,
            user=verdict.user,
            claimed_user=a.claimed_user,
            reasons=list(verdict.reasons),
            # Which of the quality gate's rules made a `low_quality` retry (too_little_speech,
            # too_noisy, clipped): the decision names none, and the fix differs (speak
            # longer, quieter room, further from the microphone).
            quality_reasons=gate,
            score=getattr(result.speaker, "score", None),
            threshold=getattr(result.speaker, "threshold", None),
            liveness_ok=getattr(result.liveness, "ok", None),
            liveness_score=getattr(result.liveness, "score", None),
            # Why the answer failed (wrong content, or too long/short to judge) and which
            # check decided (the user's templates or an engine); the score alone told neither.
            liveness_reason=getattr(result.liveness, "reason", None),
            liveness_method=getattr(result.liveness, "method", None),
            # What was asked and heard (digit challenges only: a passphrase stays unwritten).
            **audit_fields(
                getattr(a.challenge, "digits", None), getattr(result.liveness, "transcript", None)
            ),
            replay=getattr(result.replay, "is_replay", None),
            nonce=a.challenge.nonce if a.challenge is not None else None,
            speech_s=round(utt.speech_s, 2),
            latency_s=round(latency, 3),
            audio=str(kept) if kept else None,
            published=published,
        )
        log.info(
            "decision %s user=%s reasons=%s%s (%.0f ms after end of speech)",
            verdict.outcome,
            verdict.user,
            ",".join(verdict.reasons) or "-",
            f" quality={','.join(gate)}" if gate else "",
            latency * 1000,
        )
        self._decided_until = time.monotonic() + self.cfg.service.decided_hold_s
        self.sm.move(State.DECIDED, verdict.outcome)

    def _publish_decision(self, result: AttemptResult) -> bool:
        """Sign and send; a failure here is logged and audited, the verdict still stands
        (lockout already counted it) and the loop goes on."""
        assert self.stages is not None
        try:
            sent = self.stages.link.publish_decision(self.stages.make_decision(result))
            # MqttLink returns False for a decision that expired before it could be sent.
            return sent is not False
        except Exception:
            log.exception("decision %s could not be published", result.verdict.outcome)
            if self.metrics is not None:
                self.metrics.attempt_errors.inc()
            return False

    def _announce_locks(self, rec: RecordResult) -> None:
        for entry in rec.new_locks:
            scope = "device" if entry.key == "device" else "user"
            # The door also locks on its failures within lockout.device_window_s, which no
            # success clears: "after 2 consecutive failures" alone would puzzle an admin.
            window = rec.state.device_window_failures if scope == "device" else None
            log.warning(
                "lockout: %s after %d consecutive failures%s, until %s",
                entry.key,
                entry.failures,
                "" if window is None else f" ({window} within lockout.device_window_s)",
                time.strftime("%H:%M:%S", time.localtime(entry.locked_until or 0)),
            )
            if self.metrics is not None:
                self.metrics.lockouts.labels(scope).inc()
            extra = {} if window is None else {"window_failures": window}
            self._audit(
                "lockout", key=entry.key, failures=entry.failures, until=entry.locked_until, **extra
            )
        self._sync_lockout()

    def _sync_lockout(self) -> None:
        """Publish the locked keys whenever the set changes: new locks, and locks that ran
        out (checked every second), so MQTT never shows a lock that has ended."""
        if self.stages is None or self.lockout is None:
            return
        locked = self.lockout.locked(self.clock())
        keys = tuple((e.key, e.locked_until) for e in locked)
        if keys == self._published_locks:
            return
        self._published_locks = keys
        if self.metrics is not None:
            self.metrics.locked.set(len(locked))
        try:
            self.stages.link.publish_lockout(
                [{"key": e.key, "failures": e.failures, "until": e.locked_until} for e in locked]
            )
        except Exception as exc:
            log.warning("publishing the lockout state failed: %s", exc)

    def _abort_attempt(self, why: str) -> None:
        a, self.attempt = self.attempt, None
        if a is not None:
            self._audit(
                "attempt_aborted",
                reason=why,
                user=a.claimed_user,
                nonce=a.challenge.nonce if a.challenge is not None else None,
            )
        if self.sm.state != State.IDLE:
            self.sm.move(State.IDLE, why)

    # -- reload ---------------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the config file; apply what can change live. Invalid -> keep the old."""
        from voxgate.logs import setup_logging

        if self.config_path is None:
            log.warning("SIGHUP: no config file was given; nothing to reload")
            return False
        self.notifier.reloading()
        try:
            digest = hashlib.sha256(self.config_path.read_bytes()).hexdigest()
        except OSError:
            digest = None
        try:
            new = self.load(self.config_path)
            self._check_passphrase(new)
        except ConfigError as exc:
            log.error("config reload rejected, keeping the running config: %s", exc)
            self._audit(
                "config_reload",
                ok=False,
                file=self.config_path,
                sha256=digest,
                problems=exc.problems,
            )
            self.notifier.ready(STATUS[self.sm.state])
            return False
        plan = plan_reload(self.cfg, new)
        hot, cold = plan.applied, plan.needs_restart
        if cold:
            log.warning("config changes that need a restart (not applied): %s", ", ".join(cold))
        self.cfg = plan.cfg
        if self.users is not None:  # enrollment at the door reads challenge and vad
            self.users.cfg = self.cfg
        if "logging" in hot:
            setup_logging(self.cfg.logging)
        if "lockout" in hot and self.lockout is not None:
            self.lockout.reconfigure(self.cfg.lockout)
        if "vad" in hot:
            self._vad_pending = True
        if "service" in hot and self.frames is not None:
            # The capture queue was sized at start; its bound is read at every put.
            self.frames.max_frames = max(1, _queue_frames(self.cfg))
        self._audit(
            "config_reload",
            ok=True,
            file=self.config_path,
            sha256=digest,
            applied=hot,
            needs_restart=cold,
        )
        log.info("config reloaded: applied %s", ", ".join(hot) or "nothing (unchanged)")
        self.notifier.ready(STATUS[self.sm.state])
        return True

    def _check_passphrase(self, new: VoxgateConfig) -> None:
        """A new passphrase must be one the running engine can score (the engine is built at
        start): else every attempt after the reload was aborted. Raises ConfigError."""
        # As it would run: the mode waits for a restart, the phrase applies at once.
        ch = plan_reload(self.cfg, new).cfg.challenge
        recognizer = self.stages.recognizer if self.stages is not None else None
        if ch.mode != "passphrase" or recognizer is None or ch == self.cfg.challenge:
            return
        from voxgate.challenge import ChallengeError, new_challenge
        from voxgate.stt import SttError

        try:
            recognizer.check_words(new_challenge(ch, 0.0).words)
        except (ChallengeError, SttError) as exc:
            raise ConfigError(str(self.config_path), [f"challenge.passphrase: {exc}"]) from None

    # -- helpers --------------------------------------------------------------------------

    def _audit(self, event: str, **fields: Any) -> None:
        if self.audit is None:
            return
        before = self.audit.write_errors
        self.audit.append(event, **fields)
        if self.metrics is not None and self.audit.write_errors > before:
            self.metrics.audit_write_errors.inc(self.audit.write_errors - before)

    def _status(self) -> None:
        """STATUS= for systemctl status: the state, what the door is waiting for, and what
        keeps it from working fully (each also logged when it began)."""
        self._problems = self._current_problems()
        mqtt_down = self.cfg.mqtt.enabled and not self._mqtt_up
        text = status_line(self.sm.state, self._status_why, self._problems, mqtt_down)
        self.notifier.status(text)

    def _current_problems(self) -> tuple[str, ...]:
        return problems(
            muted=self._muted,
            store_unreadable=self._store_unreadable,
            audit=self.audit,
            lockout=self.lockout,
            sequence=self.stages.sequence if self.stages is not None else None,
        )

    def _on_state(self, old: State, new: State, why: str) -> None:
        self._status_why = why if new == State.DECIDED else ""
        self._status()
        if self.metrics is not None:
            self.metrics.state.state(new.value)
        self._publish_state()

    def _publish_state(self) -> None:
        if self.stages is None:
            return
        try:
            self.stages.link.publish_state(self.sm.state.value)
        except Exception as exc:
            log.warning("publishing state %s failed: %s", self.sm.state.value, exc)
