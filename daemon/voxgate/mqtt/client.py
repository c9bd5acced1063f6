"""MqttLink: the daemon's one connection to the broker (paho-mqtt 2.x, threaded loop).

What it guarantees:
- start() never blocks and never raises for an unreachable broker; paho's loop thread keeps
  retrying with exponential back-off (reconnect_min_s .. reconnect_max_s).
- status is retained 'online' on every (re)connect and 'offline' through the last will; Home
  Assistant discovery and the last state/lockout are re-published on every reconnect.
- a decision is never delivered after it expires: it carries an MQTT 5 message expiry, and
  decisions held while the link was down (or unacknowledged when it dropped) are dropped on
  reconnect once expired (counted in stats["decisions_expired"] and logged); the survivors
  get their expiry interval shortened to what is left.
- decisions reach the broker in the order they were made, across reconnects: a lock refuses
  any decision whose seq is not above the last it accepted. Those made while the link is
  down wait in the link's own queue, and on_connect sends every held decision, oldest first,
  before it marks the link connected (see _send_held).
- commands are verified (mqtt.commands.CommandGate) and run on a worker thread, so a slow
  handler never stalls the network loop; every command gets a signed reply.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import math
import queue
import ssl
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from voxgate import __version__
from voxgate.clocks import elapsed
from voxgate.config.mqtt import BrokerConfig, MqttConfig
from voxgate.config.secrets import read_secret
from voxgate.decision import Decision, sign
from voxgate.logs import LogLimit
from voxgate.mqtt import discovery
from voxgate.mqtt.commands import CommandError, CommandGate, make_reply
from voxgate.mqtt.nonces import UsedCommands
from voxgate.mqtt.refusal import ADVICE, Refusal, RefusalError, UnsignedReport, parse_refusal
from voxgate.mqtt.topics import EVENT_QOS, STATE_QOS, STATES, USER_QOS, Topics
from voxgate.names import fold

log = logging.getLogger(__name__)

# Refusal lines (commands, lock reports): the first 10 a minute, then one line with the count.
REFUSAL_LOG_BURST = 10
REFUSAL_LOG_EVERY_S = 60.0

CommandHandler = Callable[[dict[str, Any]], dict[str, Any]]


# Who sends a refusal report the door cannot verify (with "or someone else on the broker").
_UNSIGNED_FROM = (
    "a lock of an older voxgate (its reports are unsigned: upgrade it; its own log has the refusal)"
)
_OTHER_KEY_FROM = (
    "a lock holding another decision key for this door (it then refuses this door's "
    "decisions as bad-signature: give it the door's mqtt.hmac_key_file)"
)


class MqttSetupError(Exception):
    """The MQTT settings cannot be used (missing CA file, unreadable key, ...)."""


# How long the broker keeps a client's session (its subscriptions and the QoS 1 messages for
# it) while the client is away: longer than a network blip or a restart; decisions and
# commands expire much sooner anyway. MQTT 5 only: a 3.1.1 session never expires and its
# messages carry no expiry, so a broker could hand back messages of any age, leaving only
# the receiver's clock (wrong after a power cut without NTP) to refuse them.
SESSION_S = 600
# A connection the broker drops this soon after accepting it, several times in a row, is
# most likely taken over by another client with the same id (two daemons with one device_id,
# a cloned SD card): each connect kicks the other out.
QUICK_DROP_S = 10.0
QUICK_DROPS_TO_WARN = 3


class QuickDrops:
    """Says so, and backs off, when connections keep being lost right after the connect.

    paho restarts its back-off at every accepted connect, so two clients with one id took
    the connection from each other every reconnect_min_s, forever, each logging only
    'connection lost (Unspecified error)'. `who` ends the warning: where the id comes from.
    """

    def __init__(self, cfg: BrokerConfig, who: str) -> None:
        self.cfg = cfg
        self.who = who
        self.up_since = 0.0  # time.monotonic() of the last accepted connect
        self.count = 0  # connections in a row lost within QUICK_DROP_S

    def connected(self) -> None:
        self.up_since = time.monotonic()

    def dropped(self, client: paho.Client) -> None:
        """After a connection the broker had accepted was lost (not a refused connect)."""
        up, self.up_since = self.up_since, 0.0
        if time.monotonic() - up >= QUICK_DROP_S:
            self.count = 0
            return
        self.count += 1
        if self.count == QUICK_DROPS_TO_WARN:
            log.warning(
                "MQTT: the broker dropped the connection %d times in a row within %g s of "
                "accepting it: is another client connecting as %r (%s)? Backing off up to %g s",
                self.count,
                QUICK_DROP_S,
                client._client_id.decode(errors="replace"),
                self.who,
                self.cfg.reconnect_max_s,
            )
        if hasattr(client, "_reconnect_delay"):  # the next wait doubles this
            delay = self.cfg.reconnect_min_s * 2 ** (self.count - 1)
            client._reconnect_delay = min(delay, self.cfg.reconnect_max_s)  # type: ignore[assignment]


# The largest MQTT packet a voxgate client takes (MQTT 5 Maximum Packet Size): commands are a
# few kB (mqtt.command_max_bytes <= 64 kB, plus a topic of up to 64 kB), decisions 8 kB, fleet
# messages up to 1 MB (fleet passes its own). mosquitto accepts 256 MB by default, and a
# 200 MB command took the door to 611 MB before its size could be checked.
MAX_PACKET_BYTES = 1024 * 1024


def session_seconds(cfg: BrokerConfig) -> int:
    return SESSION_S if cfg.protocol == "5" else 0


def build_client(
    cfg: BrokerConfig, client_id: str, session_s: int = 0, section: str = "mqtt"
) -> paho.Client:
    """A paho client with protocol, credentials, TLS and back-off from `cfg` (no I/O yet).
    session_s > 0: the broker keeps the session (subscriptions, QoS 1 messages) that long
    while the client is away; pass the same value to connect_async(). `section`: where
    `cfg` sits in the config file, for messages ('broker' in the actuator's)."""
    v5 = cfg.protocol == "5"
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        clean_session=None if v5 else session_s <= 0,
    )
    if cfg.username is not None:
        # A password_file that is named but missing is an error: it was skipped without a
        # word, and the broker's 'Not authorized' did not say the file was not found.
        named = cfg.password_file is not None
        password = read_secret("mqtt-password", cfg.password_file, required=named)
        client.username_pw_set(cfg.username, password.decode() if password else None)
    elif cfg.password_file is not None:
        # Not refused (a door connecting anonymously keeps working after an upgrade), but
        # said: the file is not even read, so a typo in it went unnoticed.
        log.warning(
            "%s.password_file %s is set but %s.username is not: no password is sent (the "
            "broker sees an anonymous client); set the user name",
            section,
            cfg.password_file,
            section,
        )
    if cfg.tls is not None:
        tls = cfg.tls
        for name, path in (("ca_file", tls.ca_file), ("cert_file", tls.cert_file)):
            if path is not None and not path.is_file():
                raise MqttSetupError(f"{section}.tls.{name}: {path} does not exist")
        try:
            client.tls_set(
                ca_certs=str(tls.ca_file) if tls.ca_file else None,
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise MqttSetupError(f"{section}.tls: cannot load certificates: {exc}") from None
        if tls.insecure:
            log.warning("%s.tls.insecure is set: the broker's host name is not checked", section)
            client.tls_insecure_set(True)
    client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)  # type: ignore[arg-type]
    return client


def connect_async(
    client: paho.Client,
    cfg: BrokerConfig,
    session_s: int = 0,
    fresh_first: bool = False,
    max_packet: int = MAX_PACKET_BYTES,
) -> None:
    """Connect in the background. session_s > 0 (MQTT 5): the broker keeps the session that
    long while the client is away; fresh_first: except the one a previous process left, which
    the first connect discards (only reconnects of this process resume their session).
    max_packet (MQTT 5): the broker drops larger messages for this client instead of sending
    them; paho reads a whole message into memory before anyone can look at its size."""
    if cfg.protocol != "5":
        client.connect_async(cfg.host, cfg.port, cfg.keepalive_s)
        return
    props = Properties(PacketTypes.CONNECT)
    props.MaximumPacketSize = max_packet
    if session_s > 0:
        props.SessionExpiryInterval = session_s
    clean: paho.CleanStartOption = session_s <= 0
    if session_s > 0 and fresh_first:
        clean = paho.MQTT_CLEAN_START_FIRST_ONLY
    client.connect_async(cfg.host, cfg.port, cfg.keepalive_s, clean_start=clean, properties=props)


def connect_error() -> str:
    """Why the connect failed, for an on_connect_fail callback: paho calls it inside its
    `except OSError`, without passing the exception. A wrong CA or an expired certificate
    was logged as 'cannot reach' the broker, which sent people to check the network."""
    exc = sys.exc_info()[1]
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: {exc.verify_message or exc}; check tls.ca_file and the host name"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or exc.__class__.__name__
    return "no connection"


def _expiry_props(seconds: float) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = max(1, math.ceil(seconds))
    return props


def _ms(t: Any) -> Any:
    """A time as the topics carry it (docs/mqtt.md): Unix seconds, millisecond precision."""
    return round(float(t), 3) if isinstance(t, (int, float)) else t


class _HeldDecision(NamedTuple):
    """A signed decision made while the link was down, waiting for the reconnect."""

    seq: int
    payload: bytes
    expires_at: float


class MqttLink:
    """Publishes one device's status, state, challenges, decisions; receives its commands."""

    def __init__(
        self,
        cfg: MqttConfig,
        device_id: str,
        *,
        decision_key: bytes | None = None,
        command_key: bytes | None = None,
        command_clock: Callable[[], float] = time.time,
        used_commands: Path | None = None,
    ) -> None:
        """`command_clock`: the wall clock commands are checked with (tests step one).
        `used_commands`: the file of used command nonces (mqtt.nonces); None: in memory.
        A damaged one raises DecisionError ("state-unreadable", naming the file)."""
        self.cfg = cfg
        self.device_id = device_id
        self.topics = Topics(cfg.topic_prefix, device_id, cfg.discovery_prefix)
        key = decision_key or read_secret("decision-key", cfg.hmac_key_file)
        if not key:
            raise MqttSetupError("the decision key is empty")
        self._key: bytes = key
        if command_key is None:
            command_key = read_secret("command-key", cfg.command_key_file, required=False)
        if command_key is None and cfg.command_key_file is not None:
            # Named but not there (a typo, a missing deployment step): say which file.
            log.warning(
                "mqtt.command_key_file %s is missing or empty: every MQTT command to %s will "
                "be refused",
                cfg.command_key_file,
                device_id,
            )
        elif command_key is None:
            log.warning("no command key: every MQTT command to %s will be refused", device_id)
        elif hmac.compare_digest(command_key, key):
            # The lock holds the decision key: with the same key it could sign commands to the
            # door (erase-user, reload). Not refused, so that an upgrade does not stop a door.
            log.error(
                "the command key of %s is its decision key: whoever holds the lock's key can "
                "command this door (erase users, reload); give it its own key (docs/mqtt.md)",
                device_id,
            )
        self._v5 = cfg.protocol == "5"
        # A session the broker keeps while the link is down, so that a command sent during a
        # reconnect is delivered when the link is back instead of dropped. A new process
        # starts a fresh one: a command the last process received but never acknowledged
        # (it crashed) would come back within the start-up skew, its nonce memory gone, and
        # run twice. The id is the device id, unique in a deployment (its topics are).
        self._session_s = session_seconds(cfg)
        self._connected_once = False
        self._drops = QuickDrops(
            cfg, f"a second daemon with device_id {device_id!r}, or a copied config or SD card"
        )
        self._client = build_client(cfg, cfg.client_id or f"voxgate-{device_id}", self._session_s)
        self._client.will_set(self.topics.status, b"offline", qos=1, retain=True)
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        # paho's own lock over its outgoing queue: taking it for our bookkeeping keeps one
        # lock order with paho's callbacks (on_publish runs while paho holds it).
        self._out_lock: threading.RLock = getattr(
            self._client, "_out_message_mutex", threading.RLock()
        )
        self._pending: dict[int, float] = {}  # mid -> expires_at, decisions paho holds
        self._held: list[_HeldDecision] = []  # made while down, oldest first (_out_lock)
        self._challenges: dict[int, float] = {}  # mid -> expires_at, challenges paho may hold
        self._state_lock = threading.Lock()
        self._last_state: str | None = None
        self._last_lockout: bytes | None = None
        self._last_user: bytes | None = None  # the last user granted (retained `user` topic)
        # True while _last_user is a name read back from the broker, not one granted here.
        self.last_user_from_broker = False
        self._subscribing: dict[int, str] = {}  # mid -> topic, until the broker's SUBACK
        # That user was erased: the retained `user` topic is cleared at every connect until
        # the next grant (a clear sent just before a drop would otherwise be lost).
        self._clear_user = False
        self._handlers: dict[str, CommandHandler] = {}
        self._command_clock = command_clock
        self._gate = CommandGate(
            device_id,
            command_key,
            started_at=command_clock(),
            max_bytes=cfg.command_max_bytes,
            max_skew_s=cfg.command_max_skew_s,
            elapsed=elapsed,
            used=UsedCommands(used_commands),
        )
        self._work: queue.Queue[tuple[str, bytes] | None] = queue.Queue(maxsize=16)
        self._worker: threading.Thread | None = None
        self.connected = False
        self.connection_state = "stopped"
        self.on_connection_change: Callable[[bool], None] | None = None
        # Called (network thread) for each refusal a lock reports (metrics).
        self.on_lock_refusal: Callable[[Refusal], None] | None = None
        # Called (network or worker thread) with the code of each command refused (metrics).
        self.on_command_refusal: Callable[[str], None] | None = None
        # Whoever may publish on cmd/# or decision/refused can make these lines without end;
        # unlimited, they flooded the journal, whose own rate limit then dropped real lines.
        self._command_log = LogLimit(
            REFUSAL_LOG_BURST, REFUSAL_LOG_EVERY_S, what="MQTT command refusals", logger=log
        )
        self._report_log = LogLimit(
            REFUSAL_LOG_BURST, REFUSAL_LOG_EVERY_S, what="MQTT lock refusal reports", logger=log
        )
        # Reports that are not about this door's own decisions (unreadable, naming another
        # door, a message that was no decision): their own limit, so that a chatty
        # neighbour or a stream of junk cannot use up the lines of this door's refusals.
        self._stray_report_log = LogLimit(
            REFUSAL_LOG_BURST,
            REFUSAL_LOG_EVERY_S,
            what="MQTT reports not about this door's decisions",
            logger=log,
        )
        self.stats: dict[str, int] = {
            "connects": 0,
            "disconnects": 0,
            "connect_failures": 0,
            "decisions_published": 0,
            "decisions_acked": 0,
            "decisions_expired": 0,
            "decisions_refused": 0,
            "commands_ok": 0,
            "commands_rejected": 0,
            "lock_refusals": 0,
            "reports_unverified": 0,
        }

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Begin connecting in the background; returns at once."""
        if self._worker is not None:
            return
        self.connection_state = "connecting"
        self._worker = threading.Thread(target=self._work_loop, name="mqtt-commands", daemon=True)
        self._worker.start()
        connect_async(self._client, self.cfg, self._session_s, fresh_first=True)
        self._client.loop_start()
        log.info("MQTT: connecting to %s:%d as %s", self.cfg.host, self.cfg.port, self.device_id)

    def stop(self, timeout: float = 2.0) -> None:
        """Publish 'offline', disconnect and stop the threads."""
        if self._worker is None:
            return
        self.connection_state = "stopped"
        if self.connected:
            info = self._client.publish(self.topics.status, b"offline", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout)
        undelivered = self.pending_decisions()
        if undelivered:  # expiring anyway; said, so a missing decision has an explanation
            log.warning(
                "MQTT: stopping with %d decision(s) the broker never acknowledged (held while "
                "it was unreachable); they are in the audit log only",
                undelivered,
            )
        self._client.disconnect()
        self._client.loop_stop()
        self._work.put(None)
        self._worker.join(timeout)
        self._worker = None
        self.connected = False
        self.connection_state = "stopped"

    # -- publishing --------------------------------------------------------------------------

    def publish_state(self, state: str) -> None:
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}")
        with self._state_lock:  # with the publish, so a reconnect's republish never overtakes it
            self._last_state = state
            self._publish_if_connected(
                self.topics.state, state.encode(), qos=STATE_QOS, retain=True
            )

    def publish_challenge(self, challenge: Any) -> None:
        """A challenge from challenge.new_challenge: what to show or say, valid until expiry."""
        text = getattr(challenge, "text", None) or getattr(challenge, "digits", None) or ""
        body: dict[str, Any] = {
            "mode": getattr(challenge, "mode", "digits"),
            "text": text,
            "words": list(getattr(challenge, "words", ())),
            "nonce": getattr(challenge, "nonce", None),
            "issued_at": _ms(getattr(challenge, "issued_at", None)),
            "expires_at": _ms(getattr(challenge, "expires_at", None)),
        }
        if getattr(challenge, "take", None) is not None:
            body["take"] = challenge.take
        ttl = None
        if body["expires_at"] is not None:
            ttl = float(body["expires_at"]) - time.time()
            if ttl <= 0:
                log.warning("MQTT: challenge already expired; not published")
                return
        payload = json.dumps(body, separators=(",", ":")).encode()
        with self._out_lock:  # paho's queue lock: the mid is known before a reconnect looks
            mid = self._publish_if_connected(self.topics.challenge, payload, qos=1, ttl=ttl)
            out = getattr(self._client, "_out_messages", {})
            # Only challenges paho still holds are tracked (acknowledged ones leave its queue).
            self._challenges = {m: e for m, e in self._challenges.items() if m in out}
            if mid is not None and ttl is not None:
                self._challenges[mid] = time.time() + ttl

    def publish_lockout(self, locked: list[dict[str, Any]]) -> None:
        """Who is locked out right now: [{"key": user-or-scope, "failures": n, "until": t}]."""
        locked = [{**e, "until": _ms(e.get("until"))} if "until" in e else e for e in locked]
        payload = json.dumps(
            {"locked": locked, "at": round(time.time(), 3)}, separators=(",", ":"), default=str
        ).encode()
        with self._state_lock:
            self._last_lockout = payload
            self._publish_if_connected(self.topics.lockout, payload, qos=1, retain=True)

    def publish_decision(self, decision: Decision) -> bool:
        """Sign and publish (QoS 1, not retained). False if it expired before it could go."""
        now = time.time()
        if decision.device != self.device_id:
            raise ValueError(f"decision for {decision.device!r} on link {self.device_id!r}")
        if now >= decision.expires_at:
            self._count("decisions_expired")
            log.warning("MQTT: decision seq=%d expired before publishing; dropped", decision.seq)
            return False
        payload = sign(decision, self._key)
        with self._out_lock:  # connected only changes under it: see _send_held
            if self.connected:
                held = not self._publish_decision_now(payload, decision.expires_at, now)
            else:
                # Kept here, not in paho, which re-sends its queue only after on_connect
                # returns, behind a decision made meanwhile; _send_held keeps the order.
                self._drop_expired(now)
                self._held.append(_HeldDecision(decision.seq, payload, decision.expires_at))
                held = True
            self.stats["decisions_published"] += 1
        if held:
            log.warning(
                "MQTT: link down; decision seq=%d held until %.1f s from now",
                decision.seq,
                decision.expires_at - now,
            )
        summary = {
            "event_type": decision.outcome,
            "user": decision.user,
            "reasons": list(decision.reasons),
            "seq": decision.seq,
            "issued_at": round(decision.issued_at, 3),
        }
        self._publish_if_connected(
            self.topics.event, json.dumps(summary, separators=(",", ":")).encode(), qos=EVENT_QOS
        )
        if decision.user is not None and decision.outcome == "granted":
            with self._state_lock:  # remembered: a grant made while offline shows on reconnect
                self._last_user = decision.user.encode()
                self.last_user_from_broker = False
                self._clear_user = False
                self._publish_if_connected(self.topics.user, self._last_user, USER_QOS, retain=True)
        return True

    @property
    def last_user(self) -> str | None:
        """The name the retained `user` topic holds (granted here, or found retained on the
        broker at connect), or None."""
        with self._state_lock:
            return None if self._last_user is None else self._last_user.decode("utf-8", "replace")

    def forget_user(self, name: str) -> bool:
        """`name` was erased: if the retained `user` topic holds it, delete that retained
        message (an empty retained publish; Home Assistant's last-user sensor goes empty).
        True if it held the name."""
        with self._state_lock:
            last = self._last_user
            if last is None or fold(last.decode("utf-8", "replace")) != fold(name):
                return False
            self._last_user = None
            self.last_user_from_broker = False
            self._clear_user = True
            self._publish_if_connected(self.topics.user, b"", USER_QOS, retain=True)
        log.info("MQTT: retained user topic cleared (that user was erased)")
        return True

    def pending_decisions(self) -> int:
        """Decisions not yet acknowledged by the broker (held while down, or in flight)."""
        with self._out_lock:
            return len(self._pending) + len(self._held)

    def _publish_decision_now(self, payload: bytes, expires_at: float, now: float) -> bool:
        """Hand a signed decision to paho, tracked until acknowledged; False if paho has no
        connection (it then holds it: _send_held takes it over). Call with _out_lock held."""
        props = _expiry_props(expires_at - now) if self._v5 else None
        info = self._client.publish(
            self.topics.decision, payload, qos=1, retain=False, properties=props
        )
        self._pending[info.mid] = expires_at
        return info.rc == paho.MQTT_ERR_SUCCESS

    def _publish_if_connected(
        self, topic: str, payload: bytes, qos: int, retain: bool = False, ttl: float | None = None
    ) -> int | None:
        """Publish unless disconnected; returns paho's message id, or None if not sent."""
        # Non-decision messages are not worth holding while disconnected: state and lockout
        # are re-published on reconnect, challenges and events are only useful right now.
        if not self.connected:
            log.debug("MQTT: not connected; %s not published", topic)
            return None
        props = _expiry_props(ttl) if (ttl is not None and self._v5) else None
        return int(
            self._client.publish(topic, payload, qos=qos, retain=retain, properties=props).mid
        )

    def _expire_held(self, held: dict[int, float], now: float) -> list[tuple[int, float]]:
        """Messages with a deadline (mid -> expires_at) that paho may still hold: forget those
        it no longer holds, take the expired ones out of its queue (returned), and shorten
        the MQTT 5 expiry of the rest to the time they have left. Call with _out_lock held."""
        out = getattr(self._client, "_out_messages", None)
        if out is None:  # not paho as we know it: nothing can be held
            held.clear()
            return []
        expired = []
        for mid, expires_at in list(held.items()):
            msg = out.get(mid)
            if msg is None:
                held.pop(mid, None)
            elif now >= expires_at:
                out.pop(mid, None)
                held.pop(mid, None)
                expired.append((mid, expires_at))
            elif msg.properties is not None:
                msg.properties.MessageExpiryInterval = max(1, math.ceil(expires_at - now))
        return expired

    def _drop_superseded(self, now: float) -> None:
        """Remove held state, lockout and user messages and expired challenges from paho's
        queue.

        A message published into a connection that was dead but not yet noticed is held and
        re-sent when on_connect returns, i.e. after the republish of the current state: the
        old state would stay retained and an expired challenge reach the display. The
        republish carries the current state, lockout and user; a challenge still valid goes
        out with its remaining lifetime, like a decision.
        """
        out = getattr(self._client, "_out_messages", None)
        if out is None:
            return
        t = self.topics
        with self._out_lock:
            for mid, msg in list(out.items()):
                untimed_challenge = msg.topic == t.challenge and mid not in self._challenges
                superseded = msg.topic in (t.state, t.lockout, t.user) or untimed_challenge
                if superseded and mid not in self._pending:
                    out.pop(mid, None)
            self._expire_held(self._challenges, now)

    def _drop_expired(self, now: float) -> None:
        """Remove expired decisions from paho's outgoing queue and from the link's own;
        shorten the expiry of those left in paho's."""
        with self._out_lock:
            expired = [(f"mid {mid}", at) for mid, at in self._expire_held(self._pending, now)]
            expired += [(f"seq={h.seq}", h.expires_at) for h in self._held if now >= h.expires_at]
            self._held = [h for h in self._held if now < h.expires_at]
            for which, expires_at in expired:
                self.stats["decisions_expired"] += 1
                log.warning(
                    "MQTT: decision (%s) expired %.1f s ago while the broker was "
                    "unreachable; dropped, not delivered late",
                    which,
                    now - expires_at,
                )

    def _send_held(self, now: float) -> None:
        """Send every decision held over the outage, oldest first. Call from _on_connect with
        _out_lock held, before setting connected.

        paho re-sends the messages it holds only after on_connect returns, while a publish
        made once its socket is open goes out at once: a decision made during the reconnect
        reached the broker before the older held ones, and the lock then refused those as
        replayed. So nothing is left for paho to re-send: the decisions it still holds
        (unacknowledged when the link dropped, made before any in the link's queue) are
        taken out of its queue and published again here (a copy the broker did get is a
        QoS 1 duplicate, which the lock's seq check drops), then the link's queue. A decision
        made meanwhile is already in that queue, or waits for _out_lock and goes after them.
        """
        self._drop_expired(now)
        out = getattr(self._client, "_out_messages", {})
        backlog = [
            (bytes(out.pop(mid).payload), self._pending.pop(mid))
            for mid in list(out)  # paho's queue is in publication order
            if mid in self._pending
        ]
        backlog += [(h.payload, h.expires_at) for h in self._held]
        self._held = []
        for payload, expires_at in backlog:
            self._publish_decision_now(payload, expires_at, now)

    # -- commands ----------------------------------------------------------------------------

    def on_command(self, name: str, handler: CommandHandler) -> None:
        """handler(args) -> result dict, run on the command worker thread.

        Raise ValueError, or return {"ok": False, "error": why}, for a request that cannot be
        done (the reason goes into the reply); any other exception is logged and answered
        with 'internal-error'. The args were already checked by CommandGate.
        """
        self._handlers[name] = handler

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if msg.topic == self.topics.user:
            self._retained_user(msg)
            return
        if msg.topic == self.topics.decision_refused:
            if msg.retain:
                # A lock never retains its reports: a retained one is old news the broker
                # hands over at every connect, where it read as a new refusal each time.
                if self._report_log.allow():
                    log.warning(
                        "MQTT: retained refusal report on %s ignored (a lock sends them "
                        "without retain); cleared from the broker",
                        msg.topic,
                    )
                if msg.payload:
                    client.publish(msg.topic, b"", qos=1, retain=True)
            elif msg.payload:  # empty: the clearing above, forwarded back to us
                self._lock_refused(bytes(msg.payload))
            return
        name = self.topics.command_name(msg.topic)
        if name is None:
            return
        if msg.retain:
            # A command is never retained on purpose; a retained one would come back on every
            # connect (and within the start-up skew after a restart, run once more).
            self._command_refused(
                "retained",
                "MQTT: retained command %r ignored (send commands without retain); "
                "cleared from the broker",
                name[:64],
            )
            if msg.payload:
                # Left there, it keeps its arguments (an erase-user names the person) on the
                # broker for anyone allowed to read the door's tree, and comes back each time.
                client.publish(msg.topic, b"", qos=1, retain=True)
            return
        size, limit = len(msg.payload), self.cfg.command_max_bytes
        if size > limit:
            # Refused here, not queued: 16 waiting payloads of up to 256 MB each (mosquitto's
            # default limit) could take the door's memory while a command runs.
            self._command_refused(
                "oversized",
                "MQTT: command %r rejected: oversized: %d bytes > %d",
                name[:64],
                size,
                limit,
            )
            self._reply(name, None, ok=False, error="oversized", detail=f"{size} bytes > {limit}")
            return
        try:
            self._work.put_nowait((name, bytes(msg.payload)))
        except queue.Full:
            self._command_refused("busy", "MQTT: command queue full; %r refused", name[:64])
            self._reply(name, None, ok=False, error="busy", detail="too many pending commands")

    def _lock_refused(self, payload: bytes) -> None:
        """A lock did not act on one of this door's decisions: the door logged the outcome,
        the person is still outside. Said here, where the door's administrator looks."""
        try:
            r = parse_refusal(payload, self._key)
        except UnsignedReport as exc:
            # Not counted, and a WARNING within the stray reports' limit: unsigned, anyone
            # the broker lets write the topic made the door log an ERROR with the wrong
            # advice ("give both the same key"), or used up the lines of real refusals.
            self._count("reports_unverified")
            if self._stray_report_log.allow():
                claims = f" (it claims {exc.claimed!r})" if exc.claimed else ""
                log.warning(
                    "MQTT: refusal report on %s ignored, not counted as a refusal: %s%s, so "
                    "not from a lock holding this door's decision key. Either %s, or someone "
                    "else on the broker sent it (check the broker ACL)",
                    self.topics.decision_refused,
                    exc,
                    claims,
                    _OTHER_KEY_FROM if exc.other_key else _UNSIGNED_FROM,
                )
            return
        except RefusalError as exc:
            if self._stray_report_log.allow():
                topic = self.topics.decision_refused
                log.warning("MQTT: unreadable report on %s ignored: %s", topic, exc)
            return
        if r.device != self.device_id:
            # A lock reports on the refused door's own topic, naming that door: another
            # name here is not this door's refusal (a lock of another make sending all its
            # doors' reports to one topic, a wrong prefix), and was logged and counted as one.
            if self._stray_report_log.allow():
                log.warning(
                    "MQTT: refusal report on %s names device %r, not this door (%s): ignored; "
                    "check the lock's configuration",
                    self.topics.decision_refused,
                    r.device,
                    self.device_id,
                )
            return
        if r.reason == "not-a-decision":
            # Not one of this door's decisions (it sent no such bytes): nobody is outside.
            if self._stray_report_log.allow():
                log.warning(
                    "MQTT: the lock refused a message on this door's decision topic that is "
                    "not a voxgate decision: %s; %s",
                    r.detail or "no detail",
                    ADVICE[r.reason],
                )
            return
        self._count("lock_refusals")
        if self._report_log.allow():
            what = "a decision" if r.seq is None else f"{r.outcome or 'decision'} seq={r.seq}"
            log.error(
                "MQTT: the lock REFUSED %s: %s (%s); %s",
                what,
                r.reason,
                r.detail or "no detail",
                ADVICE.get(r.reason, "see the lock's log"),
            )
        cb = self.on_lock_refusal
        if cb is not None:
            try:
                cb(r)
            except Exception:
                log.exception("MQTT: lock-refusal callback failed")

    def _retained_user(self, msg: paho.MQTTMessage) -> None:
        """The `user` topic as the broker keeps it, read at connect: after a restart the name
        a previous run left there is known again, so erasing that user clears it."""
        if not (msg.retain and msg.payload):
            return  # our own publications, or nothing retained
        with self._state_lock:
            if self._last_user is None and not self._clear_user:
                self._last_user = bytes(msg.payload[:256])
                self.last_user_from_broker = True

    def _work_loop(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            try:
                self._run_command(*item)
            except Exception:  # the worker must survive anything a command does
                log.exception("MQTT: command worker error")

    def _run_command(self, name: str, payload: bytes) -> None:
        try:
            cmd = self._gate.check(name, payload, self._command_clock())
        except CommandError as exc:
            self._command_refused(exc.code, "MQTT: command %r rejected: %s", name[:64], exc)
            self._reply(name, exc.nonce, ok=False, error=exc.code, detail=exc.detail)
            return
        handler = self._handlers.get(name)
        if handler is None:
            self._count("commands_rejected")
            log.warning("MQTT: command %r has no handler in this daemon", name)
            self._reply(name, cmd.nonce, ok=False, error="unsupported", detail=None)
            return
        try:
            result = handler(dict(cmd.args))
        except ValueError as exc:
            self._count("commands_rejected")
            log.warning("MQTT: command %s failed: %s", name, exc)
            self._reply(name, cmd.nonce, ok=False, error="failed", detail=str(exc))
            return
        except Exception:
            self._count("commands_rejected")
            log.exception("MQTT: command %s raised", name)
            self._reply(name, cmd.nonce, ok=False, error="internal-error", detail=None)
            return
        result = result if isinstance(result, dict) else {}
        if result.get("ok") is False:
            # Handlers may answer {"ok": False, "error": "why"} instead of raising ValueError.
            self._count("commands_rejected")
            why = str(result.get("error") or "refused")
            log.warning("MQTT: command %s refused by the daemon: %s", name, why)
            self._reply(name, cmd.nonce, ok=False, error="failed", detail=why)
            return
        self._count("commands_ok")
        log.info("MQTT: command %s done (nonce %s)", name, cmd.nonce)
        self._reply(name, cmd.nonce, ok=True, result=result)

    def _reply(
        self,
        name: str,
        nonce: str | None,
        *,
        ok: bool,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        detail: str | None = None,
    ) -> None:
        payload = make_reply(
            self._key,
            self.device_id,
            name,
            nonce=nonce,
            ok=ok,
            now=time.time(),
            result=result,
            error=error,
            detail=detail,
        )
        topic = self.topics.command_result(name)
        if len(topic.encode()) > 65535:
            # A command topic near the MQTT limit leaves no room for '/result': paho raised
            # ValueError (a traceback in the worker). Unknown commands only: ours are short.
            if self._command_log.allow():
                log.warning(
                    "MQTT: no reply to command %r: its reply topic would be too long", name[:64]
                )
            return
        self._publish_if_connected(topic, payload, qos=1)

    # -- paho callbacks (network thread) -----------------------------------------------------

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: Any,
        reason_code: Any,
        properties: Any,
    ) -> None:
        if reason_code.is_failure:
            self._count("connect_failures")
            self.connection_state = f"refused: {reason_code}"
            log.error("MQTT: broker refused the connection: %s (retrying)", reason_code)
            if not self._connected_once and hasattr(client, "_mqttv5_first_connect"):
                # paho counts a refused CONNACK as the first connect and would resume the last
                # process's session on the retry: keep the next attempt a clean start.
                client._mqttv5_first_connect = True
            return
        self._connected_once = True
        self._drops.connected()
        # Runs before paho re-sends its queue, so stale messages never leave.
        now = time.time()
        with self._out_lock:
            self._drop_superseded(now)
            self._send_held(now)
            self.connected = True
        self.connection_state = "connected"
        self._count("connects")
        log.info("MQTT: connected to %s:%d", self.cfg.host, self.cfg.port)
        t = self.topics
        # Subscribe first: the broker handles a client's packets in order, so whoever sees
        # 'online' and sends a command at once finds the subscription in place.
        self._subscribing.clear()  # SUBACKs lost with an earlier connection never come
        self._subscribe(client, t.command_filter)
        self._subscribe(client, t.user)  # what a previous run left retained (forget_user)
        self._subscribe(client, t.decision_refused)  # what the lock did not act on
        client.publish(t.status, b"online", qos=1, retain=True)
        if self.cfg.discovery_prefix is not None:
            for topic, payload in discovery.messages(t, __version__):
                client.publish(topic, payload, qos=1, retain=True)
        with self._state_lock:
            if self._last_state is not None:
                client.publish(t.state, self._last_state.encode(), qos=STATE_QOS, retain=True)
            if self._last_lockout is not None:
                client.publish(t.lockout, self._last_lockout, qos=1, retain=True)
            if self._last_user is not None:
                client.publish(t.user, self._last_user, qos=USER_QOS, retain=True)
            elif self._clear_user:
                client.publish(t.user, b"", qos=USER_QOS, retain=True)
        self._notify(True)

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self._count("connect_failures")
        self.connection_state = "unreachable"
        log.warning(
            "MQTT: cannot connect to %s:%d (%s); retrying (back-off up to %g s)",
            self.cfg.host,
            self.cfg.port,
            connect_error(),
            self.cfg.reconnect_max_s,
        )

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: Any,
        reason_code: Any,
        properties: Any,
    ) -> None:
        with self._out_lock:  # from now on decisions wait in _held (see _send_held)
            was = self.connected
            self.connected = False
        if self.connection_state == "stopped":
            log.info("MQTT: disconnected")
            return
        if was:
            self.connection_state = "disconnected"
            self._count("disconnects")
            log.warning("MQTT: connection lost (%s); reconnecting", reason_code)
            self._drops.dropped(client)
            self._notify(False)
        elif not self.connection_state.startswith("refused"):
            # Closed before any CONNACK: typically the broker rejected our TLS certificate.
            self._count("connect_failures")
            self.connection_state = "unreachable"
            log.warning(
                "MQTT: %s:%d closed the connection before accepting it (%s); check TLS "
                "settings; retrying",
                self.cfg.host,
                self.cfg.port,
                reason_code,
            )

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason_code: Any, properties: Any
    ) -> None:
        # paho holds _out_message_mutex here, so _pending is safe to touch.
        if self._pending.pop(mid, None) is None:
            if getattr(reason_code, "is_failure", False):
                log.warning(
                    "MQTT: broker refused a publish (mid %d): %s; check the ACL", mid, reason_code
                )
            return
        if getattr(reason_code, "is_failure", False):
            self.stats["decisions_refused"] += 1
            log.error("MQTT: broker refused a decision (mid %d): %s", mid, reason_code)
        else:
            self.stats["decisions_acked"] += 1

    def _subscribe(self, client: paho.Client, topic: str) -> None:
        _, mid = client.subscribe(topic, qos=1)
        # Called from paho's network thread, which is also the one that reads the SUBACK.
        if mid is not None:
            self._subscribing[mid] = topic

    def _lost_without(self, topic: str) -> str:
        """What the door misses while it cannot read `topic`."""
        t = self.topics
        if topic == t.command_filter:
            return "MQTT commands (docs/mqtt.md) will not arrive"
        if topic == t.user:
            return (
                "the last user name a previous run left retained there is not read, so "
                "erasing that user cannot clear it"
            )
        if topic == t.decision_refused:
            return (
                "the lock's refusal reports will not arrive: decisions the lock did not act "
                "on go unlogged and voxgate_lock_refusals_total stays 0"
            )
        return "its messages will not arrive"

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any
    ) -> None:
        topic = self._subscribing.pop(mid, None)
        for rc in reason_codes:
            if getattr(rc, "is_failure", False):
                log.error(
                    "MQTT: the broker refused the subscription to %s (%s): %s; let user %s "
                    "subscribe to (read) it in the broker's ACL",
                    topic or f"(unknown topic, mid {mid})",
                    rc,
                    self._lost_without(topic) if topic else "its messages will not arrive",
                    self.cfg.username or "(anonymous)",
                )

    def _notify(self, up: bool) -> None:
        cb = self.on_connection_change
        if cb is not None:
            try:
                cb(up)
            except Exception:
                log.exception("MQTT: connection-change callback failed")

    def _command_refused(self, code: str, msg: str, *args: object) -> None:
        """A command refused before a handler ran: counted every time (stats, the callback
        for the metrics), logged within the rate limit (anyone allowed to publish on cmd/#
        can send these without end)."""
        self._count("commands_rejected")
        if self._command_log.allow():
            log.warning(msg, *args)
        cb = self.on_command_refusal
        if cb is not None:
            try:
                cb(code)
            except Exception:
                log.exception("MQTT: command-refusal callback failed")

    def _count(self, name: str) -> None:
        with self._out_lock:
            self.stats[name] += 1
