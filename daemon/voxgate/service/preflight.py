"""`voxgate config check --deep`: the daemon's start-up checks, without starting the daemon.

The schema check says a config is well formed; the daemon can still stop at start on what the
config refers to (a mistyped model card, a cohort of another model, a missing key, a damaged
voiceprint database, a microphone that is not there). This runs the functions `voxgate run`
runs at start (Daemon._start, build_stages' parts, UserServices.prepare), each on its own so
that every problem is reported, not only the first, with the exit code the daemon would stop
with. It opens no audio stream (the input device is looked up, as at start, but not read),
connects to no broker and listens on no port.

It changes none of the door's files. The daemon's start writes to its data files (it creates
missing databases, repairs a torn audit line, moves a damaged nonce file aside), and a check
run as root would leave root-owned files the service's user cannot write. So the data files
(those `service.datadir.data_files` lists) are copied into a scratch folder first and the start-up
functions open the copies; messages name the real paths. Secrets and model files are only
read, from where the config says.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voxgate.config import VoxgateConfig

log = logging.getLogger(__name__)

# The daemon's exit codes (service/loop.py, docs/service.md).
EX_UNAVAILABLE = 69
EX_CANTCREAT = 73
EX_IOERR = 74
EX_CONFIG = 78
EX_SOFTWARE = 70  # an error the daemon does not expect at start (it would stop with a traceback)

AUDIT_TAIL_BYTES = 64 * 1024  # of the audit log, copied: opening it reads only its last line
# Free space kept beside the copies for what the start-up functions write to them (new
# databases, WAL pages, an audit line): a few hundred kB; short of it, a copy cut short or a
# write refused looked like a damaged or full door (see CannotCheck).
SCRATCH_ROOM = 4 * 1024 * 1024
# A database that changes while copied is copied again (a door writes a few rows per attempt:
# under a writer committing without pause, 1759 retries in 7463 copies and none gave up).
COPY_TRIES = 10
COPY_PAUSE_S = 0.05

# Which config key names each secret (read_secret's names), for the report.
SECRET_KEYS = {
    "voiceprint-key": ("speaker", "key_file"),
    "decision-key": ("mqtt", "hmac_key_file"),
    "command-key": ("mqtt", "command_key_file"),
    "mqtt-password": ("mqtt", "password_file"),
    "audit-key": ("audit", "key_file"),
    "audio-key": ("audit", "audio_key_file"),
    "api-token": ("api", "token_file"),
    "fleet-key": ("fleet", "key_file"),
    "fleet-signing-key": ("fleet", "signing_key_file"),
}


class CannotCheck(Exception):
    """The check itself cannot be made (no room for the copies): nothing is said about the
    door. Opening copies cut short, the start-up functions reported the door's healthy files
    as empty or damaged, with their advice to restore or delete them."""


@dataclass(frozen=True)
class Problem:
    key: str  # the config key whose value is wrong, e.g. "speaker.model"
    path: str  # what it names (or the default the daemon uses when it is not set)
    message: str  # the daemon's own message
    exit_code: int  # what `voxgate run` stops with

    def __str__(self) -> str:
        return f"{self.key} ({self.path}): {self.message} [voxgate run: exit {self.exit_code}]"


class _Scratch:
    """Copies of the door's data files in a temporary folder, and the config pointing at
    them. Each folder holding data files gets a scratch folder of its own, so the file
    names stay as they are."""

    def __init__(self, cfg: VoxgateConfig, root: Path) -> None:
        from voxgate.service.datadir import data_files

        self.root = root
        self.folders: dict[Path, Path] = {}  # real folder -> scratch folder
        self.cfg = self._redirect(cfg)
        files = data_files(cfg)
        need = sum(_copy_size(p) for p in files) + SCRATCH_ROOM
        if shutil.disk_usage(root).free < need:
            raise self._full(f"the copies of the door's data files need about {need // 1024} kB")
        for path in files:
            if path.name.endswith("-wal") and path.with_name(path.name[:-4]) in files:
                continue  # copied with its database, as of the same moment
            self._copy(path)

    def _full(self, why: str) -> CannotCheck:
        where = self.root.parent
        free = shutil.disk_usage(where).free // 1024
        return CannotCheck(
            f"{why}, and the temporary folder {where} has {free} kB free; free some space "
            "there or set TMPDIR to a folder with room"
        )

    def place(self, path: Path | str) -> Path:
        real = Path(path).absolute()
        if real.parent not in self.folders:
            self.folders[real.parent] = self.root / str(len(self.folders))
            self.folders[real.parent].mkdir()
        return self.folders[real.parent] / real.name

    def _redirect(self, cfg: VoxgateConfig) -> VoxgateConfig:
        data = Path(cfg.data_dir).absolute()
        scratch_data = self.root / "data"
        scratch_data.mkdir()
        self.folders[data] = scratch_data
        d = cfg.model_dump()
        d["data_dir"] = scratch_data
        for section, key in (
            ("speaker", "database"),
            ("lockout", "path"),
            ("audit", "path"),
            ("fleet", "state_file"),
        ):
            if d[section][key] is not None:
                d[section][key] = self.place(d[section][key])
        if d["audit"]["audio_dir"] is not None:
            d["audit"]["audio_dir"] = self.place(d["audit"]["audio_dir"])
        return VoxgateConfig.model_validate(d)

    def _copy(self, real: Path) -> None:
        """The same kind of thing at the scratch place: a copy of a file (the audit log's
        end only), an empty folder for a folder. Shared-memory files are left: SQLite
        rebuilds them from the database and its WAL."""
        target = self.place(real)
        try:
            if real.name.endswith("-shm") or not (real.exists() or real.is_symlink()):
                return
            if real.is_dir():
                target.mkdir(exist_ok=True)
            elif real.name.endswith(".jsonl"):
                _copy_tail(real, target, AUDIT_TAIL_BYTES)
            else:
                wal = real.with_name(real.name + "-wal")
                self._copy_as_of_one_moment([(real, target), (wal, self.place(wal))])
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # the copy cut short
                raise self._full(f"{real} could not be copied ({exc.strerror})") from None
            log.debug("preflight: not copied: %s: %s", real, exc)  # the access check names it

    def _copy_as_of_one_moment(self, pairs: list[tuple[Path, Path]]) -> None:
        """Copy a database and its WAL as they were at one moment. A running door writes
        them: a database copied before a checkpoint beside its WAL copied after read as
        "malformed" (15 of 4956 copies under a fast writer). Each file is compared with its
        copy after both are made; equal, the copies are the files as they were between the
        two comparisons, which SQLite keeps consistent at every moment (as after a power
        cut). Timestamps cannot tell: they tick in milliseconds, and a WAL is rewritten in
        place at the same size."""
        for _ in range(COPY_TRIES):
            for real, target in pairs:
                if real.exists():
                    shutil.copyfile(real, target)
                else:
                    target.unlink(missing_ok=True)
            if all(_same(real, target) for real, target in pairs):
                return
            time.sleep(COPY_PAUSE_S)
        raise CannotCheck(
            f"{pairs[0][0]} changed each time it was copied ({COPY_TRIES} tries): the door is "
            "writing it; run the check again"
        )

    def real_text(self, text: str) -> str:
        """`text` with the scratch folders named as the real ones."""
        for real, scratch in sorted(self.folders.items(), key=lambda kv: -len(str(kv[1]))):
            text = text.replace(str(scratch), str(real))
        return text


def _same(real: Path, copy: Path) -> bool:
    """Byte for byte (filecmp's cache trusts size and mtime, which is what cannot tell)."""
    if not real.exists():
        return not copy.exists()
    if not copy.exists():
        return False
    with open(real, "rb") as a, open(copy, "rb") as b:
        while True:
            x, y = a.read(1 << 20), b.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def _copy_size(path: Path) -> int:
    """Bytes _copy writes for `path` (0 for what it does not copy)."""
    try:
        size = path.stat().st_size if path.is_file() and not path.name.endswith("-shm") else 0
    except OSError:
        return 0
    return min(size, AUDIT_TAIL_BYTES) if path.name.endswith(".jsonl") else size


def _copy_tail(src: Path, dst: Path, limit: int) -> None:
    """The last whole lines of `src` within `limit` bytes (and a torn end, as it is)."""
    with open(src, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            f.seek(size - limit)
            f.readline()  # a part line
        data = f.read()
    dst.write_bytes(data)


def _secret_named(cfg: VoxgateConfig, message: str) -> tuple[str, str] | None:
    """The config key and file of the secret a message names ("secret 'NAME' ...")."""
    for name, (section, field) in SECRET_KEYS.items():
        if f"secret '{name}'" in message:
            path = getattr(getattr(cfg, section), field)
            return f"{section}.{field}", _shown(path, f"credential {name}")
    return None


def _tls_named(cfg: VoxgateConfig, message: str) -> tuple[str, str] | None:
    """The TLS setting a message names ("mqtt.tls.ca_file: ...", "mqtt.tls: cannot load
    certificates"): shown under "mqtt" with the broker's address, the admin looked for the
    broker and not for the file."""
    m = re.search(r"\bmqtt\.tls(?:\.(ca_file|cert_file|key_file))?:", message)
    if m is None or cfg.mqtt.tls is None:
        return None
    tls = cfg.mqtt.tls
    if m.group(1):
        return f"mqtt.tls.{m.group(1)}", str(getattr(tls, m.group(1)))
    files = [str(f) for f in (tls.ca_file, tls.cert_file, tls.key_file) if f is not None]
    return "mqtt.tls", ", ".join(files) or "the system's CA certificates"


def _shown(path: Any, unset: str) -> str:
    return str(path) if path is not None else unset


class _Run:
    def __init__(self, cfg: VoxgateConfig, scratch: _Scratch) -> None:
        self.cfg = cfg  # the real one, for the paths shown
        self.scratch = scratch
        self.problems: list[Problem] = []

    def add(self, key: str, path: Any, message: str, code: int) -> None:
        """One problem; one about a secret is shown under the secret's own key and file."""
        msg = self.scratch.real_text(message)
        key, path = _secret_named(self.cfg, msg) or _tls_named(self.cfg, msg) or (key, path)
        self.problems.append(Problem(key, self.scratch.real_text(str(path)), msg, code))

    @contextlib.contextmanager
    def step(self, key: str, path: Any) -> Iterator[None]:
        """Record what the daemon would stop with for an error raised in the block, with
        its exit code as in Daemon._start."""
        from voxgate.audio import AudioError
        from voxgate.audit import AuditError
        from voxgate.config.secrets import SecretError
        from voxgate.service.keep import KeepError
        from voxgate.service.stages import StageUnavailable
        from voxgate.service.users import StartError

        try:
            yield
        except (SecretError, KeepError, AuditError) as exc:
            self.add(key, path, str(exc), EX_CONFIG)
        except (StageUnavailable, StartError) as exc:
            code = EX_CONFIG if exc.config else EX_UNAVAILABLE
            self.add(key, path, str(exc), code)
        except AudioError as exc:
            self.add(key, path, f"audio input: {exc}", EX_IOERR)
        except OSError as exc:
            why = exc.strerror or str(exc)
            if exc.errno == errno.EROFS:
                why += " (an SD card the kernel remounted read-only after errors? see dmesg)"
            where = f"{exc.filename}: " if exc.filename else ""
            self.add(key, path, where + why, EX_CANTCREAT)
        except Exception as exc:
            self.add(key, path, f"{type(exc).__name__}: {exc}", EX_SOFTWARE)


def check(cfg: VoxgateConfig, log_handler: logging.Handler | None = None) -> list[Problem]:
    """Every problem `voxgate run` would stop at with this config, in start-up order; empty
    when it would start (as far as can be told without audio, broker or port).
    `log_handler`: where what the start-up functions log is shown; the scratch folder's
    paths are named as the real ones there too. Raises CannotCheck."""
    with _stopped_by_signals(), _scratch_folder() as tmp:
        scratch = _Scratch(cfg, tmp)
        run = _Run(cfg, scratch)
        closers: list[Callable[[], None]] = []
        real_paths = _RealPaths(scratch)
        if log_handler is not None:
            log_handler.addFilter(real_paths)
        try:
            _check_all(cfg, scratch.cfg, run, closers)
        finally:
            for close in reversed(closers):
                with contextlib.suppress(Exception):
                    close()
            if log_handler is not None:
                log_handler.removeFilter(real_paths)
        return run.problems


@contextlib.contextmanager
def _scratch_folder() -> Iterator[Path]:
    try:
        folder = tempfile.TemporaryDirectory(prefix="voxgate-check-")
    except OSError as exc:
        raise CannotCheck(
            f"cannot make a folder for the copies of the door's data files in "
            f"{tempfile.gettempdir()} ({exc.strerror}); set TMPDIR to a folder with room"
        ) from None
    with folder as tmp:
        yield Path(tmp)


@contextlib.contextmanager
def _stopped_by_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP (a `timeout`, a closed SSH session) raise SystemExit(128 + signal)
    while the copies exist, so that they are removed: the default action killed the check
    and left the copies of the voiceprints, lockout state and audit log in the temporary
    folder. Ctrl-C already raises KeyboardInterrupt."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stops = (signal.SIGTERM, signal.SIGHUP)

    def stop(signum: int, frame: Any) -> None:
        for s in stops:  # a second signal must not cut the removal short
            signal.signal(s, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    before = {s: signal.signal(s, stop) for s in stops}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


class _RealPaths(logging.Filter):
    def __init__(self, scratch: _Scratch) -> None:
        super().__init__()
        self.scratch = scratch

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        real = self.scratch.real_text(text)
        if real != text:  # about a copy ("moved to ..."): what start would do to the file
            real = "at start: " + real
        record.msg, record.args = real, None
        return True


def _can_be_made(folder: Path) -> None:
    """A folder made at start must not lie under a file: that start stops with 73, and the
    check called such a door fine."""
    for up in folder.absolute().parents:
        if up.exists():
            if not up.is_dir():
                raise NotADirectoryError(
                    errno.ENOTDIR, "a file, not a folder: data_dir cannot be made under it", up
                )
            return


def _check_all(
    real: VoxgateConfig, cfg: VoxgateConfig, run: _Run, closers: list[Callable[[], None]]
) -> None:
    from voxgate.audit import open_log
    from voxgate.lockout import LockoutBook
    from voxgate.service import stages
    from voxgate.service.datadir import check_access, data_files, probe_writable
    from voxgate.service.keep import open_keeper

    # 1. The data folder and the files in it, where they really are (nothing is left
    # there: the probe's file is unnamed and gone when closed). A folder that is not there
    # yet is made at start (by systemd's StateDirectory=, or by the daemon).
    data = Path(real.data_dir)
    with run.step("data_dir", data):
        if data.exists():
            probe_writable(data)
        else:
            _can_be_made(data)
    keys = _file_keys(real)
    for path in data_files(real):
        with run.step(keys.get(path, "data_dir"), path):
            check_access([path])

    # 2. Audit log, lockout state, kept recordings (on the copies).
    audit_path = real.audit.path or data / "audit.jsonl"
    with run.step("audit.path", audit_path):
        open_log(cfg)
    with run.step("lockout.path", real.lockout.path or data / "lockout.db"):
        closers.append(
            LockoutBook(cfg.lockout.path or cfg.data_dir / "lockout.db", cfg.lockout).close
        )
    if cfg.audit.keep_audio:
        with run.step(
            "audit.audio_key_file", _shown(cfg.audit.audio_key_file, "credential audio-key")
        ):
            open_keeper(cfg)

    # 3. The audio input: looked up as at start (a microphone by name or index, a file
    # opened and its format read), never read from. Standard input is whatever `voxgate
    # run` is given, so nothing can be said about it here.
    if cfg.audio.source != "stdin":
        from voxgate.audio import open_source

        mic = cfg.audio.source == "mic"
        value = cfg.audio.device if mic else cfg.audio.path
        with run.step("audio.device" if mic else "audio.path", _shown(value, "the default input")):
            closers.append(open_source(cfg.audio).close)

    # 4. The stages build_stages makes, each on its own.
    sp = cfg.speaker
    vp_key: bytes | None = None
    embedder = store = None
    with run.step("speaker.key_file", _shown(sp.key_file, "credential voiceprint-key")):
        vp_key = stages.speaker_key(cfg)
    with run.step("speaker.model", _shown(sp.model, "the shipped default")):
        embedder = stages.speaker_model(cfg)
    db = real.speaker.database or data / "voiceprints.db"
    if vp_key is not None:
        with run.step("speaker.database", db):
            store = stages.speaker_store(cfg, vp_key)
            closers.append(store.close)
    if embedder is not None:
        with run.step("speaker.cohort", _shown(sp.cohort, "the one shipped for the model")):
            stages.speaker_scorer(cfg, store, embedder)
    if cfg.challenge.mode != "off":
        stt = cfg.stt
        if stt.backend == "deepspeech":
            stt_key, stt_path = "stt.deepspeech_model", str(stt.deepspeech_model)
        else:
            stt_key, stt_path = "stt.backend", stt.backend
        if cfg.challenge.mode == "passphrase":
            stt_key += ", challenge.passphrase"
        with run.step(stt_key, stt_path):
            stages.challenge_recognizer(cfg)
        with run.step("data_dir", data / "replay.db"):
            closers.append(stages.replay_store(cfg).close)
    if cfg.mqtt.enabled:
        with run.step("mqtt", f"{cfg.mqtt.host}:{cfg.mqtt.port}"):
            stages.mqtt_link(cfg)  # built, not started: no connection
    with run.step("data_dir", data / "decision-seq.json"):
        stages.decision_issuer(cfg)

    # 5. Fleet sync and the admin API, each on its own: keys, token, state file, broker
    # credentials and TLS files. Without a store (its key failed, said above) neither can
    # be built.
    if store is not None and embedder is not None:
        from voxgate.service.users import UserServices

        for part, other in (("fleet", "api"), ("api", "fleet")):
            if not getattr(cfg, part).enabled:
                continue
            alone = cfg.model_copy(
                update={other: getattr(cfg, other).model_copy(update={"enabled": False})}
            )
            users = UserServices(alone, store, embedder, lambda *a, **k: None)
            with run.step(part, _part_path(real, part)):
                users.prepare()
            if users.agent is not None:
                closers.append(users.agent.state.close)


def _part_path(cfg: VoxgateConfig, part: str) -> str:
    if part == "fleet":
        from voxgate.fleet import state_path

        return str(state_path(cfg))
    return f"{cfg.api.host}:{cfg.api.port}"


def _file_keys(cfg: VoxgateConfig) -> dict[Path, str]:
    """The config key that names each of the daemon's data files (with its -wal, -shm)."""
    data = Path(cfg.data_dir)
    named = {
        "speaker.database": cfg.speaker.database or data / "voiceprints.db",
        "lockout.path": cfg.lockout.path or data / "lockout.db",
        "fleet.state_file": cfg.fleet.state_file or data / "fleet.db",
    }
    keys: dict[Path, str] = {}
    for key, path in named.items():
        for end in ("", "-wal", "-shm"):
            keys[Path(path).with_name(Path(path).name + end)] = key
    audit = Path(cfg.audit.path or data / "audit.jsonl")
    keys[audit] = keys[audit.with_name(audit.name + ".anchor")] = "audit.path"
    keys[Path(cfg.audit.audio_dir or data / "audio")] = "audit.audio_dir"
    return keys
