"""The daemon's user administration: fleet sync agent, local admin API, MQTT user commands.

Started by the loop after the MQTT link and before READY, so that a taken API port or a
missing token or fleet key stops the start with a clear error instead of surfacing later;
stopped in reverse order. Every local change to the voiceprints (API, MQTT `erase-user`)
goes to the audit log and to the fleet (`FleetSync.on_local_change`); changes another
process made (`voxgate enroll`, `voxgate users erase`) reach the fleet through the outbox
in the sync state file, which `housekeeping` sends now and then.

After every erase, whichever way it came (MQTT, API, the fleet, or `voxgate users erase` in
another process, noticed by `housekeeping`), `forget` drops what the daemon holds about the
person besides the voiceprint: their lockout entry, the retained `user` topic naming them,
their kept recordings and the replay fingerprints of their answers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from voxgate.config import VoxgateConfig
from voxgate.names import fold, person_key

log = logging.getLogger(__name__)

OUTBOX_EVERY_S = 5.0  # how often the outbox is checked for changes other processes left
ENROLL_TIMEOUT_S = 120.0  # an enrollment nobody finishes is dropped after this
MAX_TAKES = 20


class StartError(Exception):
    """A part that was asked for cannot start. `config` True: a setting or secret is wrong
    (restarting will not help); False: a resource is unavailable (e.g. the port is taken)."""

    def __init__(self, message: str, *, config: bool) -> None:
        super().__init__(message)
        self.config = config


Undo = Callable[[str, Callable[[], None]], None]


def rejected_entry(take: Any) -> dict[str, Any]:
    """A rejected take in enroll-finish's reply; a duplicate names the take it repeats, as the
    CLI does, so the door can tell the person which recording counted once."""
    entry = {"take": take.index, "reason": take.reason}
    return entry if take.same_as is None else {**entry, "same_as": take.same_as}


def _command_user(args: dict[str, Any]) -> str:
    """The "user" of an MQTT command, normalised as the store names users; ValueError (the
    command's error reply) for a name the store refuses."""
    from voxgate.voiceprints import StoreError, normalize_name

    try:
        return normalize_name(str(args.get("user", "")))
    except StoreError as exc:
        raise ValueError(str(exc)) from None


class UserServices:
    def __init__(
        self,
        cfg: VoxgateConfig,
        store: Any,
        embedder: Any,
        audit_event: Callable[..., Any],
        *,
        lockout: Any = None,
        link: Any = None,
        replay: Any = None,
    ) -> None:
        self.cfg = cfg
        self.lockout = lockout  # lockout.LockoutBook
        self.replay = replay  # replay.ReplayDetector: the fingerprints of matched answers
        self.link = link  # mqtt.client.MqttLink (forget_user, last_user) or NoLink
        # Folded names seen enrolled that the daemon holds state for: one of them gone from
        # the store was erased (by another process, or while stopped) and is forgotten.
        # Folded name -> the name as enrolled, of the users seen enrolled (logs name them so).
        self._seen_enrolled: dict[str, str] = {}
        self._next_check = 0.0
        self.store = store
        self.embedder = embedder
        self.audit_event = audit_event
        self.agent: Any = None
        self._fleet_client: Any = None  # the agent's broker client, built by prepare()
        self._app: Any = None  # the admin API's app, built by prepare()
        self.api: Any = None
        self._next_flush = 0.0
        self._lock = threading.Lock()  # one erase at a time (store scrub + fleet tombstone)
        # MQTT enrollment at the door: enroll-start opens a session, the loop hands it each
        # utterance (instead of starting attempts), enroll-finish checks and stores the takes.
        self._enroll_lock = threading.Lock()
        self._enroll_user: str | None = None
        self._enroll_takes: list[Any] = []
        self._enroll_prompts: list[str] = []  # empty unless enroll-start asked for prompts
        self._enroll_until = 0.0
        self._session = 0  # counts enroll-starts, so a late prompt of an old session is known
        # Shows/says the next enrollment prompt at the door: on_prompt(digits, take, session,
        # ttl_s). The loop sets it (MQTT `challenge` topic, and the speaker when configured).
        self.on_prompt: Callable[[str, int, int, float], None] | None = None

    def prepare(self) -> None:
        """Build what the config enables, without connecting or listening: the fleet agent
        (its keys, its state file, its broker credentials and TLS files) and the admin API
        (its token). Raises StartError. `voxgate config check --deep` runs this alone."""
        cfg = self.cfg
        if (cfg.fleet.enabled or cfg.api.enabled) and self.store is None:
            raise StartError("the stages have no voiceprint store to share", config=False)
        if cfg.fleet.enabled:
            from voxgate.fleet import FleetError, FleetSync

            try:
                self.agent = FleetSync.from_config(
                    cfg,
                    self.store,
                    model_id=self.embedder.model_id,
                    model_sha256=getattr(self.embedder, "model_sha256", None),
                    audit_event=self.audit_event,
                    state_in_memory_when_full=True,  # a full disk: online, written back later
                )
            except FleetError as exc:
                if exc.temporary:  # a full disk is not a config error: restarted (exit 69)
                    raise StartError(
                        f"{exc}; the door starts by itself once there is room", config=False
                    ) from None
                raise StartError(str(exc), config=True) from None
            self.agent.on_erased = self.forget
            from voxgate.config.secrets import SecretError
            from voxgate.mqtt.client import MqttSetupError

            try:
                self._fleet_client = self.agent.broker_client()
            except (MqttSetupError, SecretError) as exc:  # TLS files, a named password file
                raise StartError(f"fleet sync: {exc}", config=True) from None
        if cfg.api.enabled:
            try:
                from voxgate.api import ApiError, UserAdmin, create_app, load_token
            except ImportError as exc:
                raise StartError(
                    f"api.enabled, but the admin API is not installed ({exc}); "
                    "pip install 'voxgate[api]' or set api.enabled: false",
                    config=False,
                ) from None

            try:
                token = load_token(cfg)
                admin = UserAdmin(
                    self.store,
                    cfg.speaker,
                    cfg.vad,
                    lambda: self.embedder,
                    on_change=self._api_change,
                    template_threshold=cfg.stt.template_threshold,
                )
                self._app = create_app(
                    cfg, admin, token, audit_event=self.audit_event, current=lambda: self.cfg
                )
            except ApiError as exc:
                raise StartError(str(exc), config=True) from None

    def start(self, undo: Undo) -> None:
        """prepare(), then connect the fleet agent and listen on the API's port;
        `undo(name, stop)` registers each for shutdown. Raises StartError."""
        cfg = self.cfg
        self.prepare()
        if self.agent is not None:
            self.agent.start(self._fleet_client)
            undo("fleet sync", self.agent.stop)
        if self._app is not None:
            from voxgate.api import ApiServer

            try:
                # A shorter poll than the default 0.5 s: SIGTERM waits for it at shutdown.
                self.api = ApiServer(self._app, cfg.api.host, cfg.api.port, poll_interval=0.2)
            except OSError as exc:
                raise StartError(
                    f"admin API: cannot listen on {cfg.api.host}:{cfg.api.port}: {exc.strerror}"
                    " (another voxgate api running? change api.port)",
                    config=False,
                ) from None
            if cfg.api.host not in {"127.0.0.1", "::1", "localhost"}:
                log.warning("admin API bound to %s: reachable from the network", cfg.api.host)
            self.api.start()
            undo("admin API", self.api.stop)

    # -- changes ------------------------------------------------------------------------

    def _api_change(self, kind: str, name: str) -> None:
        if kind == "erased":
            self.forget(name)
        self._to_fleet(kind, name)

    def forget(self, name: str) -> list[str]:
        """`name` was erased: drop the daemon's other state about them (the lockout entry,
        the retained `user` topic if it names them, kept recordings the audit log ties to
        them, the replay fingerprints of their answers). Returns what was dropped."""
        from voxgate.service.keep import erase_recordings_for

        def lockout() -> str | None:
            return (
                "lockout entry" if self.lockout is not None and self.lockout.forget(name) else None
            )

        def fingerprints() -> str | None:
            n = self.replay.forget(name) if self.replay is not None else 0
            return f"{n} replay fingerprint(s)" if n else None

        def retained() -> str | None:
            forget_user = getattr(self.link, "forget_user", None)
            return "retained user topic" if forget_user is not None and forget_user(name) else None

        def recordings() -> str | None:
            n = erase_recordings_for(self.cfg, name)
            return f"{n} kept recording(s)" if n else None

        dropped = []
        # Each step on its own: one that fails (a replay store locked by another process, a
        # full disk) must not keep the others, which nothing would try again.
        for what, step in (
            ("the lockout entry", lockout),
            ("the replay fingerprints", fingerprints),
            ("the retained user topic", retained),
            ("the kept recordings", recordings),
        ):
            try:
                done = step()
            except Exception as exc:  # the erase itself stands
                log.error("after erasing %s: could not drop %s: %s", name, what, exc)
                continue
            if done:
                dropped.append(done)
        self._seen_enrolled.pop(person_key(name), None)
        if dropped:
            log.info("erased %s: also dropped %s", name, ", ".join(dropped))
        return dropped

    def check_erased(self) -> list[str]:
        """Forget the people erased behind the daemon's back: `voxgate users erase` in another
        process, or while the daemon was stopped (the name a previous run left retained on
        the broker). Only names once seen enrolled: a lockout on a name that was never
        enrolled (someone claiming a stranger) stays."""
        from voxgate.voiceprints import StoreError, normalize_name

        if self.store is None:
            return []
        held = set(self.lockout.users()) if self.lockout is not None else set()
        last = getattr(self.link, "last_user", None)
        retained_only = None  # a name known from the broker alone, not seen enrolled here
        if last:
            name = person_key(last)  # as the lockout keys users: held's names
            held.add(name)
            from_broker = bool(getattr(self.link, "last_user_from_broker", False))
            if name not in self._seen_enrolled and from_broker:
                retained_only = name
            self._seen_enrolled.setdefault(name, last)  # granted, so it was enrolled
        gone: list[str] = []
        for name in sorted(held):
            try:
                normalize_name(name)
            except StoreError:
                continue  # a name the store cannot hold was never enrolled
            try:
                # The enrolled spelling when known: the store folds what it is given, and
                # for a few names (a long s before a combining mark) folding the folded
                # name changes it again, so the folded name would read as "not enrolled".
                enrolled = self.store.has(self._seen_enrolled.get(name, name))
            except StoreError as exc:  # a damaged file: do not take everyone for erased
                log.warning("cannot check for erased users: %s", exc)
                return gone
            if enrolled:
                if name not in self._seen_enrolled:
                    self._seen_enrolled[name] = self.store.enrolled_name(name) or name
            elif name in self._seen_enrolled:
                shown = self._seen_enrolled[name]
                withholds = getattr(self.store, "withholds", None)
                if withholds is not None and withholds(name):
                    # Not another process: this one's fleet sync, whose erase the store
                    # could not write (a full disk); the voiceprint is still in the file.
                    log.info(
                        "%s is no longer recognised here: the erase waits to be written to "
                        "the voiceprint store (fleet sync retries it); dropping the rest the "
                        "daemon holds about them",
                        shown,
                    )
                elif name == retained_only:
                    # Left on the broker by a previous run: erased while stopped, or a run
                    # with another data folder. "Erased by another process" was not true.
                    log.info(
                        "the retained user topic named %s, who is not enrolled here (erased "
                        "while the daemon was stopped, or left by a run with another data "
                        "folder): cleared",
                        shown,
                    )
                else:
                    log.info("%s is no longer enrolled (erased by another process)", shown)
                self.forget(shown)
                gone.append(shown)
        return gone

    def _to_fleet(self, kind: str, name: str) -> None:
        if self.agent is not None:
            self.agent.on_local_change(kind, name)

    def changed(self, kind: str, name: str, via: str, **fields: Any) -> None:
        """A local change made by the daemon itself: audit it (with `fields`) and tell the
        fleet."""
        event = {"enrolled": "enrollment", "erased": "erase"}[kind]
        self.audit_event(event, user=name, via=via, **fields)
        from voxgate.fleet import tell_fleet

        tell_fleet(self._to_fleet, kind, name, log)

    def command_erase(self, args: dict[str, Any]) -> dict[str, Any]:
        """MQTT `erase-user` {"user": NAME} (runs on the command worker thread)."""
        from voxgate.voiceprints import StoreError

        if self.store is None:
            raise ValueError("no voiceprint store in this daemon")
        name = _command_user(args)
        with self._lock:
            name = self.store.enrolled_name(name) or name  # named as enrolled from here on
            try:
                erased = self.store.erase(name)
            except StoreError as exc:  # a damaged file, a full disk: say so in the reply
                raise ValueError(f"not erased: {exc}") from None
            if not erased:
                raise ValueError(f"no user '{name}' enrolled")
        log.info("erased %s (MQTT command)", name)
        self.forget(name)
        self.changed("erased", name, via="mqtt")
        return {"user": name, "erased": True}

    # -- enrollment at the door (MQTT enroll-start / enroll-finish) ------------------------

    @property
    def enrolling(self) -> bool:
        with self._enroll_lock:
            return self._session_open(time.monotonic())

    def _session_open(self, now: float) -> bool:
        if self._enroll_user is not None and now > self._enroll_until:
            log.warning(
                "enrollment of %s dropped: not finished within %.0f s",
                self._enroll_user,
                ENROLL_TIMEOUT_S,
            )
            self.audit_event("enrollment_expired", user=self._enroll_user)
            self._enroll_user, self._enroll_takes, self._enroll_prompts = None, [], []
        return self._enroll_user is not None

    def take(self, pcm: Any) -> bool:
        """Loop thread: an utterance ended while no attempt runs. True if it was taken as an
        enrollment take (then it is not an attempt)."""
        with self._enroll_lock:
            if not self._session_open(time.monotonic()):
                return False
            if len(self._enroll_takes) >= MAX_TAKES:
                log.warning("enrollment of %s: %d takes already; ignored", self._enroll_user,
                            MAX_TAKES)  # fmt: skip
                return True
            self._enroll_takes.append(pcm)
            n = len(self._enroll_takes)
            log.info("enrollment of %s: take %d (%.1f s)", self._enroll_user, n, len(pcm) / 16000)
            nxt = self._next_prompt()
        self._announce(nxt)
        return True

    def _next_prompt(self) -> tuple[str, int, int, float] | None:
        """Under the lock: (digits, take, session, ttl_s) of the prompt to show next."""
        done = len(self._enroll_takes)
        if done >= len(self._enroll_prompts):
            return None
        ttl = max(0.0, self._enroll_until - time.monotonic())
        return self._enroll_prompts[done], done + 1, self._session, ttl

    def _announce(self, prompt: tuple[str, int, int, float] | None) -> None:
        """Hand a prompt to on_prompt (outside the lock: publishing may block)."""
        if self.on_prompt is None or prompt is None:
            return
        try:
            self.on_prompt(*prompt)
        except Exception as exc:  # a display that cannot be reached must not stop enrolling
            log.warning("enrollment prompt %d not shown: %s", prompt[1], exc)

    def prompt_is_current(self, session: int, take: int) -> bool:
        """Is `take` of `session` still the one to say? (The loop shows prompts later.)"""
        with self._enroll_lock:
            return (
                self._session_open(time.monotonic())
                and session == self._session
                and take == len(self._enroll_takes) + 1
                and take <= len(self._enroll_prompts)
            )

    def command_enroll_start(self, args: dict[str, Any]) -> dict[str, Any]:
        """MQTT `enroll-start` {"user": NAME, "prompted": "yes"|"no"}: the next utterances are
        NAME's takes.

        prompted "yes" (for doors with a display or speaker): each take must say its prompt,
        a digit string (the reply lists them in order and each is shown on the `challenge`
        topic when its turn comes); the spoken challenge then checks this person's answers
        against their own digits cut from these takes. The takes are cut by position, not
        checked word by word, so a person who says something else gets templates that deny
        them: without a way to show the prompts, leave it "no" (the default; answers are then
        checked by the speaker-independent engine)."""
        from voxgate.enrollment import prompt_plan
        from voxgate.voiceprints import BadName, StoreError

        if self.store is None:
            raise ValueError("no voiceprint store in this daemon")
        name = _command_user(args)
        prompted = str(args.get("prompted", "no"))
        if prompted not in ("yes", "no"):
            raise ValueError("prompted must be 'yes' or 'no'")
        try:
            self.store.check_new_name(name)  # before the takes are spoken, not at the end
        except BadName as exc:
            raise ValueError(str(exc)) from None
        except StoreError as exc:  # unreadable now: enroll-finish checks again when it writes
            log.warning("enrollment of %s: name not checked at the start: %s", name, exc)
        prompts = prompt_plan(MAX_TAKES, self.cfg.challenge.length) if prompted == "yes" else []
        with self._enroll_lock:
            now = time.monotonic()
            if self._session_open(now) and not self._is_session_user(name):
                raise ValueError(f"busy: enrolling {self._enroll_user}")
            self._session += 1
            self._enroll_user, self._enroll_takes = name, []
            self._enroll_prompts = prompts
            self._enroll_until = now + ENROLL_TIMEOUT_S
            first = self._next_prompt()
        log.info("enrollment of %s started (MQTT); say the takes, then enroll-finish", name)
        self.audit_event("enrollment_started", user=name, via="mqtt")
        self._announce(first)
        return {"user": name, "timeout_s": ENROLL_TIMEOUT_S, "prompts": prompts}

    def _is_session_user(self, name: str) -> bool:
        """`name` is the person being enrolled, matched as the store matches names (ZOË is
        Zoë): an exact match refused enroll-finish for a name sent in another case."""
        return self._enroll_user is not None and fold(self._enroll_user) == fold(name)

    def command_enroll_finish(self, args: dict[str, Any]) -> dict[str, Any]:
        """MQTT `enroll-finish` {"user": NAME}: check the takes, store the voiceprint (an
        existing one is replaced), audit, tell the fleet."""
        from voxgate.cohort import CohortError
        from voxgate.enrollment import TEMPLATES_META, attach_templates, check_takes, same_voice
        from voxgate.voiceprints import BadName, StoreError

        name = _command_user(args)
        with self._enroll_lock:
            if not self._session_open(time.monotonic()) or not self._is_session_user(name):
                raise ValueError(f"no enrollment of '{name}' in progress (send enroll-start)")
            name = self._enroll_user or name  # stored as enroll-start spelled it
            takes, prompts = self._enroll_takes, self._enroll_prompts
            self._enroll_user, self._enroll_takes, self._enroll_prompts = None, [], []
        # Utterances the door's endpointer cut (pre-roll and hangover): live takes.
        try:
            result = check_takes(takes, self.embedder, self.cfg.speaker, self.cfg.vad, live=True)
        except CohortError as exc:  # speaker.cohort is read again here: moved since start
            kept = self._keep_takes(name, takes, prompts)
            log.error("enrollment of %s not checked: speaker.cohort: %s; %s", name, exc, kept)
            raise ValueError(f"not checked: speaker.cohort: {exc}; {kept}") from None
        report = {
            "user": name,
            "takes": len(result.takes),
            "used": len(result.accepted),
            "speech_s": round(result.speech_s, 2),
            "rejected": [rejected_entry(t) for t in result.rejected],
        }
        if not result.ok:
            self.audit_event("enrollment_refused", user=name, via="mqtt", problems=result.problems)
            raise ValueError("not enrolled: " + "; ".join(result.problems))
        meta = {"takes": len(result.accepted), "speech_s": report["speech_s"], "source": "mqtt"}
        if prompts:
            report["prompt_mismatch_takes"] = attach_templates(
                meta, result, takes, prompts[: len(takes)], self.cfg.stt.template_threshold
            )
        report["digit_templates"] = TEMPLATES_META in meta
        # Stored anyway (relatives can sound alike); the reply and the audit line say so.
        alike = same_voice(result.embeddings, name, self.store, self.embedder, self.cfg.speaker)
        report["same_voice_as"] = alike.audit() if alike is not None else []
        if alike is not None:
            log.warning("enrollment of %s (MQTT): %s", name, alike.text())
        try:
            sha = getattr(self.embedder, "model_sha256", None)
            self.store.replace(name, result.embeddings, self.embedder.model_id, meta, sha)
        except BadName as exc:  # sending enroll-finish again cannot help: no takes kept
            log.error("enrollment of %s not stored: %s", name, exc)
            raise ValueError(f"not stored: {exc}") from None
        except StoreError as exc:  # a full disk or a damaged file
            kept = self._keep_takes(name, takes, prompts)
            log.error("enrollment of %s not stored: %s; %s", name, exc, kept)
            raise ValueError(f"not stored: {exc}; {kept}") from None
        log.info("enrolled %s from %d takes (MQTT)", name, len(result.accepted))
        extra = {"same_voice_as": report["same_voice_as"]} if alike is not None else {}
        self.changed("enrolled", name, via="mqtt", **extra)
        return report

    def _keep_takes(self, name: str, takes: list[Any], prompts: list[str]) -> str:
        """Reopen the session with the spoken takes, so that enroll-finish can be sent again
        once the device is fixed (within the session's time); says whether they were kept."""
        with self._enroll_lock:
            if self._enroll_user is not None:
                return "the takes are lost (another enrollment started)"
            self._enroll_user, self._enroll_takes = name, takes
            self._enroll_prompts = prompts
            self._enroll_until = time.monotonic() + ENROLL_TIMEOUT_S
        return "the takes are kept; send enroll-finish again"

    def housekeeping(self, now: float | None = None) -> None:
        """Drop an enrollment left open too long; forget users erased by another process;
        delete what an erase left in the replay file; send what waits in the fleet outbox."""
        with self._enroll_lock:
            self._session_open(time.monotonic())
        now = time.monotonic() if now is None else now
        if now >= self._next_check:
            self._next_check = now + OUTBOX_EVERY_S
            try:
                self.check_erased()
            except Exception:
                log.exception("checking for erased users failed")
            if self.replay is not None:  # an erase the replay file could not take yet
                try:
                    self.replay.retry_erased()
                except Exception:
                    log.exception("deleting erased users' replay fingerprints failed")
        if self.agent is None:
            return
        if now < self._next_flush:
            return
        self._next_flush = now + OUTBOX_EVERY_S
        try:
            sent = self.agent.flush_outbox()
        except Exception as exc:
            log.warning("fleet sync: sending the outbox failed: %s", exc)
            return
        if sent:
            log.info("fleet sync: sent %d queued update(s)", sent)
