"""The sync agent of one door: publishes local changes, applies the fleet's."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from voxgate.config.fleet import ALL_USERS, FleetConfig
from voxgate.fleet.errors import FleetError, MessageError
from voxgate.fleet.keys import FleetKeys
from voxgate.fleet.state import SyncState, state_path
from voxgate.fleet.wire import MAX_MESSAGE_BYTES, Codec, Order, Update, newer
from voxgate.names import fold
from voxgate.voiceprints import (
    BadName,
    StoreError,
    VoiceprintStore,
    model_mismatch,
)

log = logging.getLogger("voxgate.fleet")  # one logger name for the whole package


class _Withheld(Exception):
    """An erase or revoke the store could not write: the user is withheld in memory."""

    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


# --- the agent -------------------------------------------------------------------------------


def _shown(text: str, limit: int = 200) -> str:
    """A topic (or a level of it) from the broker for a log or audit line: a level can be
    64 kB, and each refused message wrote it whole (the audit log is append-only and
    fsynced); control characters, which some brokers pass, are shown escaped."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return shown if len(text) <= limit else f"{shown}... ({len(text)} characters)"


def topic_root(prefix: str, site: str) -> str:
    # "_fleet" cannot be a device_id (those start with a letter or digit), so the fleet tree
    # never collides with a device's own topics.
    return f"{prefix}/_fleet/{site}"


def _who(upd: Update) -> str:
    """The user a message is about, for log lines: a tombstone may only have the tag."""
    return upd.name if upd.name is not None else f"user tag {upd.tag}"


def allows(access: dict[str, list[str]], group: str, name: str) -> bool:
    users = access.get(group, [])
    # Compared as the store compares names (names.fold): 'Alice' opens the 'alice' voiceprint.
    return ALL_USERS in users or fold(name) in {fold(u) for u in users}


class FleetSync:
    """The sync agent of one door: publishes local changes, applies the fleet's.

    Thread-safe: publish_* may be called from API threads while MQTT callbacks run on
    paho's loop thread.
    """

    def __init__(
        self,
        cfg: FleetConfig,
        mqtt_cfg: Any,
        device_id: str,
        store: VoiceprintStore,
        state_path: Path,
        *,
        keys: FleetKeys | None = None,
        model_id: str | None = None,
        model_sha256: str | None = None,
        clock: Callable[[], float] = time.time,
        client_id: str | None = None,
        audit_event: Callable[..., Any] | None = None,
        withheld_retry_s: float = 10.0,
        state_in_memory_when_full: bool = False,
    ) -> None:
        self.cfg = cfg
        self.mqtt_cfg = mqtt_cfg
        self.device_id = device_id
        self.store = store
        self.model_id = model_id
        self.model_sha256 = model_sha256
        self.clock = clock
        self.keys = keys or FleetKeys.load(cfg)
        self.codec = Codec(self.keys, cfg.site, device_id)
        self.state = SyncState(state_path, memory_when_full=state_in_memory_when_full)
        self.root = topic_root(mqtt_cfg.topic_prefix, cfg.site)
        self._apply_lock = threading.Lock()
        self._inflight: dict[int, tuple[str, Order]] = {}
        self._acked: set[int] = set()
        self._refused: set[int] = set()  # failed PUBACKs that arrived before _send recorded them
        self._sent: dict[str, Order] = {}  # topic -> what this connection published there
        self._inflight_lock = threading.Lock()
        # Held while reading the outbox and publishing from it, and while queueing and
        # publishing a local change: a topic's newer version must never go out before an
        # older one read a moment earlier (retained, so the last to arrive is what stays).
        self._send_lock = threading.RLock()
        self.connected = threading.Event()
        self.stats = {
            "applied": 0,
            "ignored_old": 0,
            "refused": 0,
            "not_allowed": 0,
            "sent": 0,
            "refused_by_broker": 0,
            "store_failed": 0,
            "restored": 0,
            "erase_unverified": 0,
            "revoke_unverified": 0,
            "withheld": 0,
        }
        # Erases and revokes the store could not write (a full disk), by user tag: the store
        # withholds the user in memory at once, and they are written again every
        # `withheld_retry_s` and before each message, until the store takes them.
        self._withheld: dict[str, Update] = {}
        # Users the config no longer allows whose erase the store could not write (tag: name).
        self._not_allowed: dict[str, str] = {}
        self.withheld_retry_s = withheld_retry_s
        self._stopping = threading.Event()
        self._retrier: threading.Thread | None = None
        # (kind, tag, group, order) of the unverified tombstones already named at ERROR and in
        # the audit log by this process: their retained copies come back at each connect.
        self._unverified_told: set[tuple[str, str, str, Order]] = set()
        self._client: Any = None
        # Why the last connect failed (the exception paho caught, or the broker's refusal),
        # None once connected: the commands' short sessions say what went wrong.
        self._connect_failure: BaseException | str | None = None
        self._ever_connected = False
        # Its own MQTT session, apart from the daemon's MqttLink (whose id it must not reuse).
        self.client_id = client_id or f"voxgate-{device_id}-fleet"
        # e.g. the daemon's AuditLog.append: every voiceprint change the fleet makes is audited.
        self.audit_event = audit_event
        # Called with the name after each erase this agent makes (the daemon drops the
        # person's lockout entry and retained name too).
        self.on_erased: Callable[[str], None] | None = None

    # -- which users and groups

    def allowed_here(self, name: str) -> bool:
        """May this door hold `name`'s voiceprint? (its groups' access, then allowed_users)"""
        if self.cfg.allowed_users is not None:
            allowed = {fold(u) for u in self.cfg.allowed_users}
            if fold(name) not in allowed:
                return False
        return any(allows(self.cfg.access, g, name) for g in self.cfg.groups)

    def groups_for(self, name: str) -> list[str]:
        """Every group whose doors let `name` in: where an enrollment is sent."""
        return [g for g in self.cfg.access if allows(self.cfg.access, g, name)]

    def topic(self, group: str, name: str) -> str:
        return f"{self.root}/{group}/{self.codec.user_tag(name)}"

    # -- connection

    def broker_client(self) -> Any:
        """A client with this agent's broker credentials and TLS files read, not connected
        (raises MqttSetupError, SecretError): what start() connects."""
        from voxgate.mqtt.client import build_client

        return build_client(self.mqtt_cfg, self.client_id)

    def start(self, client: Any = None) -> None:
        """Connect `client` (by default a new broker_client()) in the background (never
        raises for an unreachable broker)."""
        from voxgate.mqtt.client import connect_async

        self.enforce_access()
        client = client or self.broker_client()
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.max_inflight_messages_set(100)
        self._client = client
        # A voiceprint message is at most MAX_MESSAGE_BYTES; its topic up to 64 kB.
        connect_async(client, self.mqtt_cfg, max_packet=MAX_MESSAGE_BYTES + 128 * 1024)
        client.loop_start()
        self._stopping.clear()
        self._retrier = threading.Thread(
            target=self._retry_loop, name="fleet-withheld", daemon=True
        )
        self._retrier.start()
        log.info(
            "fleet sync: site %s, groups %s, broker %s:%d",
            self.cfg.site,
            ",".join(self.cfg.groups) or "(none)",
            self.mqtt_cfg.host,
            self.mqtt_cfg.port,
        )

    @classmethod
    def from_config(
        cls, cfg: Any, store: VoiceprintStore, model_id: str | None = None, **kwargs: Any
    ) -> FleetSync:
        """The agent for a whole device config (raises FleetError for missing keys). An erase
        it applies also drops the rest of the user from disk (lockout entry, replay
        fingerprints, kept recordings); the daemon replaces the hook with its own, which
        also clears what it holds in memory. Without `audit_event`, what it applies goes to
        the config's audit log: the command-line agents apply the fleet's retained messages
        and mark them seen in the shared sync state, so the daemon's agent never audits them."""
        if kwargs.get("audit_event") is None:
            from voxgate.audit import open_log
            from voxgate.config.secrets import SecretError

            try:
                kwargs["audit_event"] = open_log(cfg).append
            except (SecretError, OSError) as exc:  # the change itself still applies
                log.error("fleet sync: cannot open the audit log: %s; changes not audited", exc)
        agent = cls(
            cfg.fleet, cfg.mqtt, cfg.device_id, store, state_path(cfg), model_id=model_id, **kwargs
        )

        def forget(name: str) -> None:
            from voxgate.erasure import forget_on_disk

            forget_on_disk(cfg, name)

        agent.on_erased = forget
        return agent

    def wait_sent(self, timeout: float) -> bool:
        """Wait until the broker has acknowledged every queued update."""
        deadline = time.monotonic() + timeout
        while self.state.outbox():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def why_unsent(self, waited: float) -> str:
        """Why the outbox is still not empty after waiting `waited` s, and what to do: for
        the commands that open a short session (`voxgate enroll`, `users erase`, `fleet`).
        A refused connection was reported as "not reachable within 5 s", which sent people
        to the network when mosquitto was simply not running."""
        import socket
        import ssl

        where = f"{self.mqtt_cfg.host}:{self.mqtt_cfg.port}"
        err = self._connect_failure
        if isinstance(err, str):  # a CONNACK with a failure code
            return (
                f"the broker at {where} refused the connection ({err}): check mqtt.username "
                "and the MQTT password (docs/mqtt.md)"
            )
        if isinstance(err, ConnectionRefusedError):
            return (
                f"connection refused by {where}: is mosquitto running there? (`systemctl "
                "status mosquitto` on the broker's host; mqtt.host and mqtt.port say where "
                "this door looks)"
            )
        if isinstance(err, socket.gaierror):
            return f"cannot resolve the broker's host name {self.mqtt_cfg.host!r}: check mqtt.host"
        if isinstance(err, ssl.SSLError):
            return f"TLS with the broker at {where} failed: {err}; check tls.ca_file and the host"
        if isinstance(err, OSError) and not isinstance(err, TimeoutError):
            return f"cannot reach the broker at {where}: {err.strerror or err}"
        if self._ever_connected:
            return (
                f"connected to the broker at {where}, but it did not acknowledge the update "
                f"within {waited:g} s (a slow link, or an ACL that denies the fleet topics)"
            )
        return (
            f"no answer from the broker at {where} within {waited:g} s: check the network and "
            "firewall between this door and the broker, and mqtt.host, mqtt.port and mqtt.tls "
            "(a TLS port spoken to in plain MQTT, or the other way round, stays silent)"
        )

    def stop(self) -> None:
        self._stopping.set()
        if self._retrier is not None:
            self._retrier.join(timeout=5)
            self._retrier = None
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
        self.connected.clear()
        self.state.close()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            log.error("fleet sync: broker refused the connection: %s", rc)
            self._connect_failure = str(rc)
            return
        self._connect_failure, self._ever_connected = None, True
        subs = [(f"{self.root}/{g}/+", 1) for g in self.cfg.groups]
        if subs:
            client.subscribe(subs)
        with self._send_lock:
            # paho would re-send what the broker had not acknowledged after this returns, i.e.
            # after the outbox, and a voiceprint erased meanwhile would come back as the
            # retained message. The outbox holds the newest version of every unacknowledged
            # topic, so paho's copies are dropped and the outbox alone is sent.
            client.drop_out_messages()
            with self._inflight_lock:
                self._inflight.clear()
                self._acked.clear()
                self._refused.clear()
            self._sent.clear()
            self.connected.set()
            pending = self.state.outbox()
            if pending:
                log.info("fleet sync: connected; sending %d queued update(s)", len(pending))
            for topic, payload, order in pending:
                self._send(topic, payload, order)

    def flush_outbox(self) -> int:
        """Send what waits in the outbox and is not already on its way; returns how many.

        Another process sharing the state file (`voxgate enroll`, `voxgate users erase` while
        the broker was unreachable) leaves its changes there; the daemon calls this now and
        then so they go out without waiting for a reconnect. A duplicate is harmless: the
        message is retained and versioned, and receivers skip a version they have.
        """
        if self._client is None or not self.connected.is_set():
            return 0
        with self._send_lock:
            with self._inflight_lock:
                busy = set(self._inflight.values())
            todo = [(t, p, o) for t, p, o in self.state.outbox() if (t, o) not in busy]
            for topic, payload, order in todo:
                self._send(topic, payload, order)
        return len(todo)

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        # paho calls this inside its `except OSError`, without passing the exception.
        import sys

        self._connect_failure = sys.exc_info()[1]
        log.debug("fleet sync: cannot connect: %s", self._connect_failure)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connected.clear()
        if rc.is_failure:
            log.warning("fleet sync: lost the broker (%s); retrying", rc)

    def _send(self, topic: str, payload: bytes, order: Order) -> None:
        client = self._client
        if client is None or not self.connected.is_set():
            return  # stays in the outbox until the next connect
        info = client.publish(topic, payload, qos=1, retain=True)
        self._sent[topic] = order
        # The PUBACK can beat us here (paho's loop thread): then on_publish left the mid in
        # _acked. No lock is held around publish() itself, which takes paho's own locks.
        with self._inflight_lock:
            done = info.mid in self._acked
            if done:
                self._acked.discard(info.mid)
            elif info.mid in self._refused:
                self._refused.discard(info.mid)  # stays in the outbox
            else:
                self._inflight[info.mid] = (topic, order)
        if done:
            self._delivered(topic, order)

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        if getattr(rc, "is_failure", False):
            # An MQTT 5 broker answers a publish its ACL forbids with a failed PUBACK: the
            # update did not go out, so it stays in the outbox (flush_outbox tries again).
            with self._inflight_lock:
                item = self._inflight.pop(mid, None)
                if item is None:
                    self._refused.add(mid)  # beat _send: it must not wait for this one
            self.stats["refused_by_broker"] += 1
            log.error(
                "fleet sync: the broker refused an update on %s (%s); kept in the outbox; "
                "check the broker ACL for this door",
                item[0] if item else f"mid {mid}",
                rc,
            )
            return
        with self._inflight_lock:
            item = self._inflight.pop(mid, None)
            if item is None:
                self._acked.add(mid)
        if item is not None:
            self._delivered(*item)

    def _delivered(self, topic: str, order: Order) -> None:
        self.state.sent(topic, order)
        self.stats["sent"] += 1

    # -- publishing local changes

    def _next_version(self, tag: str) -> int:
        known = self.state.user(tag)
        now_ms = int(self.clock() * 1000)
        return max(now_ms, known[0] + 1 if known else 0)

    def _publish(self, kind: str, name: str, groups: list[str], **body: Any) -> Order:
        tag = self.codec.user_tag(name)
        tiebreak = self.codec.tiebreak(kind, self.device_id, self.codec.body(kind, name, **body))
        with self._send_lock:
            order = (self._next_version(tag), tiebreak)
            for group in groups:
                payload = self.codec.encode(kind, group, name, order[0], now=self.clock(), **body)
                topic = f"{self.root}/{group}/{tag}"
                self.state.queue(topic, payload, order)
                self._send(topic, payload, order)
        return order

    def publish_enrollment(self, name: str) -> list[str]:
        """Send the stored voiceprint of `name` to every group allowed for it."""
        vp = self.store.get(name)
        if vp is None:
            raise FleetError(f"no voiceprint for '{name}' in the local store")
        groups = self.groups_for(vp.name)
        if not groups:
            log.warning("fleet sync: no group in fleet.access allows %s; kept on this door", name)
            return []
        with self._apply_lock:
            order = self._publish(
                "voiceprint",
                vp.name,
                groups,
                model_id=vp.model_id,
                model_sha256=vp.model_sha256,
                embeddings=vp.embeddings,
                meta={**vp.meta, "enrolled_at": vp.updated_at, "enrolled_by": self.device_id},
            )
            tag = self.codec.user_tag(vp.name)
            self.state.set_user(tag, order, "voiceprint", held=True)
            for g in groups:
                self.state.set_grant(tag, g, order, "voiceprint")
        log.info("fleet sync: %s (version %d) sent to %s", vp.name, order[0], ",".join(groups))
        return groups

    def publish_erase(self, name: str) -> None:
        """Tell every group (every group, since access may have changed) to erase `name`."""
        with self._apply_lock:
            order = self._publish("erase", name, list(self.cfg.access))
            self.state.set_user(self.codec.user_tag(name), order, "erase", held=False)
        log.info("fleet sync: erase of %s (version %d) sent to every group", name, order[0])

    def publish_revoke(self, name: str, groups: list[str]) -> None:
        """Withdraw `name` from some groups; doors left with no granting group erase it."""
        unknown = [g for g in groups if g not in self.cfg.access]
        if unknown:
            raise FleetError(f"unknown groups {unknown} (not in fleet.access)")
        with self._apply_lock:
            order = self._publish("revoke", name, groups)
            tag = self.codec.user_tag(name)
            for g in groups:
                self.state.set_grant(tag, g, order, "revoke")
        log.info("fleet sync: revoke of %s from %s (version %d)", name, ",".join(groups), order[0])

    def on_local_change(self, kind: str, name: str) -> None:
        """Hook for voxgate.api.UserAdmin(on_change=...): 'enrolled' or 'erased'."""
        if kind == "enrolled":
            self.publish_enrollment(name)
        elif kind == "erased":
            self.publish_erase(name)

    # -- applying the fleet's changes

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            self.handle(msg.topic, bytes(msg.payload))
        except Exception:
            # Whatever a message does, the agent keeps running.
            log.exception("fleet sync: failed to handle a message on %s", msg.topic)

    def handle(self, topic: str, payload: bytes) -> str:
        """Apply one message; returns what happened (for logs and tests)."""
        if not payload:
            return "empty"  # a cleared retained message
        parts = topic.split("/")
        if topic.rsplit("/", 2)[0] != self.root or len(parts) < 2:
            return "foreign"
        group, tag = parts[-2], parts[-1]
        if group not in self.cfg.groups:
            log.warning(
                "fleet sync: message for group %s, which this door is not in", _shown(group)
            )
            self.stats["not_allowed"] += 1
            return "not_my_group"
        try:
            upd = self.codec.decode(group, tag, payload, self.clock())
        except MessageError as exc:
            log.warning("fleet sync: refused message on %s: %s", _shown(topic), exc)
            self.stats["refused"] += 1
            self._audit("fleet_refused", topic=_shown(topic), reason=str(exc))
            return "refused"
        self._restore_newer(topic, payload, upd.order)
        self.retry_withheld()  # an older erase waiting for room goes first
        try:
            with self._apply_lock:
                outcome = self._apply(upd)
        except _Withheld as held:
            return held.outcome
        except BadName as exc:
            # A look-alike of a user enrolled here, or a name from before a naming rule: not a
            # disk fault, so not counted as one. Not recorded either: renamed and re-enrolled
            # at its door, the user arrives as a new change.
            log.error("fleet sync: %s of %s not stored at this door: %s", upd.kind, _who(upd), exc)
            self.stats["refused"] += 1
            return "name_refused"
        except StoreError as exc:
            # e.g. a read-only or full disk: nothing recorded in the sync state either, so the
            # retained message is applied again after the next connect.
            log.error("fleet sync: could not apply %s of %s: %s", upd.kind, _who(upd), exc)
            self.stats["store_failed"] += 1
            return "store_failed"
        return outcome

    def _done(self, outcome: str, upd: Update, **extra: Any) -> str:
        """Audit a change `_apply` made (or refused to make); returns the outcome."""
        # A tombstone for a user this door did not hold has no name to record.
        who = {"user": upd.name} if upd.name is not None else {"user_tag": upd.tag}
        self._audit(
            "fleet_" + outcome,
            **who,
            version=upd.version,
            signer=upd.signer,
            group=upd.group,
            **extra,
        )
        return outcome

    def _restore_newer(self, topic: str, payload: bytes, order: Order) -> None:
        """Make a newer message the retained one again after this door sent an older one.

        A door back online sends its outbox right after subscribing; if another door changed
        the same user meanwhile (e.g. erased them), the older message replaced the newer one
        as the retained message, and a door syncing later applied it (an erased user came
        back). The newer one arrives here (retained, or live when the two crossed) before our
        own message comes back: it is sent again as received (signed by its author), through
        the outbox so it is not lost. Once our own message has come back, a newer one is an
        ordinary later change, which the broker keeps by itself.
        """
        with self._send_lock:
            mine = self._sent.get(topic)
            if mine is None or newer(mine, order):
                return
            del self._sent[topic]
            if not newer(order, mine):
                return  # our own message came back first: the broker keeps what came later
            self.state.queue(topic, payload, order)
            self._send(topic, payload, order)
        self.stats["restored"] += 1
        log.info(
            "fleet sync: version %d (%s) on %s is newer than the %d (%s) sent from here; "
            "sent it again",
            order[0],
            order[1],
            topic,
            mine[0],
            mine[1],
        )

    # -- erases the store could not write

    def withheld(self) -> list[str]:
        """The users withheld in memory, their erase or revoke waiting for the store."""
        with self._apply_lock:
            return sorted(str(u.name) for u in self._withheld.values())

    def _erase_or_withhold(self, upd: Update) -> bool:
        """store.erase; when the store cannot write it (a full disk), the user is withheld at
        once (the scorer, identify and the API no longer find them in this process) and
        _Withheld is raised: nothing is recorded in the sync state, and the erase is tried
        again by retry_withheld. Named at ERROR and audited once per change."""
        assert upd.name is not None
        try:
            return self.store.erase(upd.name)
        except StoreError as exc:
            self.store.withhold(upd.name)
            first = self._withheld.get(upd.tag) != upd
            self._withheld[upd.tag] = upd
            if first:
                self.stats["withheld"] += 1
            log.log(
                logging.ERROR if first else logging.DEBUG,
                "fleet sync: %s of %s (version %d, by %s, via %s) cannot be written (%s); %s "
                "is no longer recognised at this door from now on, and the %s is written as "
                "soon as the store takes it (tried every %g s)",
                upd.kind,
                upd.name,
                upd.version,
                upd.signer,
                upd.group,
                exc,
                upd.name,
                upd.kind,
                self.withheld_retry_s,
            )
            outcome = f"{upd.kind}_withheld"
            if first:
                self._done(outcome, upd, error=str(exc))
            raise _Withheld(outcome) from None

    def retry_withheld(self) -> None:
        """Apply again each withheld erase or revoke; a hold ends once the store no longer
        withholds the user (the erase written, or a newer voiceprint stored)."""
        self.state.write_back()  # the sync state first, so what follows lands in the file
        with self._apply_lock:
            for tag, name in list(self._not_allowed.items()):
                try:
                    self._drop_not_allowed(tag, name)
                except Exception as exc:  # e.g. the sync state: the erase itself may be done
                    log.error("fleet sync: withheld erase of %s (config): %s", name, exc)
            for tag, upd in list(self._withheld.items()):
                assert upd.name is not None
                try:
                    outcome = self._apply(upd)
                except _Withheld:
                    continue
                except Exception as exc:  # e.g. the sync state: the erase itself may be done
                    log.error("fleet sync: withheld %s of %s: %s", upd.kind, upd.name, exc)
                    outcome = "failed"
                if not self.store.withholds(upd.name):
                    del self._withheld[tag]
                    log.warning(
                        "fleet sync: the withheld %s of %s is done (%s)",
                        upd.kind,
                        upd.name,
                        outcome,
                    )

    def _retry_loop(self) -> None:
        while not self._stopping.wait(self.withheld_retry_s):
            if not (self._withheld or self._not_allowed or self.state.in_memory):
                continue
            try:
                self.retry_withheld()
            except Exception:  # the loop keeps going whatever one attempt does
                log.exception("fleet sync: retrying withheld erases failed")

    def _erased(self, name: str) -> None:
        if self.on_erased is None:
            return
        try:
            self.on_erased(name)
        except Exception:  # the erase stands whatever the hook does
            log.exception("fleet sync: after erasing %s, the on_erased hook failed", name)

    def _audit(self, event: str, **fields: Any) -> None:
        if self.audit_event is None:
            return
        try:
            self.audit_event(event, **fields)
        except Exception:
            log.exception("fleet sync: could not write audit event %s", event)

    def _name_for(self, upd: Update) -> tuple[Update, int]:
        """A tombstone with the name of the user it is about, when this door holds them, and
        how many voiceprint rows could not be read to check (0 when the name was found).

        Tombstones carry only the user tag; the name is found among this door's voiceprints
        (the store keys rows by name, under its own key). StoreError when the store cannot be
        read: then nothing is recorded and the retained tombstone is applied on a later connect.
        """
        if upd.name is not None:
            return upd, 0
        held = self._withheld.get(upd.tag)
        if held is not None:  # the store no longer lists them, but the row is still there
            return dataclasses.replace(upd, name=held.name), 0
        if upd.tag in self._not_allowed:  # likewise (enforce_access)
            return dataclasses.replace(upd, name=self._not_allowed[upd.tag]), 0
        prints, damaged = self.store.readable()
        for vp in prints:
            if self.codec.user_tag(vp.name) == upd.tag:
                return dataclasses.replace(upd, name=vp.name), 0
        return upd, damaged

    def _unverified(self, upd: Update, damaged: int, order: Order) -> str:
        """An erase or revoke for a user this door could not find while some rows cannot be
        read: one of them may be that user's (and a revoke would leave their access in
        place once the row reads again, e.g. the file restored from a backup). It is
        recorded (older voiceprints stay ignored) with `held` set, meaning "this door may
        still hold them", so the retained tombstone is applied again at each connect until
        the user is found or no unreadable row is left. Named at ERROR and audited once per
        tombstone and group in this process; the retries after that log at DEBUG."""
        self.state.set_user(upd.tag, order, upd.kind, held=True)
        self.state.set_grant(upd.tag, upd.group, upd.order, upd.kind)
        outcome = f"{upd.kind}_unverified"
        self.stats[outcome] += 1
        told = (upd.kind, upd.tag, upd.group, upd.order)
        first = told not in self._unverified_told
        self._unverified_told.add(told)
        log.log(
            logging.ERROR if first else logging.DEBUG,
            "fleet sync: %s of user tag %s (version %d, by %s, via %s) may be incomplete: %d "
            "voiceprint row(s) here cannot be read and may be that user's (`voxgate users "
            "list` counts them); erase or re-enroll them by name (`voxgate users erase NAME`), "
            "the %s is tried again at each connect",
            upd.kind,
            upd.tag,
            upd.version,
            upd.signer,
            upd.group,
            damaged,
            upd.kind,
        )
        if not first:
            return outcome
        return self._done(outcome, upd, unreadable=damaged)

    def _apply(self, upd: Update) -> str:
        hold = self._withheld.get(upd.tag)
        if hold is not None and upd.kind == "voiceprint" and not newer(upd.order, hold.order):
            # The withheld erase is in no record yet (the sync state is written with the
            # store): an older voiceprint would count as new, and storing it ended the hold.
            return self._ignored(upd, hold.order)
        row = self.state.user(upd.tag)
        known: Order | None = (row[0], row[3]) if row else None
        held = bool(row and row[2])
        # An erase or revoke recorded while unreadable rows might have held the user: its
        # retained copy is applied again (see _unverified).
        retry = bool(row and row[1] == upd.kind and held and upd.kind in ("erase", "revoke"))
        retry = retry and upd.order == known
        if row and known and row[1] == "erase" and not newer(upd.order, known) and not retry:
            return self._ignored(upd, known)  # erased later than this message was made
        grant_row = self.state.grant(upd.tag, upd.group)
        if grant_row is not None:
            grant = (grant_row[0], grant_row[2])
            # A grant dropped by config takes its own version again (older ones stay ignored).
            redo = grant_row[1] == "dropped" and not newer(grant, upd.order)
            if not newer(upd.order, grant) and not redo and not retry:
                return self._ignored(upd, grant)
        if upd.kind == "erase":
            if known is not None and not newer(upd.order, known) and not retry:
                # Older than what this door has, e.g. the erase still retained on another
                # group's topic after the user was enrolled again: the newer change stands.
                return self._ignored(upd, known)
            upd, unreadable = self._name_for(upd)
            if upd.name is None and unreadable:
                return self._unverified(upd, unreadable, upd.order)
            erased = False
            if upd.name is not None:  # else: not held here; the version is what matters
                erased = self._erase_or_withhold(upd)
                self._erased(upd.name)
            self.state.set_user(upd.tag, upd.order, "erase", held=False)
            self.state.set_grant(upd.tag, upd.group, upd.order, "erase")
            log.info(
                "fleet sync: %s erased (version %d, by %s)", _who(upd), upd.version, upd.signer
            )
            self.stats["applied"] += 1
            return self._done("erased" if erased else "erased_absent", upd)
        if upd.kind == "revoke":
            others = [
                g
                for g in self.state.granting_groups(upd.tag)
                if g != upd.group and g in self.cfg.groups
            ]
            if others:
                self.state.set_grant(upd.tag, upd.group, upd.order, "revoke")
                return "revoked_group"  # another of this door's groups still lets them in
            # State is written after the store changed, so a failure here means the retained
            # message is applied again on the next connect rather than skipped.
            upd, unreadable = self._name_for(upd)
            top = known if known is not None and newer(known, upd.order) else upd.order
            if upd.name is None and unreadable:
                return self._unverified(upd, unreadable, top)
            if upd.name is not None:
                self._erase_or_withhold(upd)
                self._erased(upd.name)
            self.state.set_grant(upd.tag, upd.group, upd.order, "revoke")
            self.state.set_user(upd.tag, top, "revoke", held=False)
            log.info("fleet sync: %s revoked here (version %d)", _who(upd), upd.version)
            self.stats["applied"] += 1
            return self._done("revoked", upd)
        # A voiceprint (decode made sure it has a name).
        assert upd.name is not None
        if not self.allowed_here(upd.name):
            # Defence in depth: the ACL should have kept it away; never store it.
            log.warning("fleet sync: %s is not allowed at this door; not stored", upd.name)
            self.stats["not_allowed"] += 1
            return self._done("not_allowed", upd)
        made_by = (upd.model_id, upd.model_sha256)
        why = model_mismatch(made_by, self.model_id, self.model_sha256) if self.model_id else None
        if why is not None:
            log.error("fleet sync: %s %s here; not stored", upd.name, why)
            self.stats["refused"] += 1
            return "model_mismatch"
        if held and row and row[1] == "voiceprint" and known and not newer(upd.order, known):
            self.state.set_grant(upd.tag, upd.group, upd.order, "voiceprint")
            return "already_have"  # the same enrollment, through another group
        assert upd.embeddings is not None and upd.model_id is not None
        meta = {**(upd.meta or {}), "fleet_version": upd.version, "fleet_signer": upd.signer}
        self.store.replace(upd.name, upd.embeddings, upd.model_id, meta, upd.model_sha256)
        self.state.set_grant(upd.tag, upd.group, upd.order, "voiceprint")
        self.state.set_user(upd.tag, upd.order, "voiceprint", held=True)
        log.info(
            "fleet sync: %s stored (version %d, from %s via %s)",
            upd.name,
            upd.version,
            upd.signer,
            upd.group,
        )
        self.stats["applied"] += 1
        return self._done("stored", upd)

    def _ignored(self, upd: Update, have: Order) -> str:
        self.stats["ignored_old"] += 1
        if newer(have, upd.order):
            # The same change again is the retained copy after a reconnect; an older one is a
            # replay, a message that crossed a newer change, or the loser of a tie (same
            # version): worth a line, never applied.
            log.info(
                "fleet sync: ignored %s of %s (version %d, by %s, via %s): version %d%s is newer",
                upd.kind,
                _who(upd),
                upd.version,
                upd.signer,
                upd.group,
                have[0],
                f" ({have[1]}, the tie-break)" if have[0] == upd.version else "",
            )
        return "ignored_old"

    def enforce_access(self) -> list[str]:
        """Erase voiceprints received from the fleet that this door's config no longer allows.

        Run at start, so shrinking fleet.access / fleet.groups (an Ansible run) revokes
        access even for doors that were offline when it changed.
        """
        dropped: list[str] = []
        # Which voiceprints came from the fleet is read off the voiceprints themselves
        # (`fleet_version`), not off the sync state's held tags: after `fleet.db` was deleted
        # or the fleet key replaced (every tag changes), no tag matched and a user the config
        # no longer allows stayed enrolled here.
        try:
            prints, damaged = self.store.readable()
        except StoreError as exc:
            # The door still starts (its attempts are denied as store_unreadable); access is
            # checked again at the next start.
            log.error("fleet sync: cannot check access at start: %s", exc)
            return dropped
        if damaged:
            log.error("fleet sync: %d unreadable voiceprint(s) not checked against access", damaged)
        for vp in prints:
            if "fleet_version" in vp.meta and not self.allowed_here(vp.name):
                tag = self.codec.user_tag(vp.name)
                self._drop_not_allowed(tag, vp.name)
                dropped.append(vp.name)
        return dropped

    def _drop_not_allowed(self, tag: str, name: str) -> bool:
        """Erase a user the config no longer allows; whether it is written. On a full disk
        (raising stopped the start) they are withheld at once and tried again with the
        withheld retries (retry_withheld); _name_for still finds them meanwhile, so a fleet
        erase of theirs is not taken for one of a user this door does not hold."""
        try:
            gone = self.store.erase(name)
        except StoreError as exc:
            self.store.withhold(name)
            if self._not_allowed.get(tag) != name:
                self._not_allowed[tag] = name
                log.error(
                    "fleet sync: %s is no longer allowed here (config), but the erase cannot "
                    "be written (%s); %s is not recognised from now on, and is erased once "
                    "the store can write (tried every %g s)",
                    name,
                    exc,
                    name,
                    self.withheld_retry_s,
                )
            return False
        if self._not_allowed.pop(tag, None) is not None and not gone:
            return True  # erased meanwhile (a fleet erase of theirs): its record stands
        self._erased(name)
        known = self.state.user(tag)
        order = (known[0], known[3]) if known else (0, "")
        self.state.set_user(tag, order, "revoke", held=False)
        # Not a tombstone: if the config allows them again, the retained voiceprint
        # (same version) must be applied, not skipped as one already seen.
        self.state.drop_grants(tag)
        log.info("fleet sync: %s no longer allowed here (config); erased", name)
        # A voiceprint change like any other the agent makes: on the door's record.
        self._audit("fleet_dropped_by_config", user=name, groups=list(self.cfg.groups))
        return True
