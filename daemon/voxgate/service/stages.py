"""The stages the loop drives, as small Protocols, and the one factory that builds them.

The loop only knows these shapes (from CONTRACTS.md), never the stage modules, so a test or
a benchmark can hand it other objects, and the real wiring lives in one function:
build_stages(cfg). Each stage module is imported inside it (heavy imports stay out of the
loop and out of `voxgate --help`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from voxgate.config import VoxgateConfig
from voxgate.config.stt import ChallengeConfig
from voxgate.policy import LivenessLike, ReplayLike, SpeakerLike, Verdict

log = logging.getLogger(__name__)


class EmbeddingStream(Protocol):
    def push(self, pcm: np.ndarray) -> None: ...
    def finish(self) -> np.ndarray: ...


class Embedder(Protocol):
    model_id: str

    def stream(self) -> EmbeddingStream: ...


class Scorer(Protocol):
    # quality: quality.Quality of the attempt's audio (the gate: retry when it is poor)
    # min_speech_s: the gate's net-speech minimum for this attempt (None: the configured one)
    def verify(
        self, emb: np.ndarray, claimed_user: str, quality: Any = None, min_speech_s: Any = None
    ) -> SpeakerLike: ...
    def identify(
        self, emb: np.ndarray, quality: Any = None, min_speech_s: Any = None
    ) -> SpeakerLike: ...


class PromptStream(Protocol):
    def push(self, pcm: np.ndarray) -> None: ...
    def finish(self) -> LivenessLike: ...


class Recognizer(Protocol):
    def start(self, words: tuple[str, ...], user_templates: Any = None) -> PromptStream: ...
    def check_words(self, words: tuple[str, ...]) -> None: ...


class Challenge(Protocol):
    @property
    def words(self) -> tuple[str, ...]: ...
    @property
    def nonce(self) -> str: ...
    @property
    def issued_at(self) -> float: ...
    @property
    def expires_at(self) -> float: ...


class ReplayDetector(Protocol):
    def check_and_add(
        self, pcm: np.ndarray, now: float, keep: bool = True, user: str | None = None
    ) -> ReplayLike: ...

    def forget(self, user: str) -> int: ...
    def retry_erased(self) -> None: ...


CommandHandler = Callable[[dict[str, Any]], dict[str, Any]]


class Link(Protocol):
    """What the loop uses of mqtt.client.MqttLink."""

    @property
    def connected(self) -> bool: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def publish_state(self, state: str) -> None: ...
    def publish_challenge(self, challenge: Any) -> None: ...
    # MqttLink: False when the decision expired before it could be sent (dropped).
    def publish_decision(self, decision: Any) -> bool | None: ...
    def publish_lockout(self, locked: list[dict[str, Any]]) -> None: ...
    def on_command(self, name: str, handler: CommandHandler) -> None: ...


@dataclass(frozen=True)
class AttemptResult:
    """Everything known about one finished attempt; make_decision turns it into the message."""

    device_id: str
    verdict: Verdict
    claimed_user: str | None
    speaker: SpeakerLike | None
    liveness: LivenessLike | None
    replay: ReplayLike | None
    challenge: Challenge | None
    issued_at: float  # wall clock
    ttl_s: float
    speech_s: float


@dataclass
class Stages:
    """The loop's collaborators. `close` runs in reverse order at shutdown."""

    source: Any  # audio.AudioSource
    embedder: Embedder
    scorer: Scorer
    link: Link
    make_decision: Callable[[AttemptResult], Any]
    recognizer: Recognizer | None = None  # None when challenge.mode is off
    new_challenge: Callable[[ChallengeConfig, float], Challenge] | None = None
    replay: ReplayDetector | None = None
    speak: Callable[[Any], Any] | None = None  # says a challenge aloud (challenge.speak)
    # Digit templates (from enrollment) of the people an answer may come from: the claimed
    # user, or every enrolled user when nobody is claimed. Answers are checked against the
    # speaker's own digits, streamed while they speak (docs/challenge.md).
    templates_for: Callable[[str | None], dict[str, Any | None]] | None = None
    no_speech_errors: tuple[type[BaseException], ...] = ()  # e.g. embedding.TooShort
    store: Any = None  # voiceprints.VoiceprintStore, shared with the fleet sync and the API
    # decision.SequenceCounter: its unsaved ceiling is in STATUS= and saved by housekeeping.
    sequence: Any = None
    close: list[Callable[[], None]] = field(default_factory=list)


class NoLink:
    """The link when mqtt.enabled is false: decisions reach only the log and the audit log."""

    connected = False

    def start(self) -> None:
        log.warning("mqtt.enabled is false: decisions are not sent to any lock")

    def stop(self) -> None:
        pass

    def publish_state(self, state: str) -> None:
        pass

    def publish_challenge(self, challenge: Any) -> None:
        log.info("challenge (not published, MQTT off): %s", " ".join(challenge.words))

    def publish_decision(self, decision: Any) -> None:
        pass

    def publish_lockout(self, locked: list[dict[str, Any]]) -> None:
        pass

    def on_command(self, name: str, handler: CommandHandler) -> None:
        pass


class StageUnavailable(Exception):
    """A stage could not be built (module missing in this build, model file bad, no key).
    `config` is true when a setting or secret is what is missing or wrong: restarting the
    daemon cannot fix that (exit 78, not 69)."""

    def __init__(self, message: str, *, config: bool = False) -> None:
        super().__init__(message)
        self.config = config


def build_stages(cfg: VoxgateConfig) -> Stages:
    """The real stages for `cfg`, per CONTRACTS.md. Raises StageUnavailable with the cause,
    or audio.AudioError when the input cannot be opened."""
    from voxgate.audio import open_source

    # The input first: a missing microphone fails in a moment, with the list of inputs,
    # instead of after the models have loaded. (A microphone stream opens on first read.)
    source = open_source(cfg.audio)
    try:
        return _build_with_source(cfg, source)
    except BaseException:
        source.close()
        raise


MAX_TEMPLATE_USERS = 8  # above this, unclaimed answers use the engine check (CPU bound)


def _templates_lookup(store: Any) -> Callable[[str | None], dict[str, Any | None]]:
    from voxgate.enrollment import templates_of

    def lookup(claimed: str | None) -> dict[str, Any | None]:
        try:
            if claimed is not None:
                vps = [vp for vp in [store.get(claimed)] if vp is not None]
            else:
                vps = store.readable()[0]  # a damaged row is skipped, as identify skips it
        except Exception as exc:  # a damaged store must not take the attempt down
            log.error("cannot read voiceprints for digit templates: %s", exc)
            return {}
        if len(vps) > MAX_TEMPLATE_USERS:
            return {}
        if claimed is not None:
            # Keyed as claimed: the store matches names case-insensitively ("ALICE" opens
            # alice), and the attempt looks its stream up by the claimed name.
            return {claimed: templates_of(vps[0].meta)} if vps else {}
        return {vp.name: templates_of(vp.meta) for vp in vps}  # None: has no templates

    return lookup


def _build_with_source(cfg: VoxgateConfig, source: Any) -> Stages:
    from voxgate import embedding

    key = speaker_key(cfg)
    embedder = speaker_model(cfg)
    store = speaker_store(cfg, key)
    scorer = speaker_scorer(cfg, store, embedder)
    recognizer = new_challenge = replay = speak = None
    if cfg.challenge.mode != "off":
        from voxgate import challenge

        recognizer = challenge_recognizer(cfg)
        new_challenge = challenge.new_challenge
        speak = challenge.speak if cfg.challenge.speak else None
        replay = replay_store(cfg)
    link = mqtt_link(cfg)
    issuer = decision_issuer(cfg)
    return Stages(
        source=source,
        embedder=embedder,
        scorer=scorer,
        link=link,
        make_decision=issuer.from_attempt,
        recognizer=recognizer,
        new_challenge=new_challenge,
        replay=replay,
        speak=speak,
        templates_for=_templates_lookup(store) if recognizer is not None else None,
        no_speech_errors=(getattr(embedding, "TooShort", ValueError),),
        store=store,
        sequence=issuer.seq,
        # The replay store too: its close deletes what an erase could not (a full disk).
        # The sequence: a last try to save a ceiling held in memory before a restart.
        close=[
            issuer.seq.save_held,
            source.close,
            store.close,
            *([replay.close] if replay is not None else []),
        ],
    )


# Each part below builds one thing from the config and raises StageUnavailable saying what
# is wrong. build_stages calls them in order; `voxgate config check --deep` (preflight.py)
# calls each on its own, so that it reports every problem and not only the first.


def _missing(exc: ImportError) -> StageUnavailable:
    return StageUnavailable(f"a stage is missing from this build: {exc}")


def speaker_key(cfg: VoxgateConfig) -> bytes:
    """The voiceprint key (speaker.key_file or the credential)."""
    try:
        from voxgate import voiceprints
    except ImportError as exc:
        raise _missing(exc) from None
    try:
        return voiceprints.load_key(cfg.speaker, voiceprints.store_path(cfg))
    except voiceprints.StoreError as exc:  # no key, or not a key: a setting, not the build
        raise StageUnavailable(f"speaker stage: {exc}", config=True) from None


@contextlib.contextmanager
def _speaker_errors() -> Iterator[None]:
    from voxgate import voiceprints
    from voxgate.scoring import ScoringError

    try:
        yield
    except ScoringError as exc:
        # A cohort missing, damaged, a folder or built for another model or preprocessing,
        # or none and no threshold: an edit or a rebuild fixes it, a restart reads the same
        # files (78, not 69, which systemd retries for ever).
        raise StageUnavailable(f"speaker stage: {exc}", config=True) from None
    except voiceprints.WrongKey as exc:  # the key of another store: a setting
        raise StageUnavailable(f"speaker stage: {exc}", config=True) from None
    except voiceprints.EmptyFile as exc:  # its message says what to do
        raise StageUnavailable(f"speaker stage: {exc}", config=True) from None
    except voiceprints.Damaged as exc:  # a restart reads the same file: the admin must act
        # Most of the store's messages say what to do already; say it once.
        advice = (
            ""
            if "from a backup" in str(exc)
            else ". Restore the file from a backup, or move it aside to start with nobody enrolled"
        )
        raise StageUnavailable(f"speaker stage: {exc}{advice}", config=True) from None
    except Exception as exc:  # ModelError, StoreError, SecretError: all say why
        raise StageUnavailable(f"speaker stage: {exc}") from None


def speaker_model(cfg: VoxgateConfig) -> Any:
    """The speaker embedding model (speaker.model, or the shipped default)."""
    try:
        from voxgate import embedding
    except ImportError as exc:
        raise _missing(exc) from None
    if cfg.speaker.model is not None:
        try:
            embedding.load_card(cfg.speaker.model)
        except embedding.ModelError as exc:
            # The setting names no usable card (a typo, a model id where a path goes): an
            # edit fixes it, a restart never does, so exit 78 and not 69.
            raise StageUnavailable(
                f"speaker stage: {exc}. speaker.model is the path of a model card (or of a "
                "model file with its card beside it); leave it unset for the shipped model, "
                f"or use one of the shipped cards: {_shipped_cards()}",
                config=True,
            ) from None
    with _speaker_errors():
        return embedding.load_embedder(cfg.speaker.model, cfg.speaker.threads)


def _shipped_cards() -> str:
    from voxgate.embedding.card import default_card_path

    return ", ".join(str(p) for p in sorted(default_card_path().parent.glob("*.yaml")))


def speaker_store(cfg: VoxgateConfig, key: bytes) -> Any:
    """The voiceprint store (speaker.database, or voiceprints.db in data_dir)."""
    from voxgate import voiceprints

    with _speaker_errors():
        try:
            return voiceprints.VoiceprintStore(
                cfg.speaker.database or cfg.data_dir / "voiceprints.db", key, read_when_full=True
            )
        except voiceprints.WrongKey as exc:  # say which key: a credential hides the file
            raise voiceprints.WrongKey(f"{exc}{voiceprints.key_source(cfg.speaker)}") from None


def speaker_scorer(cfg: VoxgateConfig, store: Any, embedder: Any) -> Scorer:
    """The scorer: as `voxgate verify` scores, with the cohort tied to this model file and
    preprocessing, also under a fixed speaker.threshold (which is on the normalized score's
    scale)."""
    try:
        from voxgate import scoring
    except ImportError as exc:
        raise _missing(exc) from None
    with _speaker_errors():
        return scoring.load_scorer(cfg, store, embedder)


def challenge_recognizer(cfg: VoxgateConfig) -> Recognizer:
    """The speech engine that checks answers (stt.*), and a passphrase it can score."""
    try:
        from voxgate import challenge, stt

        recognizer = stt.load_recognizer(cfg.stt)
        log.info("speech engine for challenges: %s", recognizer.name)
        if cfg.challenge.mode == "passphrase":
            try:
                recognizer.check_words(challenge.new_challenge(cfg.challenge, 0.0).words)
            except stt.SttError as exc:  # the phrase (or stt.backend): no restart helps
                raise StageUnavailable(
                    f"challenge stage: challenge.passphrase: {exc}", config=True
                ) from None
        return recognizer
    except StageUnavailable:
        raise
    except Exception as exc:
        raise StageUnavailable(f"challenge stage: {exc}") from None


def replay_store(cfg: VoxgateConfig) -> Any:
    """The fingerprints of recent answers (replay.db in data_dir)."""
    try:
        from voxgate import replay as replay_mod

        return replay_mod.ReplayDetector(
            cfg.data_dir / "replay.db",
            cfg.challenge.replay_window_s,
            max_rows=cfg.challenge.replay_max_stored,
            max_frames=replay_mod.frames_for(cfg.challenge.replay_memory_mb),
        )
    except Exception as exc:
        if getattr(exc, "damaged", False):  # replay.ReplayStoreError: stays damaged
            raise StageUnavailable(
                f"challenge stage: {exc}. Move it aside: the door then starts with no "
                "answers to compare (a replay of an earlier answer passes that check)",
                config=True,
            ) from None
        raise StageUnavailable(f"challenge stage: {exc}") from None


def mqtt_link(cfg: VoxgateConfig) -> Link:
    """The MQTT link (keys and TLS files read; it connects only at start())."""
    from voxgate.config.secrets import SecretError

    if not cfg.mqtt.enabled:
        return NoLink()
    try:
        from voxgate.decision import DecisionError
        from voxgate.mqtt.client import MqttLink, MqttSetupError
        from voxgate.mqtt.nonces import FILE_NAME as USED_COMMANDS_FILE
    except ImportError as exc:
        raise _missing(exc) from None
    try:
        return MqttLink(cfg.mqtt, cfg.device_id, used_commands=cfg.data_dir / USED_COMMANDS_FILE)
    except (SecretError, MqttSetupError) as exc:  # no decision key, a TLS file missing
        raise StageUnavailable(f"mqtt stage: {exc}", config=True) from None
    except DecisionError as exc:  # a damaged used-commands file: the message says what to do
        raise StageUnavailable(f"mqtt stage: {exc}", config=True) from None
    except Exception as exc:
        raise StageUnavailable(f"mqtt stage: {exc}") from None


def decision_issuer(cfg: VoxgateConfig) -> Any:
    """Signs decisions with the next sequence number (decision-seq.json in data_dir)."""
    try:
        from voxgate.decision import DecisionError, Issuer, SequenceCounter
    except ImportError as exc:
        raise _missing(exc) from None
    try:
        return Issuer(
            cfg.device_id,
            SequenceCounter(cfg.data_dir / "decision-seq.json"),
            cfg.mqtt.decision_ttl_s,
        )
    except DecisionError as exc:  # a damaged counter file: the message says what to do
        raise StageUnavailable(f"mqtt stage: {exc}", config=True) from None
    except Exception as exc:
        raise StageUnavailable(f"mqtt stage: {exc}") from None
