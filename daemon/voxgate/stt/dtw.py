"""Connected-digit alignment against a speaker's own digit templates (level-building DTW).

Every path consumes each input frame exactly once, so two paths over the same input have
costs on the same scale. The liveness score is then a ratio test: the cost of the best path
that spells the prompt minus the cost of the best path through ANY digit string (1..N+2
digits), per frame. Zero means "the prompt is the best explanation of this audio".

The search is frame-synchronous (all levels advance together), so it runs while the person
speaks and only the read-out is left when speech ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INF = np.float32(1e30)
EXTRA_LEVELS = 2  # the free search may also explain the audio with up to N+2 digits


@dataclass(frozen=True)
class Alignment:
    forced: float  # per-frame cost of the best path spelling the prompt
    free: float  # per-frame cost of the best path through any digit string
    free_digits: str  # that best free string
    frames: int

    @property
    def margin(self) -> float:
        """forced - free per frame (>= 0; 0 when the prompt is the best free string)."""
        return self.forced - self.free


class StreamingAligner:
    """Feed feature frames with push(); finish() gives the Alignment."""

    def __init__(
        self,
        refs: list[np.ndarray],
        labels: list[str],
        prompt: str,
        extra_levels: int = EXTRA_LEVELS,
        repeat_penalty: float = 0.0,
    ) -> None:
        missing = set(prompt) - set(labels)
        if missing:
            raise KeyError(f"no templates for {''.join(sorted(missing))}")
        self.prompt = prompt
        self.labels = np.array(labels)
        self.lengths = np.array([len(r) for r in refs])
        lmax = int(self.lengths.max())
        dim = refs[0].shape[1]
        r_count = len(refs)
        self.refs = np.zeros((r_count, lmax, dim), dtype=np.float32)
        pad = np.zeros((r_count, lmax), dtype=np.float32)
        for i, r in enumerate(refs):
            self.refs[i, : len(r)] = r
            pad[i, len(r) :] = INF
        self.pad = pad
        self.ref_sq = (self.refs * self.refs).sum(2)
        self.n_free = len(prompt) + extra_levels
        k = self.n_free + len(prompt)
        # Level k takes its entry from level pred[k] (-1: the start of the utterance).
        self.pred = np.array([-1, *range(self.n_free - 1), -1, *range(self.n_free, k - 1)])
        # Forced levels may only use templates of their prompt digit.
        mask = np.zeros((k, r_count, 1), dtype=np.float32)
        for j, ch in enumerate(prompt):
            mask[self.n_free + j, self.labels != ch] = INF
        self.mask = mask
        self.pen = np.float32(repeat_penalty)
        self.last = self.lengths - 1
        self.prev = np.full((k, r_count, lmax), INF, dtype=np.float32)
        self.src = np.zeros((k, r_count, lmax), dtype=np.int32)
        self.ends = np.full(k, INF, dtype=np.float32)
        self.who: list[np.ndarray] = []
        self.began: list[np.ndarray] = []
        self.t = 0

    def push(self, feats: np.ndarray) -> None:
        for x in np.asarray(feats, dtype=np.float32):
            self._step(x)

    def _step(self, x: np.ndarray) -> None:
        d = (x @ x) + self.ref_sq - 2.0 * (self.refs @ x)
        dist = np.sqrt(np.maximum(d, 0.0)) + self.pad  # (R, Lmax)
        start = np.float32(0.0) if self.t == 0 else INF
        entry = np.where(self.pred < 0, start, self.ends[np.maximum(self.pred, 0)])
        prev, src = self.prev, self.src
        stay = prev + self.pen
        adv = np.empty_like(prev)
        adv[:, :, 0] = entry[:, None]
        adv[:, :, 1:] = prev[:, :, :-1]
        adv_src = np.empty_like(src)
        adv_src[:, :, 0] = self.t
        adv_src[:, :, 1:] = src[:, :, :-1]
        skip = np.full_like(prev, INF)
        skip[:, :, 2:] = prev[:, :, :-2]
        skip_src = np.zeros_like(src)
        skip_src[:, :, 2:] = src[:, :, :-2]
        best = np.minimum(np.minimum(stay, adv), skip)
        new_src = np.where(best == adv, adv_src, np.where(best == skip, skip_src, src))
        self.prev = np.minimum(best + dist[None] + self.mask, INF)
        self.src = new_src
        rows = np.arange(len(self.last))
        ends = self.prev[:, rows, self.last]  # (K, R)
        who = ends.argmin(1)
        self.ends = ends[np.arange(len(who)), who]
        self.who.append(who.astype(np.int16))
        self.began.append(self.src[np.arange(len(who)), who, self.last[who]])
        self.t += 1

    def finish(self) -> Alignment:
        if self.t == 0:
            return Alignment(float("inf"), float("inf"), "", 0)
        free_ends = self.ends[: self.n_free]
        levels = int(free_ends.argmin()) + 1
        forced = float(self.ends[-1])
        free = float(free_ends[levels - 1])
        digits = []
        end = self.t  # frames consumed
        for k in range(levels - 1, -1, -1):
            w = int(self.who[end - 1][k])
            digits.append(str(self.labels[w]))
            end = int(self.began[end - 1][k])
            if end <= 0 and k > 0:
                break
        if forced >= INF:
            forced = float("inf")
        return Alignment(forced / self.t, free / self.t, "".join(reversed(digits)), self.t)


def align(
    x: np.ndarray, refs: list[np.ndarray], labels: list[str], prompt: str, **kw: float
) -> Alignment:
    """Whole-utterance form of StreamingAligner."""
    a = StreamingAligner(refs, labels, prompt, **kw)  # type: ignore[arg-type]
    a.push(x)
    return a.finish()
