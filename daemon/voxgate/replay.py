"""Replay detection: fingerprint every answer and reject near-duplicates of earlier ones.

A recording played back at the door is the same waveform as an earlier attempt (perhaps
louder or quieter, a little earlier or later). A live person never says the same thing
twice in exactly the same way. The fingerprint is one 32-bit word per 10 ms frame: the
signs of the band-energy differences across frequency and time on a log-mel scale, which
do not change with volume. Two answers are compared at every offset up to MAX_SHIFT frames;
similarity = 1 - bit error rate. Only fingerprints are stored (SQLite), never audio, each
under a salted hash of the user whose voice the answer matched, so that erasing the user
drops them (forget, forget_user_in_file).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxgate.logs import LogLimit
from voxgate.names import person_key
from voxgate.ownership import what_to_do
from voxgate.replay_index import COARSE_MIN, GAP, FingerprintIndex, popcount
from voxgate.stt.mfcc import MfccSpec, log_mel

log = logging.getLogger(__name__)

SPEC = MfccSpec(win_ms=32.0, step_ms=10.0, n_mels=33, f_min=200.0, f_max=5000.0)
MAX_SHIFT = 30  # frames (+-300 ms) searched when comparing two answers
MIN_FRAMES = 20  # shorter answers (200 ms of speech) are too short to fingerprint
LOUD_DB = 30.0  # frames this far below the loudest are pauses
SUB_HOP = (0, 40, 80, 120)  # samples (2.5 ms steps) tried when comparing a new answer
DEFAULT_THRESHOLD = 0.85  # similarity at or above this is a replay (docs/challenge.md)
SCHEMA_VERSION = 2  # 2: rows carry the matched user's key (user_key); schema 1 files migrate
# What the file's PRAGMA user_version says for schema 2 too. Schema 2 only adds a column and
# a table, which the previous release (schema 1) does not read: it refused a file marked 2,
# so rolling the package back one release stopped the door.
FILE_VERSION = 1
# A quiet door retries an erase the file could not take (housekeeping) at most this often:
# while another process holds the file locked, each try waits the 5 s busy timeout.
ERASE_RETRY_S = 30.0
MAX_ROWS = 5000  # stored fingerprints kept at most; the oldest go first (docs/challenge.md)
# Resident memory per frame held (10 ms of answer; the bits and loud flags, kept per row and
# in the prefilter's flat array) at its peak, when the detector opens the store and builds
# the flat array: benchmarks/bench_replay_memory.py --open (docs/challenge.md, "Memory").
BYTES_PER_FRAME = 32
# challenge.replay_memory_mb: with the speaker model and the speech engine (about 90 MB
# resident) it fits the unit's MemoryMax=300M on a Pi Zero 2 W.
DEFAULT_MEMORY_MB = 64
# A row as inserted: created_at, frames, fp, loud, user_key (None: matched nobody, or old).
_HeldRow = tuple[float, int, bytes, bytes, bytes | None]
COARSE_VIEW = SUB_HOP.index(80)  # the sub-hop view the prefilter samples beside view 0
# Stored answers compared exactly per check at most: the prefilter's best. Real answers send
# 1-7 (earlier replays of the same answer); without a bound a store of near-copies sent all.
MAX_EXACT = 8


@dataclass(frozen=True)
class ReplayResult:
    is_replay: bool
    similarity: float  # best similarity to any kept fingerprint (0..1; ~0.5 = unrelated)
    matched_at: float | None  # when the matching earlier attempt was made


Fingerprint = tuple[np.ndarray, np.ndarray]  # (uint32 bits per frame, bool "loud" per frame)


def fingerprint(pcm: np.ndarray) -> Fingerprint:
    """Bits per frame over the recording from its first to its last loud frame.

    Pauses inside stay in (so frames keep their timing) but are flagged quiet and left out
    of comparisons: they carry no identity, and digital silence would make any two
    answers look alike.
    """
    lm = log_mel(np.asarray(pcm), SPEC).astype(np.float64)
    if len(lm) < 2:
        return np.zeros(0, dtype=np.uint32), np.zeros(0, dtype=bool)
    energy = np.log(np.exp(lm).sum(1) + 1e-10)
    loud = energy > energy.max() - np.log(10) * LOUD_DB / 10
    idx = np.flatnonzero(loud)
    lo, hi = max(0, idx[0] - 1), idx[-1] + 1
    lm, loud = lm[lo:hi], loud[lo + 1 : hi]
    band = lm[:, :-1] - lm[:, 1:]
    bits = (band[1:] - band[:-1]) > 0  # (frames-1, 32)
    weights = (1 << np.arange(32, dtype=np.uint64)).astype(np.uint64)
    return (bits.astype(np.uint64) @ weights).astype(np.uint32), loud


def similarity(
    a: Fingerprint, b: Fingerprint, max_shift: int = MAX_SHIFT, offset: int = 0
) -> float:
    """1 - the lowest bit error rate over offsets, on frames loud in either answer (a frame
    loud in one and quiet in the other counts as unlike); at least 80 % of the shorter
    answer's loud frames must overlap. All offsets are compared in one vectorised pass.

    `offset`: frame i of a is compared with frame i + offset (+- max_shift) of b; frames
    before the overlap are left out (the 80 % still counts whole answers)."""
    (fa, la), (fb, lb) = a, b
    if min(int(la.sum()), int(lb.sum())) < MIN_FRAMES:
        return 0.0
    need = int(0.8 * min(int(la.sum()), int(lb.sum())))
    if offset > 0:
        fb, lb = fb[offset:], lb[offset:]
    elif offset < 0:
        fa, la = fa[-offset:], la[-offset:]
    if not len(fa) or not len(fb):
        return 0.0
    n, s = len(fa), max_shift
    # b padded so that window k of length n holds b[i + k - s] for every frame i of a.
    size = n + 2 * s
    pb = np.zeros(size, dtype=np.uint32)
    pl = np.zeros(size, dtype=bool)
    inside = np.zeros(size, dtype=bool)
    m = min(len(fb), size - s)
    pb[s : s + m], pl[s : s + m], inside[s : s + m] = fb[:m], lb[:m], True
    win = np.lib.stride_tricks.sliding_window_view
    bits, loud, real = win(pb, n), win(pl, n), win(inside, n)  # (2s+1, n)
    counted = (loud | la[None, :]) & real
    counts = counted.sum(1)
    errors = np.where(counted, popcount(bits ^ fa[None, :]), 0).sum(1)
    ok = counts >= max(need, 1)
    if not ok.any():
        return 0.0
    return float(1.0 - (errors[ok] / (32.0 * counts[ok])).min())


def far_offsets(a: Fingerprint, b: Fingerprint, k: int = 2) -> list[int]:
    """Up to k offsets beyond +-MAX_SHIFT where the loud frames of a and b line up best.

    The fingerprint starts at the first loud frame, so a click or a cough put before a
    replayed answer moved it by more than MAX_SHIFT and no offset tried matched (a 50 ms
    click 0.4 s ahead hid every replay). The loud/quiet rhythm of the answer still lines
    up: its cross-correlation finds where."""
    la, lb = a[1].astype(np.float32), b[1].astype(np.float32)
    if not len(la) or not len(lb):
        return []
    corr = loud_overlaps(la, lb)  # index j: frame i of a against i + j - (n-1) of b
    found: list[int] = []
    for j in np.argsort(corr, kind="stable")[::-1]:
        if corr[j] <= 0:
            break
        lag = int(j) - (len(la) - 1)
        if all(abs(lag - x) > MAX_SHIFT for x in (0, *found)):
            found.append(lag)
            if len(found) == k:
                break
    return found


# Up to this many frame pairs (about 10 s against 10 s) the direct correlation is as fast.
DIRECT_OVERLAPS = 1_000_000


def loud_overlaps(la: np.ndarray, lb: np.ndarray) -> np.ndarray:
    """np.correlate(lb, la, mode="full") of two 0/1 float32 arrays, exactly, by FFT.

    The direct correlation costs len(la) * len(lb): 10-17 ms for two two-minute enrollment
    takes, per pair (benchmarks/near_duplicate_cost.py). Each value is a count of frames,
    and the FFT's error on these (of the order of eps * log2(size) * frames: at most 2.3e-12
    between two-minute takes) is far below 0.5, so rounding gives the integers np.correlate
    gives; should a value ever be off by more than 0.25, the direct correlation is used."""
    if len(la) * len(lb) < DIRECT_OVERLAPS:
        return np.correlate(lb, la, mode="full")
    n = len(la) + len(lb) - 1
    size = 1 << (n - 1).bit_length()
    spectrum = np.fft.rfft(lb.astype(np.float64), size) * np.fft.rfft(
        la[::-1].astype(np.float64), size
    )
    full = np.fft.irfft(spectrum, size)[:n]
    counts = np.rint(full)
    if np.abs(full - counts).max(initial=0.0) > 0.25:
        return np.correlate(lb, la, mode="full")
    return counts.astype(np.float32)


FAR_PROMISING = 0.65  # a far offset this similar is tried at the sub-hop offsets too


def best_similarity(views: list[Fingerprint], other: Fingerprint) -> float:
    """The highest similarity of any view of a new answer (sub-hop offsets) to `other`:
    near the first loud frames, and at the far offset where the loud-frame rhythm lines up
    best (unrelated answers score about 0.5-0.6 there, so the sub-hop views, which cost
    most, run only when it looks like a match)."""
    best = max(similarity(v, other) for v in views)
    for o in far_offsets(views[0], other, k=1):
        far = similarity(views[0], other, offset=o)
        if far >= FAR_PROMISING:
            far = max(far, *(similarity(v, other, offset=o) for v in views[1:]))
        best = max(best, far)
    return best


class ReplayDetector:
    """Fingerprints of recent attempts in SQLite; check_and_add() compares and remembers.

    The fingerprints are also kept in memory (replay_index): a coarse pass over all of them
    picks the few worth the exact comparison. `exact_only` compares every stored one
    exactly (the benchmark's and the tests' reference). At most `max_rows` are kept."""

    def __init__(
        self,
        path: Path,
        window_s: float,
        threshold: float = DEFAULT_THRESHOLD,
        *,
        max_rows: int = MAX_ROWS,
        max_frames: int | None = None,
        exact_only: bool = False,
    ) -> None:
        self.path = Path(path)
        self.window_s = window_s
        self.threshold = threshold
        self.max_rows = max(1, max_rows)
        # Frames held in memory at most (padding included): the row cap alone let a store
        # of long answers outgrow the unit's MemoryMax at every start (a restart loop).
        self.max_frames = max(
            1, frames_for(DEFAULT_MEMORY_MB) if max_frames is None else max_frames
        )
        self.exact_only = exact_only
        self.last_examined = 0  # stored answers the last check compared exactly
        self._index = FingerprintIndex()
        self._cap_log = LogLimit()  # reaching the cap: one warning, then debug lines
        self._write_log = LogLimit()  # the last write failed (logged once until one works)
        self._memory_id = 0  # ids below 0: answers held in memory only
        # Answers a failed write left in memory (id -> row), saved with the next write that
        # works; and the file's id of those saved since (the cap deletes by it).
        self._unsaved: dict[int, _HeldRow] = {}
        self._saved_as: dict[int, int] = {}
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None  # None: no file yet (it could not be made)
        # While there is no file: the user named by each tag held, in case the file is made
        # under another salt after all (another process made it meanwhile).
        self._names: dict[bytes, str] = {}
        # The file was read at start but cannot be written (a full disk): the user tags
        # erased since, whose rows the file still holds (_catch_up deletes them).
        self._read_only = False
        self._erased: set[bytes] = set()
        self._erase_retry_at = 0.0  # time.monotonic() of the next retry_erased try
        self._read_upto = 0  # the last row id read at start (the -wal may hold more)
        from voxgate.ownership import create_private

        with contextlib.suppress(OSError):
            if self.path.is_file() and self.path.stat().st_size == 0:
                # Cut (a power cut, a failed restore; or a first start on a full disk, by a
                # version that made the file before its schema). Made again rather than
                # refused: it only ever makes the door refuse, a 0-byte file holds nothing
                # to recover, and deleting it is the fix for a damaged one anyway.
                log.warning(
                    "%s is empty (0 bytes: cut by a power cut or a failed restore, or left by "
                    "a start on a full disk); starting an empty replay store: answers given "
                    "before are not recognised as replays",
                    self.path,
                )
        if not self.path.exists():
            try:
                self._create(None)
            except (OSError, sqlite3.Error) as exc:  # a full disk, a read-only folder
                # As when a write fails later: the door goes on and compares answers from
                # memory; stopping it (exit 69, restarted until there is room) kept a door
                # on a full SD card shut for everyone.
                self._salt = os.urandom(16)  # the file gets it when it is made
                self._write_log.allow()  # logged here; the writes that fail until then not
                log.error(
                    "cannot create the replay store %s (%s); nothing was left behind. Answers "
                    "are kept in memory (a replay of one given since this start is refused; a "
                    "restart before the file is made forgets them) and the file is made with "
                    "them by the first write that works; %s",
                    self.path,
                    getattr(exc, "strerror", None) or exc,
                    what_to_do(self.path),
                )
                return
        create_private(self.path)  # fingerprints derived from people's voices
        try:
            self._db = self._connect()
            self._load(self._db)
        except sqlite3.DatabaseError as exc:
            # Malformed or foreign, or a folder in its place: a restart reads the same file.
            if not isinstance(exc, sqlite3.OperationalError) or self.path.is_dir():
                raise ReplayStoreError(
                    f"{self.path}: not a replay-fingerprint database ({exc})", damaged=True
                ) from None
            if "locked" in str(exc):  # another process writes it: not to be read unlocked
                raise ReplayStoreError(f"{self.path}: {exc}", damaged=False) from None
            # The file cannot be opened for writing (a full disk: SQLite cannot make its
            # -wal and -shm; a read-only disk). Stopping here (exit 69, restarted for ever)
            # kept a rebooted door on a full SD card shut for everyone: read it instead.
            self._open_read_only(exc)
        self._index.build()  # at start, not in the first check

    def _open_read_only(self, cause: sqlite3.OperationalError) -> None:
        """Read the fingerprints of a file that cannot be opened for writing; new answers are
        held in memory and the file is opened again by the first write that works (_file).
        Raises ReplayStoreError (not damaged: it may pass) when it cannot be read either."""
        self._index = FingerprintIndex()  # whatever a failed _load had added
        try:
            db, skipped = self._read_only_connection()
            try:
                self._salt = _salt(db)
                self._load(db, writable=False)
                self._read_upto = int(
                    db.execute("SELECT MAX(id) FROM fingerprints").fetchone()[0] or 0
                )
            finally:
                db.close()
        except sqlite3.DatabaseError as exc:
            self._index = FingerprintIndex()
            raise ReplayStoreError(
                f"{self.path}: cannot open the replay store ({_why(self.path, cause)}) "
                f"nor read it ({exc})",
                damaged=False,
            ) from None
        self._read_only = True
        self._write_log.allow()  # logged here; the writes that fail until then are not
        unread = (
            f"; {self.path.name}-wal holds {skipped} bytes not yet merged into the file, "
            "unreadable without room for its -shm: the answers in it are not checked for "
            "replays until then"
            if skipped
            else ""
        )
        log.error(
            "replay store %s: %s; its %d fingerprint(s) were read and are checked from memory, "
            "new answers are held in memory (a restart before they are saved forgets them) "
            "and saved by the first write that works%s; %s",
            self.path,
            _why(self.path, cause),
            len(self._index),
            unread,
            what_to_do(self.path),
        )

    def _read_only_connection(self) -> tuple[sqlite3.Connection, int]:
        """The file opened read-only, and the bytes of -wal it leaves unread. mode=ro reads
        the -wal too but needs a -shm it can size, which a full disk refuses; immutable=1
        needs none and reads the main file alone: the whole store when the -wal is empty (as
        after a clean stop). Read once and closed: immutable skips locks and change
        detection, so a file another process changes meanwhile may read wrong (uri.html)."""
        uri = self.path.absolute().as_uri()
        db: sqlite3.Connection | None = None
        try:
            db = sqlite3.connect(f"{uri}?mode=ro", uri=True, check_same_thread=False)
            db.execute("SELECT COUNT(*) FROM fingerprints").fetchone()
            return db, 0
        except sqlite3.OperationalError:
            if db is not None:
                db.close()
        wal = self.path.with_name(self.path.name + "-wal")
        skipped = wal.stat().st_size if wal.is_file() else 0
        return sqlite3.connect(f"{uri}?immutable=1", uri=True, check_same_thread=False), skipped

    def _create(self, salt: bytes | None) -> None:
        """Make the missing file, with `salt` (None: a new one). Built under a temporary
        name and linked into place: made in place, a first start on a full disk left a
        0-byte file (SQLite makes the file, then cannot write the schema), which the next
        start took for one cut by a power cut."""
        from voxgate.ownership import create_whole

        self.path.parent.mkdir(parents=True, exist_ok=True)
        create_whole(self.path, lambda db: _prepare(db, self.path, salt))

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), check_same_thread=False)
        try:
            # Fingerprints come from people's voices: one dropped from the window is zeroed,
            # not left readable in a free page (see _scrub for the WAL).
            db.execute("PRAGMA secure_delete=ON")
            db.execute("PRAGMA journal_mode=WAL")
            _prepare(db, self.path)
            self._salt = _salt(db)
        except BaseException:
            db.close()
            raise
        return db

    def _file(self) -> sqlite3.Connection:
        """The open file; made now if the start could not make it (raises as a write does
        while it still cannot: sqlite3.Error or OSError)."""
        if self._db is not None:
            return self._db
        from voxgate.ownership import create_private

        held = self._salt
        made = not self.path.exists()
        if made:
            self._create(held)
        create_private(self.path)
        db = self._connect()
        erased = 0
        if self._read_only:
            try:
                erased = self._catch_up(db)
            except BaseException:
                db.close()
                raise
        self._db = db
        if erased:
            self._scrub()  # their pages, zeroed, into the file; the WAL emptied
        if self._salt != held:
            # Made by another process meanwhile, under its own salt: the answers held are
            # tagged again so that erasing their user still drops them. (Rows it may hold are
            # not read: only the daemon writes fingerprints, and none ran meanwhile.)
            tags = {
                user_key(held, name): user_key(self._salt, name) for name in self._names.values()
            }
            for i in range(len(self._index)):
                row = self._index.row(i)
                if row.user is not None:
                    row.user = tags.get(row.user, row.user)
            self._unsaved = {
                k: (*v[:4], tags.get(v[4], v[4]) if v[4] is not None else None)
                for k, v in self._unsaved.items()
            }
        self._names.clear()
        if made:
            log.warning("replay store %s: made now, once it could be written", self.path)
        self._read_only = False
        return self._db

    def _catch_up(self, db: sqlite3.Connection) -> int:
        """Once the file read at start (_open_read_only) can be written: delete the rows of
        the users erased meanwhile (memory dropped them, the file could not), and read the
        rows the start could not (those in an unmerged -wal). Returns the rows deleted."""
        gone = sum(self._drop_erased(db).values())
        self._add_rows(db, self._read_upto + 1)
        return gone

    def _load(self, db: sqlite3.Connection, writable: bool = True) -> None:
        self._add_rows(db, self._first_kept(db, writable))

    def _add_rows(self, db: sqlite3.Connection, first: int) -> None:
        """Index the file's rows from id `first` on."""
        for row_id, created, blob, mask, user in db.execute(
            "SELECT id, created_at, fp, loud, user_key FROM fingerprints WHERE id >= ? ORDER BY id",
            (first,),
        ):
            try:
                self._index.add(row_id, created, *_decode(blob, mask), user)
            except (ValueError, TypeError) as exc:  # a damaged row: the rest still count
                log.warning(
                    "%s: fingerprint row %s is unreadable, skipped (%s)", self.path, row_id, exc
                )

    def _first_kept(self, db: sqlite3.Connection, writable: bool = True) -> int:
        """The oldest row id that fits both caps, newest first, read without the blobs; the
        older rows are deleted from the file. A store written under larger caps (or by a
        version without the memory budget) would otherwise be read whole into memory."""
        first, frames = 1 << 62, 0  # (none kept, if the newest alone is too big)
        for rows, (row_id, size) in enumerate(
            db.execute("SELECT id, length(fp) FROM fingerprints ORDER BY id DESC"), 1
        ):
            frames += int(size or 0) // 4 + GAP
            if rows > self.max_rows or frames > self.max_frames:
                break
            first = int(row_id)
        else:
            return first
        try:
            if not writable:  # read-only (a full disk): left out all the same
                raise sqlite3.OperationalError("opened read-only")
            with db:
                gone = db.execute("DELETE FROM fingerprints WHERE id < ?", (first,)).rowcount
        except sqlite3.OperationalError as exc:  # a full disk: they are left out all the same
            log.warning("%s: cannot delete fingerprints beyond the caps: %s", self.path, exc)
            gone = -1
        else:
            self._scrub()
        log.warning(
            "%s: the replay store holds more than the caps allow (%d fingerprints, %.1f MB of "
            "memory: challenge.replay_max_stored, challenge.replay_memory_mb): the oldest "
            "were dropped (%s); earlier attempts are no longer checked for replays",
            self.path,
            self.max_rows,
            self.max_frames * BYTES_PER_FRAME / 2**20,
            gone if gone >= 0 else "left in the file",
        )
        return first

    def check_and_add(
        self, pcm: np.ndarray, now: float, keep: bool = True, user: str | None = None
    ) -> ReplayResult:
        """Compare the answer with those kept; then keep it too, unless `keep` is False,
        under `user` (the enrolled user whose voice it matched; forget(user) drops it).

        The daemon keeps only answers whose voice matched someone enrolled: a replay of any
        other answer cannot be granted anyway, and keeping everything let a stranger push
        a genuine answer out under `replay_max_stored` (about 5000 unusable answers, which
        the lockout does not count) and then replay it.
        """
        pcm = np.asarray(pcm)
        fp, loud = fingerprint(pcm)
        # The replay may be shifted by a fraction of the 10 ms hop: compare the answer at
        # four sub-hop offsets too (stored: offset 0 only).
        views = [(fp, loud)] + [fingerprint(pcm[k:]) for k in SUB_HOP[1:]]
        with self._lock:
            if self._prune(now):
                self._retry_erased()
            best, when = 0.0, None
            count = int(loud.sum())
            self.last_examined = 0
            if count >= MIN_FRAMES:
                lo, hi = int(count * 0.8), int(count / 0.8) + 1
                for i in self._to_compare(views, lo, hi):
                    row = self._index.row(i)
                    sim = best_similarity(views, (row.bits, row.loud))
                    self.last_examined += 1
                    if sim > best:
                        best, when = sim, row.created
            # Only answers long enough to compare are kept: a cough (a retry the lockout
            # does not count) would otherwise take a place under the cap.
            if keep and count >= MIN_FRAMES:
                row_id, tag = self._store(now, count, fp, loud, user)
                self._index.add(row_id, now, fp, loud, tag)
                self._cap()
        # A replay needs an earlier attempt it matches: with threshold <= 0 and nothing
        # stored, best stays 0.0 and when None (this crashed on `now - when`).
        if when is not None and best >= self.threshold:
            log.warning(
                "replay: answer matches an attempt from %.0f s ago (%.2f)", now - when, best
            )
            return ReplayResult(True, best, when)
        return ReplayResult(False, best, None)

    def _to_compare(self, views: list[Fingerprint], lo: int, hi: int) -> list[int]:
        """Indices of the stored answers to compare exactly: those with lo..hi loud frames;
        with the prefilter, only those it scores as possible replays (the MAX_EXACT best),
        and always the closest-looking one (so `similarity` still says how near the nearest
        answer came)."""
        if self.exact_only:
            return [i for i in range(len(self._index)) if lo <= self._index.row(i).count <= hi]
        score = self._index.coarse([views[0], views[COARSE_VIEW]], lo, hi)
        if not len(score) or score.max() <= 0:
            return []
        picked = np.flatnonzero(score >= COARSE_MIN)
        if len(picked) > MAX_EXACT:  # the best-scoring ones: the likeliest replays
            picked = picked[np.argsort(-score[picked], kind="stable")[:MAX_EXACT]]
        return sorted(set(picked.tolist()) | {int(score.argmax())})

    def _store(
        self, now: float, count: int, fp: np.ndarray, loud: np.ndarray, user: str | None
    ) -> tuple[int, bytes | None]:
        """Save one fingerprint of `user`'s answer; its row id and user tag. One that cannot
        be saved (disk full, I/O error, no file made yet) is still compared with from memory
        until a restart, under a negative id: refusing the attempt would keep the door shut,
        and forgetting the answer would let its replay pass."""
        failed: Exception | None = None
        try:
            self._file()  # first: a file made now may bring another salt (see _file)
        except (sqlite3.Error, OSError) as exc:  # the file cannot be made yet
            failed = exc
        tag = user_key(self._salt, user) if user else None
        row = (now, count, fp.astype("<u4").tobytes(), np.packbits(loud).tobytes(), tag)
        if failed is None:
            try:
                row_id = self._insert(row)
            except sqlite3.Error as exc:
                failed = exc
        if failed is not None:
            self._write_failed(failed)
            if tag is not None and self._db is None:
                self._names[tag] = user or ""
            self._memory_id -= 1
            self._unsaved[self._memory_id] = row
            return self._memory_id, tag
        if self._write_log.active:
            held = self._save_held()
            log.warning(
                "replay store %s: writable again; %d answer(s) held in memory saved",
                self.path,
                held,
            )
            self._write_log.reset()
        return row_id, tag

    def _insert(self, row: _HeldRow) -> int:
        db = self._db
        assert db is not None  # _store made it
        with db:
            cur = db.execute(
                "INSERT INTO fingerprints (created_at, frames, fp, loud, user_key)"
                " VALUES (?, ?, ?, ?, ?)",
                row,
            )
        return int(cur.lastrowid or 0)

    def _save_held(self) -> int:
        """Save the answers a full disk kept in memory (a restart would forget them and
        let their replays pass); how many were saved."""
        saved = 0
        for memory_id, row in sorted(self._unsaved.items(), reverse=True):  # oldest first
            try:
                self._saved_as[memory_id] = self._insert(row)
            except sqlite3.Error as exc:
                self._write_failed(exc)
                break
            del self._unsaved[memory_id]
            saved += 1
        return saved

    def _write_failed(self, exc: Exception) -> None:
        if self._write_log.allow():
            log.error(
                "replay store %s: cannot write (%s); answers are remembered in memory only "
                "until it can be written again, and the door goes on; %s",
                self.path,
                exc,
                what_to_do(self.path),
            )

    def _prune(self, now: float) -> bool:
        """Drop what left the window; False when the file refused the delete (locked, a
        full disk): then nothing else is tried on it in this check (each write to a locked
        file waits for the busy timeout, 5 s)."""
        cutoff = now - self.window_s
        self._index.drop_before(cutoff)
        self._unsaved = {k: v for k, v in self._unsaved.items() if v[0] >= cutoff}
        if self._saved_as:  # only ids the index still holds
            held = {self._index.row(i).row_id for i in range(len(self._index))}
            self._saved_as = {k: v for k, v in self._saved_as.items() if k in held}
        if self._db is None:  # no file yet: nothing in it to prune
            return True
        try:
            with self._db:
                cur = self._db.execute(
                    "DELETE FROM fingerprints WHERE created_at < ?", (now - self.window_s,)
                )
        except sqlite3.Error as exc:  # the rows go at a later prune
            self._write_failed(exc)
            return False
        if cur.rowcount > 0:
            self._scrub()
        return True

    def _scrub(self) -> None:
        """Empty the WAL after rows were deleted: its frames still hold them otherwise.
        Only when something left the window or the cap, not at every attempt."""
        if self._db is None:
            return
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("%s: WAL checkpoint after dropping fingerprints failed: %s", self.path, exc)

    def _cap(self) -> None:
        """Keep at most max_rows fingerprints and max_frames frames, dropping the oldest:
        the check's cost grows with the rows and memory with the frames, and a busy door
        would otherwise keep every attempt for the whole window."""
        extra = len(self._index) - self.max_rows
        over = self._index.frames - self.max_frames
        if extra <= 0 and over <= 0:
            return
        # The oldest in memory, which holds what could not be saved too.
        rows = sorted(
            (self._index.row(i) for i in range(len(self._index))),
            key=lambda r: (r.created, r.row_id < 0, abs(r.row_id)),
        )
        k = max(extra, 0)
        over -= sum(len(r.padded) for r in rows[:k])
        while over > 0 and k < len(rows):
            over -= len(rows[k].padded)
            k += 1
        gone = [r.row_id for r in rows[:k]]
        self._index.drop(set(gone))
        for i in gone:
            self._unsaved.pop(i, None)
        in_file = [
            i if i > 0 else self._saved_as.pop(i) for i in gone if i > 0 or i in self._saved_as
        ]
        if self._db is not None:  # else none was saved (the file is not made yet)
            try:
                with self._db:
                    self._db.executemany(
                        "DELETE FROM fingerprints WHERE id = ?", [(i,) for i in in_file]
                    )
            except sqlite3.Error as exc:
                self._write_failed(exc)
            else:
                self._scrub()
        # One warning, then debug lines: at the cap every attempt drops one.
        first = self._cap_log.allow()
        (log.warning if first else log.debug)(
            "replay store at its cap (%d fingerprints or %.1f MB of memory: "
            "challenge.replay_max_stored, challenge.replay_memory_mb): dropped %d oldest; "
            "earlier attempts are no longer checked for replays%s",
            self.max_rows,
            self.max_frames * BYTES_PER_FRAME / 2**20,
            len(gone),
            " (further drops are logged at debug level)" if first else "",
        )

    def forget(self, user: str) -> int:
        """Drop the fingerprints of `user`'s answers (the user was erased): from memory at
        once, and from the file, zeroed (secure_delete) and the WAL emptied. Never raises:
        when the file cannot take the delete now (a full disk, locked by another process),
        its rows are deleted by the first write that works, or at the latest by close (see
        _drop_erased). Returns how many were dropped: those memory held, or the rows deleted
        from the file now if more (those `voxgate users erase` already dropped from the file
        count too: memory held them)."""
        with self._lock:
            tag = user_key(self._salt, user)
            # Memory first: the erase must hold at once, whatever the file does.
            self._names.pop(tag, None)
            gone = self._index.ids_of(tag)
            self._index.drop(gone)
            for i in gone:  # held in memory by a full disk: never to be saved now
                self._unsaved.pop(i, None)
                self._saved_as.pop(i, None)
            self._index.build()  # here (an erase), not in the loop's next check
            if self._db is None and self._read_only:
                with contextlib.suppress(sqlite3.Error, OSError):
                    self._file()  # writable again? then _catch_up deletes the rows now
            if self._db is None:  # else memory held them all (the file is not made yet)
                if self._read_only:  # not writable yet: _catch_up deletes them when it is
                    self._erased.add(tag)
                return len(gone)
            self._erased.add(tag)  # until the file's rows are deleted
            try:
                erased = self._drop_erased(self._db).get(tag, 0)
            except sqlite3.Error as exc:
                log.error(
                    "replay store %s: cannot delete the replay fingerprints of %s from the "
                    "file now (%s); they were dropped from memory (no longer compared), and "
                    "the file's rows are deleted by the next write that works, or when the "
                    "daemon stops; %s",
                    self.path,
                    user,
                    exc,
                    what_to_do(self.path),
                )
                return len(gone)
            return max(len(gone), erased)

    def _drop_erased(self, db: sqlite3.Connection) -> dict[bytes, int]:
        """Delete the file's rows of the users erased whose rows it still holds (a delete
        that failed, or a file read-only until now); rows deleted per user tag. Raises
        sqlite3.Error as a write does; the tags are then kept for the next try. Empties the
        WAL when rows went, unless the file is not this detector's yet (_catch_up)."""
        if not self._erased:
            return {}
        with db:
            gone = {
                t: db.execute("DELETE FROM fingerprints WHERE user_key = ?", (t,)).rowcount
                for t in self._erased
            }
        self._erased.clear()
        if db is self._db and any(n > 0 for n in gone.values()):
            self._scrub()
        return gone

    def retry_erased(self) -> None:
        """For the daemon's housekeeping: delete the file's rows of users erased while it
        could not be written (a full disk since freed, a lock since released), also when no
        attempt comes to do it. At most every ERASE_RETRY_S."""
        with self._lock:
            if not self._erased or time.monotonic() < self._erase_retry_at:
                return
            self._erase_retry_at = time.monotonic() + ERASE_RETRY_S
            if self._db is None:  # read from a full disk at start: writable again?
                with contextlib.suppress(sqlite3.Error, OSError):
                    self._file()  # _catch_up deletes their rows
                return
            self._retry_erased()

    def _retry_erased(self) -> None:
        """A check or close: delete the rows an erase could not (logged then; a failure
        here is not logged again, and the next write tries again)."""
        if not self._erased or self._db is None:
            return
        with contextlib.suppress(sqlite3.Error):
            n = sum(self._drop_erased(self._db).values())
            log.warning(
                "replay store %s: the file takes writes again; %d replay fingerprint(s) of "
                "erased users deleted from it",
                self.path,
                n,
            )

    def count(self) -> int:
        """Fingerprints held: those in the file and those a failed write holds in memory.
        Without a writable file (not made yet, or read from a full disk), the ones in memory:
        read from the file at start and held since (it said 0, though the file held rows).
        Rows of erased users that wait to be deleted from the file (_erased) are not held."""
        with self._lock:
            if self._db is None:
                return len(self._index)
            erased = list(self._erased)
            query = "SELECT COUNT(*) FROM fingerprints"
            if erased:
                marks = ", ".join("?" * len(erased))
                query += f" WHERE user_key IS NULL OR user_key NOT IN ({marks})"
            saved = int(self._db.execute(query, erased).fetchone()[0])
            return saved + len(self._unsaved)

    def close(self) -> None:
        with self._lock:
            self._retry_erased()  # the last chance: a restart would read the rows back
            if self._erased:
                log.error(
                    "replay store %s: the replay fingerprints of %d erased user(s) are still "
                    "in the file (it could not be written); the next start reads them back "
                    "and they leave with challenge.replay_window_s",
                    self.path,
                    len(self._erased),
                )
            if self._db is not None:
                self._db.close()


def _prepare(db: sqlite3.Connection, path: Path, salt: bytes | None = None) -> None:
    """Make or upgrade the schema (a new file, schema 1, or a development build's 2); a new
    user salt is `salt` (None: a random one)."""
    cur = db.execute("PRAGMA user_version")
    version = cur.fetchone()[0]
    # 2: marked so by this release's development builds; the same layout as 1 + user_key.
    if version not in (0, 1, 2):
        raise ReplayStoreError(f"{path}: schema version {version} is not supported")
    keyed = _has_user_key(db)
    if version != FILE_VERSION or not keyed:
        # One transaction: a failed migration leaves the file as it was.
        db.execute("BEGIN")
        try:
            if version == 0:
                db.execute(
                    "CREATE TABLE IF NOT EXISTS fingerprints ("
                    " id INTEGER PRIMARY KEY, created_at REAL NOT NULL,"
                    " frames INTEGER NOT NULL, fp BLOB NOT NULL, loud BLOB NOT NULL)"
                )
                db.execute("CREATE INDEX IF NOT EXISTS fp_time ON fingerprints(created_at)")
            if not keyed:
                # Schema 2: whose matched voice each row came from (NULL: written before,
                # or by the previous release after a rollback).
                db.execute("ALTER TABLE fingerprints ADD COLUMN user_key BLOB")
                db.execute("CREATE INDEX fp_user ON fingerprints(user_key)")
                db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL)")
                db.execute(
                    "INSERT INTO meta (name, value) VALUES ('user_salt', ?)",
                    (salt or os.urandom(16),),
                )
            db.execute(f"PRAGMA user_version={FILE_VERSION}")
            db.commit()
        except BaseException:
            db.rollback()
            raise
        if version == 1 and not keyed:
            log.info(
                "%s: replay store upgraded to schema %d; fingerprints stored before name "
                "no user (erasing a user cannot drop those: they leave with the window)",
                path,
                SCHEMA_VERSION,
            )


def _why(path: Path, exc: Exception) -> str:
    """SQLite's error, named for what it is when the disk is full: SQLite says "disk I/O
    error" when it cannot size the -shm, which named neither cause nor remedy."""
    from voxgate.ownership import disk_is_full

    if disk_is_full(path):
        return f"the disk is full ({exc})"
    return f"cannot be opened for writing ({exc})"


def frames_for(memory_mb: int) -> int:
    """Frames the replay store may hold in memory within `memory_mb` megabytes."""
    return max(1, (memory_mb << 20) // BYTES_PER_FRAME)


def user_key(salt: bytes, user: str) -> bytes:
    """What a row stores instead of the name: a hash of the folded name (names.person_key,
    as the lockout counts them) keyed with the file's random salt."""
    return hmac.new(salt, person_key(user).encode(), hashlib.sha256).digest()[:16]


def _salt(db: sqlite3.Connection) -> bytes:
    row = db.execute("SELECT value FROM meta WHERE name = 'user_salt'").fetchone()
    if row is None or not isinstance(row[0], bytes) or len(row[0]) < 16:
        raise sqlite3.DatabaseError("the user salt is missing or damaged")
    return bytes(row[0])


def forget_user_in_file(path: Path, user: str) -> int:
    """Drop `user`'s fingerprints from a replay store another process (the daemon) may have
    open; for `voxgate users erase` and the standalone API. Returns how many. A missing
    file is not made, and a schema 1 file (never opened by this version's daemon) holds no
    fingerprint tied to a user."""
    path = Path(path)
    if not path.is_file():
        return 0
    try:
        db = sqlite3.connect(str(path), timeout=5.0, isolation_level=None)
    except sqlite3.Error as exc:
        log.error("cannot open the replay store %s: %s", path, exc)
        return 0
    try:
        if not _has_user_key(db):
            return 0
        db.execute("PRAGMA secure_delete=ON")
        tag = user_key(_salt(db), user)
        gone = db.execute("DELETE FROM fingerprints WHERE user_key = ?", (tag,)).rowcount
        if gone > 0:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return max(0, gone)
    except sqlite3.Error as exc:
        log.error("cannot drop the replay fingerprints of %s from %s: %s", user, path, exc)
        return 0
    finally:
        db.close()


def fingerprints_of(path: Path, user: str) -> list[dict[str, object]]:
    """The fingerprints kept of `user`'s answers, for an export (read only, nothing made):
    when each was stored, its length in frames and its bytes (base64: `fp` one uint32
    per 10 ms frame, `loud` one bit per frame)."""
    import base64

    path = Path(path)
    if not path.is_file():
        return []
    try:
        db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        log.warning("export: cannot open the replay store %s: %s", path, exc)
        return []
    try:
        if not _has_user_key(db):
            return []
        rows = db.execute(
            "SELECT created_at, frames, fp, loud FROM fingerprints WHERE user_key = ? ORDER BY id",
            (user_key(_salt(db), user),),
        ).fetchall()
    except sqlite3.Error as exc:
        log.warning("export: cannot read the replay store %s: %s", path, exc)
        return []
    finally:
        db.close()
    return [
        {
            "stored_at": float(created),
            "frames": int(frames),
            "fp_b64": base64.b64encode(bytes(fp)).decode("ascii"),
            "loud_b64": base64.b64encode(bytes(loud)).decode("ascii"),
        }
        for created, frames, fp, loud in rows
    ]


def _has_user_key(db: sqlite3.Connection) -> bool:
    """Schema 2 (whatever user_version says): the rows have user_key and the salt is kept."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(fingerprints)")}
    return "user_key" in columns


def _decode(blob: bytes, mask: bytes) -> Fingerprint:
    bits = np.frombuffer(blob, dtype="<u4").astype(np.uint32)
    loud = np.unpackbits(np.frombuffer(mask, dtype=np.uint8))[: len(bits)].astype(bool)
    return bits, loud


class ReplayStoreError(Exception):
    """The fingerprint database cannot be opened or has a foreign schema. `damaged`: the
    file itself is unusable (no restart helps)."""

    def __init__(self, message: str, *, damaged: bool = True) -> None:
        super().__init__(message)
        self.damaged = damaged
