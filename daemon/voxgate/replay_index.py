"""Coarse prefilter for the replay check: which stored fingerprints are worth comparing.

The exact comparison (replay.best_similarity) costs about a millisecond per stored answer,
and a busy door keeps thousands. This keeps every stored fingerprint in memory in one flat
array and scores all of them at once with numpy, on a sample of the new answer's frames at
a few alignments; only those that score like a possible replay go on to the exact check,
which still decides.

Alignment: a replay has the same loud/quiet rhythm as its original, so the starts and ends
of their loud runs (syllables, digits) sit at one common lag, wherever a click or a cough
put before or after the answer moved its first frame. Each stored answer gets a vote from
every pair of run starts (and of run ends) with the new answer; the best-voted lag and lag
0 (the answers' first loud frames together, the exact check's main alignment) are checked,
each +- LAG_SLACK frames. The new answer is sampled at two sub-hop views (0 and half a
frame): the stored one is at one sub-hop offset only, and half a frame apart the bits are
least alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SAMPLE_FRAMES = 16  # loud frames of the new answer compared per alignment
LAG_SLACK = 4  # frames either side of each voted lag (run edges move a frame or two)
LAG_BIN = 4  # frames per vote bin
GAP = 2 * LAG_SLACK + 1  # frames of padding between rows in the flat array (one window)
COARSE_MIN = 0.70  # coarse similarity that sends a stored answer to the exact check

_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits per uint32."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(x)
    return _popcount_table(x)


def _popcount_table(x: np.ndarray) -> np.ndarray:
    """Set bits per uint32 by table (numpy < 2, which the project still allows)."""
    return _POP8[np.ascontiguousarray(x, np.uint32)[..., None].view(np.uint8)].sum(
        -1, dtype=np.uint8
    )


PAIRS_PER_PASS = 1 << 16  # (stored edge, new edge) pairs voted on at once (~12 MB)
# Loud runs per answer that vote on the lag (its longest; spoken answers have 7-20, replays
# with clicks or bursts up to 27). Every run voted once: a store of 5000 answers with a
# run every 80 ms (a ticking background) made one check take 18-22 s, past the watchdog.
VOTE_RUNS = 16
SCORE_PAIRS = 4096  # (stored row, lag) pairs the coarse similarity scores at once (~4 MB)


def _vote(
    sides: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], rows: int, span: int, nbin: int
) -> list[np.ndarray]:
    """For `rows` stored rows, the lag that most pairs of run starts and pairs of run ends
    agree on; the same from the starts alone and from the ends alone (0 for a row without
    runs). sides: (the new answer's edges, stored edges, their row 0..rows-1 ascending)
    for the starts, then the ends."""
    votes, pairs = [], []
    for q, edge, edge_row in sides:
        b = (edge[:, None] - q[None, :] + span) // LAG_BIN + 1  # (edges, q): 1..nbin-2
        key = edge_row[:, None] * nbin + b
        votes.append(np.bincount(key.ravel(), minlength=rows * nbin))
        pairs.append((key, b, edge_row))
    # Above any bin's neighbours and itself (3 bins), for starts and ends together too.
    top = 3 * sum(int(v.max(initial=0)) for v in votes) + 1
    best = [np.full(rows, -1, np.int64) for _ in range(3)]
    for side, (key, b, edge_row) in enumerate(pairs):
        if not key.size:
            continue
        first = np.flatnonzero(np.r_[True, edge_row[1:] != edge_row[:-1]])  # row blocks
        rows_here = edge_row[first]
        mine = votes[side]
        near = (mine[key - 1], mine[key], mine[key + 1])
        other = votes[1 - side]
        both = tuple(x + other[key + d] for x, d in zip(near, (-1, 0, 1), strict=True))
        for (before, own, after), out in ((both, best[0]), (near, best[1 + side])):
            # The bin with the most votes; run edges move a frame or two between a
            # recording and its replay, so ties go to the bin whose neighbours have
            # more. (Ranking by the neighbours' votes first would move off a sharp peak.)
            rank = own * top + before + own + after
            packed = (rank * nbin + b).ravel()
            most = np.maximum.reduceat(packed, first * key.shape[1])
            out[rows_here] = np.maximum(out[rows_here], most)
    lags = [((x % nbin) - 1) * LAG_BIN - span + LAG_BIN // 2 for x in best]
    return [np.where(x < 0, 0, lag) for x, lag in zip(best, lags, strict=True)]


def run_edges(loud: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frames where loud runs start and where they end."""
    m = np.concatenate([[False], loud.astype(bool), [False]]).astype(np.int8)
    d = np.diff(m)
    return np.flatnonzero(d == 1), np.flatnonzero(d == -1) - 1


def vote_runs(loud: np.ndarray, k: int = VOTE_RUNS) -> tuple[np.ndarray, np.ndarray]:
    """Starts and ends of the k longest loud runs (ties: the earlier), in order. The longest
    runs are the ones a replay keeps whatever its volume or a burst beside it."""
    starts, ends = run_edges(loud)
    if len(starts) <= k:
        return starts, ends
    keep = np.sort(np.argsort(starts - ends, kind="stable")[:k])
    return starts[keep], ends[keep]


def _longest_runs(row: np.ndarray, length: np.ndarray, k: int = VOTE_RUNS) -> np.ndarray:
    """Indices of the k longest runs of each row (ties: the earlier), in their order; runs
    given in order (row ascending, then position)."""
    order = np.lexsort((np.arange(len(row)), -length, row))
    first = np.flatnonzero(np.r_[True, row[order][1:] != row[order][:-1]])
    rank = np.arange(len(order)) - np.repeat(first, np.diff(np.r_[first, len(order)]))
    return np.sort(order[rank < k])


@dataclass
class _Row:
    row_id: int
    created: float
    count: int  # loud frames
    padded: np.ndarray  # GAP zero frames, then the bits (a piece of the flat array)
    padded_loud: np.ndarray  # GAP False, then the loud flags
    user: bytes | None = None  # the matched user's key (replay.user_key), None: nobody's

    @property
    def bits(self) -> np.ndarray:
        return self.padded[GAP:]

    @property
    def loud(self) -> np.ndarray:
        return self.padded_loud[GAP:]


class FingerprintIndex:
    """The stored fingerprints, in memory, in the order they were added."""

    def __init__(self) -> None:
        self._rows: list[_Row] = []
        self._flat: _Flat | None = None
        self.frames = 0  # frames held, padding included (what the memory budget counts)

    def __len__(self) -> int:
        return len(self._rows)

    def add(
        self,
        row_id: int,
        created: float,
        bits: np.ndarray,
        loud: np.ndarray,
        user: bytes | None = None,
    ) -> None:
        n = min(len(bits), len(loud))
        bits, loud = np.asarray(bits[:n], np.uint32), np.asarray(loud[:n], bool)
        padded = np.concatenate([np.zeros(GAP, np.uint32), bits])
        padded_loud = np.concatenate([np.zeros(GAP, bool), loud])
        row = _Row(row_id, created, int(loud.sum()), padded, padded_loud, user)
        self._rows.append(row)
        self.frames += len(padded)
        if self._flat is not None:
            self._flat.append(row)

    def ids_of(self, user: bytes) -> set[int]:
        """The rows stored under that user's key."""
        return {r.row_id for r in self._rows if r.user == user}

    def drop(self, row_ids: set[int]) -> None:
        self._keep([r.row_id not in row_ids for r in self._rows])

    def drop_before(self, cutoff: float) -> None:
        self._keep([r.created >= cutoff for r in self._rows])

    def _keep(self, keep: list[bool]) -> None:
        if all(keep):
            return
        # Usually the oldest go, which the flat array drops without a rebuild.
        k = keep.index(True) if any(keep) else len(keep)
        self._rows = [r for r, kept in zip(self._rows, keep, strict=True) if kept]
        self.frames = sum(len(r.padded) for r in self._rows)
        if self._flat is not None and self._rows and all(keep[k:]):
            self._flat.drop_first(k)
        else:
            self._flat = None

    def row(self, i: int) -> _Row:
        return self._rows[i]

    def build(self) -> _Flat:
        """The flat copy, made now if need be (the detector makes it at start, else the
        first check did: about a second for 5000 stored 15 s answers)."""
        if self._flat is None:
            self._flat = _Flat(self._rows)
        return self._flat

    def coarse(self, views: list[tuple[np.ndarray, np.ndarray]], lo: int, hi: int) -> np.ndarray:
        """Coarse similarity (0..1) of the new answer (views: sub-hop offsets 0 and half a
        frame) to every stored row; rows whose loud frame count is outside [lo, hi] (the
        exact check's 80 % overlap rule) score 0."""
        flat = self.build()
        score = np.zeros(len(self._rows))
        sel = np.flatnonzero((flat.count >= lo) & (flat.count <= hi))
        loud0 = views[0][1] if views else np.zeros(0, bool)
        if not len(sel) or not loud0.any():
            return score
        both, starts, ends = flat.voted_lags(*vote_runs(loud0), len(loud0), sel)
        # First loud frames together, and the lag the run edges vote for. A loud burst
        # beside a replay raises the level its loud frames are measured against, so its
        # runs start later and end earlier, by a few frames that depend on each run's
        # slopes: the starts and the ends then vote lags either side of the true one. So
        # the starts' and the ends' own lags and their midpoint are checked too, and each
        # voted lag with the windows either side (+- 3 * LAG_SLACK + 1 frames in all).
        mid = (starts + ends) // 2
        step = 2 * LAG_SLACK + 1
        lags = [np.zeros(len(sel), np.int64)]
        lags += [v + d for v in (both, starts, ends, mid) for d in (-step, 0, step)]
        # Each (row, lag) once: without a burst the starts, the ends and both agree.
        at = np.arange(len(sel))
        span = 2 * (int(flat.length.max(initial=0)) + len(loud0) + 4 * step)
        pair = np.unique(np.concatenate([at * span + (lag + span // 2) for lag in lags]))
        which, lag = pair // span, pair % span - span // 2
        best = np.zeros(len(sel))
        # A block of (row, lag) pairs at a time: each takes about 1 kB of windows, so all at
        # once took about 14 kB a stored answer during a check (70 MB for 5000 short ones).
        for i in range(0, len(pair), SCORE_PAIRS):
            w, g = which[i : i + SCORE_PAIRS], lag[i : i + SCORE_PAIRS]
            np.maximum.at(best, w, flat.similarity(views, sel[w], g))
        score[sel] = best
        return score


class _Flat:
    """All rows end to end (GAP padding frames before each, GAP after the last), and the
    run edges of each row (frame numbers within the row; rows ascending)."""

    def __init__(self, rows: list[_Row]) -> None:
        sizes = np.array([len(r.padded) for r in rows], dtype=np.int64)
        self.start = np.cumsum(sizes) - sizes + GAP  # flat index of each row's frame 0
        self.length = sizes - GAP
        self.count = np.array([r.count for r in rows], dtype=np.int64)
        tail = np.zeros(GAP, np.uint32)
        self.bits = np.concatenate([*(r.padded for r in rows), tail])
        # Not a row number per frame (8 bytes a frame, several such arrays at once: 370 MB
        # at start for 5000 stored 15 s answers): the padding frames are known per row.
        self.inside = np.ones(len(self.bits), bool)
        self.inside[(self.start[:, None] - GAP + np.arange(GAP)).ravel()] = False
        self.inside[len(self.bits) - GAP :] = False
        loud = np.concatenate([*(r.padded_loud for r in rows), tail > 0])
        # Run edges of every row at once: padding frames are quiet, so no run crosses rows.
        d = np.diff(loud.astype(np.int8), prepend=0)
        s, e = np.flatnonzero(d == 1), np.flatnonzero(d == -1) - 1
        row_s = np.searchsorted(self.start, s, side="right") - 1
        keep = _longest_runs(row_s, e - s) if len(s) else s
        s, e = s[keep], e[keep]
        self.start_row = self.end_row = row_s[keep]
        self.run_start = s - self.start[self.start_row]
        self.run_end = e - self.start[self.end_row]
        self._windows()

    def _windows(self) -> None:
        win = np.lib.stride_tricks.sliding_window_view
        self.bit_win, self.inside_win = win(self.bits, GAP), win(self.inside, GAP)

    def append(self, row: _Row) -> None:
        i, n = len(self.length), len(row.bits)
        self.start = np.append(self.start, len(self.bits))
        self.length = np.append(self.length, n)
        self.count = np.append(self.count, row.count)
        self.bits = np.concatenate([self.bits, row.bits, np.zeros(GAP, np.uint32)])
        self.inside = np.concatenate([self.inside, np.ones(n, bool), np.zeros(GAP, bool)])
        s, e = vote_runs(row.loud)
        self.run_start, self.run_end = np.append(self.run_start, s), np.append(self.run_end, e)
        self.start_row = np.append(self.start_row, np.full(len(s), i))
        self.end_row = np.append(self.end_row, np.full(len(e), i))
        self._windows()

    def drop_first(self, k: int) -> None:
        """Drop the first k rows (0 < k < rows: dropping all is a rebuild from no rows)."""
        cut = int(self.start[k]) - GAP
        self.bits, self.inside = self.bits[cut:], self.inside[cut:]
        self.start, self.length, self.count = self.start[k:] - cut, self.length[k:], self.count[k:]
        s, e = self.start_row >= k, self.end_row >= k
        self.run_start, self.start_row = self.run_start[s], self.start_row[s] - k
        self.run_end, self.end_row = self.run_end[e], self.end_row[e] - k
        self._windows()

    def voted_lags(
        self, qs: np.ndarray, qe: np.ndarray, n: int, sel: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For the rows `sel` (ascending), the lag (stored frame - new frame) that most pairs
        of run starts and pairs of run ends agree on; the same from the starts alone and
        from the ends alone (0 for a row without runs)."""
        rows = len(sel)
        span = int(self.length.max(initial=0)) + n + LAG_BIN
        nbin = 2 * span // LAG_BIN + 3
        place = np.full(len(self.length), -1, np.int64)
        place[sel] = np.arange(rows)
        sides: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for q, edge, edge_row in (
            (qs, self.run_start, self.start_row),
            (qe, self.run_end, self.end_row),
        ):
            at = place[edge_row]
            keep = at >= 0
            sides.append((q, edge[keep], at[keep]))
        # A block of rows at a time: at most VOTE_RUNS runs a row and a new answer, so each
        # block makes at most PAIRS_PER_PASS pairs a side, and its vote counts (rows x lag
        # bins) stay small whatever the store holds.
        out = [np.zeros(rows, np.int64) for _ in range(3)]
        step = max(1, PAIRS_PER_PASS // VOTE_RUNS**2)
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            block = []
            for q, edge, at in sides:
                i, j = np.searchsorted(at, [r0, r1])
                block.append((q, edge[i:j], at[i:j] - r0))
            for lag, o in zip(_vote(block, r1 - r0, span, nbin), out, strict=True):
                o[r0:r1] = lag
        return out[0], out[1], out[2]

    def similarity(
        self, views: list[tuple[np.ndarray, np.ndarray]], sel: np.ndarray, lag: np.ndarray
    ) -> np.ndarray:
        """Best 1 - bit error rate over lag +- LAG_SLACK, on SAMPLE_FRAMES loud frames of the
        new answer (frames beyond a stored row's ends do not count), for the best view. The
        views share the frames sampled (view 0's loud ones) and so the stored windows."""
        idx = np.flatnonzero(views[0][1])
        pick = idx[np.linspace(0, len(idx) - 1, min(SAMPLE_FRAMES, len(idx))).round().astype(int)]
        # Window k of row r covers stored frames pick[k] + lag[r] - LAG_SLACK .. + LAG_SLACK;
        # a window wholly outside the row is clipped into the padding just before or after it.
        first = pick[None, :] + (lag - LAG_SLACK)[:, None]
        first = np.clip(first, -GAP, self.length[sel][:, None]) + self.start[sel][:, None]
        w_bits, w_in = self.bit_win[first], self.inside_win[first]  # (rows, K, offsets)
        cnt = w_in.sum(1)
        enough = cnt >= (len(pick) + 1) // 2
        cnt = 32.0 * np.maximum(cnt, 1)
        best = np.zeros(len(sel))
        for bits, _ in views:
            if not len(bits):
                continue
            q = bits[np.minimum(pick, len(bits) - 1)]
            err = (popcount(w_bits ^ q[None, :, None]) * w_in).sum(1)
            best = np.maximum(best, np.where(enough, 1.0 - err / cnt, 0.0).max(1))
        return best
