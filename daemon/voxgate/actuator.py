"""The reference lock controller: obeys signed, fresh, new 'granted' decisions, nothing else.

It subscribes to `<prefix>/<device>/decision` for each configured door, verifies every message
with decision.verify (signature, version, device, expiry, sequence replay against a state file
that survives restarts), logs every refusal with its reason and reports it to the door on
`<prefix>/<device>/decision/refused`, signed with that door's key (mqtt.refusal), and on
'granted' either pulses a GPIO (gpiozero, optional) or runs a program without a shell,
passing the decision in VOXGATE_* environment variables.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import yaml
from pydantic import ValidationError

from voxgate.blas import users_environ
from voxgate.config.loader import ConfigError, read_config_text, read_yaml, yaml_problem
from voxgate.config.mqtt import ActuatorConfig
from voxgate.config.secrets import SecretError, override_source, read_secret
from voxgate.decision import (
    Decision,
    DecisionError,
    ReplayGuard,
    SequenceRewound,
    verify,
)
from voxgate.logs import LogLimit
from voxgate.mqtt.client import (
    REFUSAL_LOG_BURST,
    REFUSAL_LOG_EVERY_S,
    MqttSetupError,
    QuickDrops,
    build_client,
    connect_async,
    connect_error,
    session_seconds,
)
from voxgate.mqtt.refusal import refusal_payload
from voxgate.mqtt.topics import Topics, device_from_decision_topic

log = logging.getLogger(__name__)


def default_client_id(cfg: ActuatorConfig) -> str:
    """Stable across restarts, so the broker resumes the session, and unique to this
    installation: a random id made once and kept beside the state file (host names repeat:
    every Raspberry Pi is 'raspberrypi' until renamed, and two locks sharing an id keep
    taking the connection from each other). Where it cannot be kept, a per-process id."""
    import secrets

    path = cfg.state_file.with_name(cfg.state_file.name + ".client-id")
    try:
        text = path.read_text(encoding="ascii").strip()
        if text.startswith("voxgate-actuator-") and len(text) <= 64:
            return text
    except (OSError, UnicodeDecodeError):
        pass
    new = f"voxgate-actuator-{secrets.token_hex(8)}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(new + "\n", encoding="ascii")
        os.replace(tmp, path)
    except OSError as exc:
        log.warning(
            "cannot keep the MQTT client id in %s (%s); using a new one per start", path, exc
        )
        return f"voxgate-actuator-{os.getpid()}-{secrets.token_hex(4)}"
    return new


SHOWN_BYTES = 60  # of a message that is not a decision, quoted in the refusal


def _shown(payload: bytes) -> str:
    """The start of a message for a log line and a report: its length and first bytes,
    escaped (repr) so no control character reaches a log."""
    cut = "..." if len(payload) > SHOWN_BYTES else ""
    return f"{len(payload)} bytes: {payload[:SHOWN_BYTES]!r}{cut}"


class ActuatorSetupError(Exception):
    """The actuator cannot start (bad config, missing key, unreadable state); a user message."""


def load_actuator_config(path: str | os.PathLike[str]) -> ActuatorConfig:
    p = Path(path)
    try:
        # Bounded and regular files only, as the door's config (a link to /dev/zero was read
        # without end).
        data = read_yaml(read_config_text(p))
    except ConfigError as exc:
        raise ActuatorSetupError(str(exc).rstrip()) from None
    except FileNotFoundError:
        raise ActuatorSetupError(f"{p}: file not found") from None
    except yaml.YAMLError as exc:  # one line, as voxgate config check says it
        raise ActuatorSetupError(f"{p}: {yaml_problem(exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ActuatorSetupError(f"{p}: cannot read: {exc}") from None
    try:
        return ActuatorConfig.model_validate(data or {})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(x) for x in err["loc"]) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            problems.append(f"  - {where}: {msg}")
        raise ActuatorSetupError(f"{p}: invalid actuator config:\n" + "\n".join(problems)) from None


def state_lock_path(cfg: ActuatorConfig) -> Path:
    return cfg.state_file.with_name(cfg.state_file.name + ".lock")


def hold_state_lock(cfg: ActuatorConfig) -> int | None:
    """Take the exclusive flock on `<state_file>.lock` that a running actuator holds for its
    whole life, so `--forget` (and a second actuator on the same state file) can tell it is
    running. Returns the descriptor to keep open (the kernel drops the lock when the process
    ends, however it ends); ActuatorSetupError when another process holds it; None when the
    lock file cannot be made (the actuator still runs: the door must not stay shut for it)."""
    import fcntl

    path = state_lock_path(cfg)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Read-only is enough for flock, so a lock file root made stays usable by a service user.
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        log.warning("cannot make the lock file %s (%s): --forget cannot tell this runs", path, exc)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ActuatorSetupError(
            f"another voxgate actuator is running with the state file {cfg.state_file} "
            f"(it holds {path}); stop it first"
        ) from None
    return fd


def forget_device(cfg: ActuatorConfig, device: str) -> tuple[int, float | None]:
    """Drop `device`'s last accepted sequence number from the state file, so the lock accepts
    that door's decisions again whatever their numbers (a door whose sequence went backwards).
    Refused while an actuator runs on the file (it would write its own copy back). The edit
    itself is ReplayGuard.forget (atomic, keeps the file's owner and mode and a line naming
    what was removed). Returns the removed (seq, issued_at)."""
    fd = hold_state_lock(cfg)
    if fd is None:
        raise ActuatorSetupError(
            f"cannot take {state_lock_path(cfg)}, so cannot tell whether the actuator is running"
        )
    try:
        try:
            # The same checks the actuator makes at its start.
            guard = ReplayGuard(cfg.state_file)
        except DecisionError as exc:
            raise ActuatorSetupError(f"state file: {exc.detail}") from None
        try:
            removed = guard.forget(device)
        except OSError as exc:
            raise ActuatorSetupError(f"{cfg.state_file}: cannot write: {exc}") from None
        if removed is None:
            known = ", ".join(guard.devices()) or "none"
            raise ActuatorSetupError(
                f"{cfg.state_file} holds no sequence number for {device!r} (it holds: {known})"
            )
        last, issued = removed
    finally:
        os.close(fd)
    log.warning(
        "forgot door %s: removed its last accepted seq %d from %s (uid %d); its next signed "
        "decision is accepted whatever its number",
        device,
        last,
        cfg.state_file,
        os.getuid(),
    )
    return last, issued


def check_action(cfg: ActuatorConfig) -> None:
    """ActuatorSetupError when the command action cannot run at all: found at start (and by
    --check), not when the first grant leaves the door shut."""
    if cfg.command is None:
        return
    program = cfg.command.argv[0]
    if shutil.which(program) is None:
        raise ActuatorSetupError(
            f"command.argv[0]: {program!r} is not an executable program "
            "(missing, not executable, or not on PATH)"
        )


def decision_env(d: Decision) -> dict[str, str]:
    """The VOXGATE_* variables a command action receives."""
    return {
        "VOXGATE_DEVICE": d.device,
        "VOXGATE_OUTCOME": d.outcome,
        "VOXGATE_USER": d.user or "",
        "VOXGATE_SEQ": str(d.seq),
        "VOXGATE_NONCE": d.nonce,
        "VOXGATE_ISSUED_AT": f"{d.issued_at:.3f}",
        "VOXGATE_EXPIRES_AT": f"{d.expires_at:.3f}",
        "VOXGATE_SPEAKER_SCORE": "" if d.speaker_score is None else f"{d.speaker_score:.4f}",
        "VOXGATE_REASONS": ",".join(d.reasons),
    }


class Actuator:
    """Verifies decisions and acts on grants. `handle()` is the whole policy; `run()` adds MQTT."""

    def __init__(
        self,
        cfg: ActuatorConfig,
        *,
        keys: dict[str, bytes] | None = None,
        clock: Callable[[], float] = time.time,
        config_path: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path  # named in the advice to run --forget
        self.clock = clock
        if keys is None:
            keys = {}
            shared = override_source("decision-key")
            if shared is not None and len(cfg.devices) > 1:
                # The override has no device in its name: it would be every door's key, and
                # one door's key would then open the others.
                raise ActuatorSetupError(
                    f"{shared} is set and would be the decision key of every door "
                    f"({', '.join(d.id for d in cfg.devices)}); unset it and give each door "
                    "its own key_file"
                )
            for dev in cfg.devices:
                try:
                    key = read_secret("decision-key", dev.key_file)
                except Exception as exc:
                    raise ActuatorSetupError(f"device {dev.id}: {exc}") from None
                keys[dev.id] = key or b""
            _refuse_shared_keys(keys)
        for dev_id, key in keys.items():
            if not key:
                raise ActuatorSetupError(f"device {dev_id}: empty decision key")
        self.keys = keys
        try:
            self.guard = ReplayGuard(cfg.state_file)
        except DecisionError as exc:
            raise ActuatorSetupError(f"state file: {exc.detail}") from None
        # The broker settings too (TLS files, password), here and so by --check: run() met
        # a missing CA file as a traceback, after --check had said OK.
        try:
            build_client(cfg.broker, "voxgate-actuator-check", section="broker")
        except (MqttSetupError, SecretError) as exc:
            raise ActuatorSetupError(str(exc)) from None
        self.rejected: Counter[str] = Counter()
        # Whoever can publish on a decision topic could write a WARNING line per message,
        # as fast as they came, and journald's rate limit then dropped the GRANTED
        # lines too: the first of a minute are logged, every one is counted in `rejected`.
        self._reject_log = LogLimit(
            REFUSAL_LOG_BURST, REFUSAL_LOG_EVERY_S, what="decision refusals", logger=log
        )
        self.acted = 0
        # publish(topic, payload): set by run(), so each refusal also reaches the door.
        self.publish: Callable[[str, bytes], None] | None = None
        self._gpio: Any = None
        if cfg.gpio is not None:
            self._gpio = _open_gpio(cfg.gpio.pin, cfg.gpio.active_high)
        self._jobs: queue.Queue[Decision | None] = queue.Queue(maxsize=64)
        self._worker: threading.Thread | None = None

    # -- policy ------------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> Decision | None:
        """Verify one message; queue the action for a grant. Returns the accepted decision."""
        device = device_from_decision_topic(self.cfg.broker.topic_prefix, topic)
        key = self.keys.get(device or "")
        if device is None or key is None:
            self._reject(topic, "unknown-device", "not a configured door")
            return None
        try:
            skew = self.cfg.max_skew_s
            d = verify(payload, key, self.clock(), self.guard, device=device, max_skew_s=skew)
        except SequenceRewound as exc:
            self._reject(topic, exc.reason, exc.detail, device, exc.decision)
            self._rewound(exc)
            return None
        except DecisionError as exc:
            if exc.reason == "malformed" and not exc.signed and not exc.envelope:
                # Not signed, not even a signed envelope: bytes from something other than
                # the door (a test tool, a misrouted client). Reported as "malformed", the
                # door's log told its administrator to compare the voxgate versions. An
                # envelope with an algorithm this lock does not know stays "malformed": a
                # newer door's, where that advice is the right one.
                detail = f"{exc.detail}; received {_shown(payload)}"
                self._reject(topic, "not-a-decision", detail, device)
                return None
            self._reject(topic, exc.reason, exc.detail, device, exc.decision)
            return None
        except OSError as exc:
            # Without a durable record of the sequence we cannot rule out a later replay.
            detail = f"{self.cfg.state_file}: {exc}"
            self._reject(topic, "state-write-failed", detail, device)
            return None
        log.info(
            "decision accepted: device=%s seq=%d outcome=%s user=%r",
            d.device,
            d.seq,
            d.outcome,
            d.user,
        )
        if d.outcome == "granted":
            try:
                self._jobs.put_nowait(d)
            except queue.Full:
                detail = f"action queue full; seq {d.seq} not acted on"
                self._reject(topic, "busy", detail, device, d)
        return d

    def _reject(
        self,
        topic: str,
        reason: str,
        detail: str,
        device: str | None = None,
        decision: Decision | None = None,
    ) -> None:
        self.rejected[reason] += 1
        if self._reject_log.allow():
            log.warning("decision REJECTED on %s: %s (%s)", topic, reason, detail)
        if device is not None:
            self._report(device, reason, detail, decision)

    def _report(self, device: str, reason: str, detail: str, decision: Decision | None) -> None:
        """Tell the door (its decision/refused topic): it logged a grant, the door stays shut."""
        key = self.keys.get(device)
        if self.publish is None or key is None:
            return
        topic = Topics(self.cfg.broker.topic_prefix, device).decision_refused
        try:
            # Sealed with the door's own decision key: the door believes only reports from a
            # lock holding it (anyone on the broker could otherwise make it log refusals).
            report = refusal_payload(device, reason, detail, decision, time.time(), key)
            self.publish(topic, report)
        except Exception as exc:  # the report is a courtesy: never let it stop the lock
            log.warning("cannot report the refusal to %s: %s", topic, exc)

    def _rewound(self, exc: SequenceRewound) -> None:
        """The door itself sent this (signed, fresh, newer than the last one accepted) but its
        numbers restarted lower: without this line the door just never opened again."""
        log.error(
            "door %s: its decision sequence WENT BACKWARDS (got seq %d in a new decision, %s the "
            "last one accepted, %d) and every decision from it is refused until its sequence "
            "passes %d. Its data folder was probably restored from a backup, its SD card "
            "re-imaged or its decision-seq.json lost. A door whose voxgate takes sequence "
            "numbers from its clock recovers by itself once its clock is right: check the "
            "door's clock (NTP). Otherwise (an older voxgate on the door, a door clock far "
            "behind): stop this actuator, run `voxgate actuator -c %s --forget %s` and start "
            "it again",
            exc.device,
            exc.seq,
            exc.how_far,
            exc.last,
            exc.last,
            shlex.quote(self.config_path or "ACTUATOR.yaml"),
            shlex.quote(exc.device),
        )

    def act(self, d: Decision) -> None:
        """Open the door for `d`, unless it expired while waiting for an earlier action."""
        now = self.clock()
        if now >= d.expires_at:
            why = "expired while queued behind another action"
            self._reject(f"seq {d.seq}", "expired", why, d.device, d)
            return
        if self.cfg.gpio is not None:
            log.info(
                "GRANTED user=%r seq=%d: %s on for %g s",
                d.user,
                d.seq,
                self.cfg.gpio.pin,
                self.cfg.gpio.hold_s,
            )
            self._gpio.on()
            try:
                time.sleep(self.cfg.gpio.hold_s)
            finally:
                self._gpio.off()
        else:
            assert self.cfg.command is not None
            argv = self.cfg.command.argv
            env = {**users_environ(), **decision_env(d)}
            log.info("GRANTED user=%r seq=%d: running %s", d.user, d.seq, argv[0])
            # stderr to a file, not a pipe: a program that leaves a background child (e.g.
            # "relay off in 5 s") keeps a pipe open, and the wait for its end took the whole
            # timeout, reported success as a failure and held up the grants behind it.
            with contextlib.ExitStack() as stack:
                try:
                    err: IO[bytes] | None = stack.enter_context(tempfile.TemporaryFile())
                except OSError:  # a full /tmp must not keep the door shut: run without it
                    err = None
                try:
                    done = subprocess.run(
                        argv,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=err if err is not None else subprocess.DEVNULL,
                        timeout=self.cfg.command.timeout_s,
                        check=False,
                    )
                # ValueError: a signed field the environment cannot carry (a NUL or a lone
                # surrogate in the user name) was a traceback from the action thread.
                except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
                    log.error("action command failed for seq %d: %s", d.seq, exc)
                    self._report(d.device, "action-failed", f"command failed: {exc}", d)
                    return
                if done.returncode != 0:
                    said = ""
                    if err is not None:
                        err.seek(max(0, err.seek(0, os.SEEK_END) - 2000))  # its last words
                        said = err.read().decode(errors="replace").strip()[-500:]
                    log.error(
                        "action command exited %d for seq %d: %s", done.returncode, d.seq, said
                    )
                    why = f"command exited {done.returncode}"
                    self._report(d.device, "action-failed", why, d)
                    return
        self.acted += 1

    def _work_loop(self) -> None:
        while True:
            d = self._jobs.get()
            if d is None:
                return
            try:
                self.act(d)
            except Exception as exc:  # keep obeying later decisions whatever one action did
                log.exception("action for seq %d failed", d.seq)
                self._report(d.device, "action-failed", f"{exc.__class__.__name__}: {exc}", d)

    # -- MQTT --------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Connect (retrying forever), obey decisions until `stop` is set."""
        b = self.cfg.broker
        # A stable id and a kept session: while this lock's link is down (or it restarts),
        # the broker holds its subscription and the decisions sent meanwhile; with a fresh
        # session each time, a grant published before it had re-subscribed was dropped.
        # Held decisions still expire (MQTT 5 expiry at the broker, verify() here).
        session_s = session_seconds(b)
        client_id = b.client_id or default_client_id(self.cfg)
        client = build_client(b, client_id, session_s, section="broker")
        topics = [f"{b.topic_prefix}/{dev.id}/decision" for dev in self.cfg.devices]
        # A lock cloned from another's SD card has its client id: the two took the connection
        # (and the session, with the decisions it holds) from each other every few seconds.
        id_file = self.cfg.state_file.with_name(self.cfg.state_file.name + ".client-id")
        drops = QuickDrops(
            b,
            "another lock with this client id: set broker.client_id"
            if b.client_id
            else f"another lock with the same {id_file}, e.g. a cloned SD card: delete the "
            "file on one of them and restart it",
        )

        def on_connect(c: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
            if rc.is_failure:
                log.error("broker refused the connection: %s (retrying)", rc)
                return
            drops.connected()
            log.info("connected to %s:%d; subscribing to %s", b.host, b.port, ", ".join(topics))
            c.subscribe([(t, 1) for t in topics])

        def on_subscribe(c: Any, userdata: Any, mid: Any, rcs: Any, props: Any) -> None:
            refused = [str(rc) for rc in rcs if getattr(rc, "is_failure", False)]
            if refused:
                log.error("broker refused the subscription: %s (check the ACL)", refused)
            else:
                log.info("subscribed to %d topic(s)", len(rcs))

        def on_disconnect(c: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
            if stop.is_set():
                return
            log.warning("disconnected from the broker (%s); reconnecting", rc)
            drops.dropped(c)

        def on_connect_fail(c: Any, userdata: Any) -> None:
            log.warning("cannot connect to %s:%d (%s); retrying", b.host, b.port, connect_error())

        def publish(topic: str, payload: bytes) -> None:
            # QoS 1, not retained: a door that is away gets it from its kept session.
            client.publish(topic, payload, qos=1, retain=False)

        def on_message(c: Any, userdata: Any, msg: Any) -> None:
            try:
                self.handle(msg.topic, bytes(msg.payload))
            except Exception:  # a bad message must never stop the lock controller
                log.exception("error handling a message on %s", msg.topic)

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_subscribe = on_subscribe
        client.on_connect_fail = on_connect_fail
        client.on_message = on_message
        self.publish = publish
        self._worker = threading.Thread(target=self._work_loop, name="actions", daemon=True)
        self._worker.start()
        connect_async(client, b, session_s)
        client.loop_start()
        log.info("actuator started for %s", ", ".join(d.id for d in self.cfg.devices))
        try:
            stop.wait()
        finally:
            client.disconnect()
            client.loop_stop()
            self._jobs.put(None)
            self._worker.join(5)
            if self._gpio is not None:
                self._gpio.close()
            log.info(
                "actuator stopped: %d action(s), rejections %s", self.acted, dict(self.rejected)
            )


def _refuse_shared_keys(keys: dict[str, bytes]) -> None:
    """Two doors with one decision key (a key file copied, or named twice): whoever holds
    one door's key (its SD card) could sign a grant naming the other, and this lock opened
    it. Refused like the override shared by several doors."""
    by_key: dict[bytes, list[str]] = {}
    for dev_id, key in keys.items():
        if key:
            by_key.setdefault(hashlib.sha256(key).digest(), []).append(dev_id)
    for doors in by_key.values():
        if len(doors) > 1:
            raise ActuatorSetupError(
                f"doors {', '.join(doors)} have the same decision key: one door's key would "
                "open the others; give each door its own key (and the door its copy)"
            )


def _open_gpio(pin: str, active_high: bool) -> Any:
    try:
        from gpiozero import OutputDevice
    except ImportError:
        raise ActuatorSetupError(
            "gpio action needs gpiozero: pip install 'voxgate[gpio]'"
        ) from None
    try:
        return OutputDevice(pin, active_high=active_high, initial_value=False)
    except Exception as exc:  # gpiozero raises many kinds for a bad pin or no GPIO chip
        raise ActuatorSetupError(f"gpio pin {pin}: {exc}") from None
