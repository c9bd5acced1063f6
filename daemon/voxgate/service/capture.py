"""Capture thread -> bounded queue -> processing loop.

Reading the microphone must never wait for processing: PortAudio overruns (and loses audio
silently) if nobody reads. So a thread does nothing but read frames into a bounded queue;
when processing falls behind and the queue is full, the *oldest* frame is dropped and
counted (fresh audio matters more at a door than stale audio). File and stdin sources that
are not paced in real time have no such deadline: there the queue blocks the reader instead,
so a recording is processed whole.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class EndOfStream:
    """Returned by FrameQueue.get once the source has ended (error holds why, if it failed)."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class FrameQueue:
    def __init__(self, max_frames: int, drop_oldest: bool = True) -> None:
        self.max_frames = max(1, max_frames)
        self.drop_oldest = drop_oldest
        self._q: deque[np.ndarray] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._error: BaseException | None = None
        self.dropped = 0  # frames
        self.received = 0

    def put(self, frame: np.ndarray) -> bool:
        """Queue a frame; False once the queue is closed (the reader should stop)."""
        with self._cond:
            if self._closed:
                return False
            while len(self._q) >= self.max_frames:
                if self.drop_oldest:
                    self._q.popleft()
                    self.dropped += 1
                    break
                self._cond.wait(0.5)
                if self._closed:
                    return False
            self._q.append(frame)
            self.received += 1
            self._cond.notify_all()
            return True

    def get(self, timeout: float) -> np.ndarray | EndOfStream | None:
        """The next frame; None after `timeout` s without one; EndOfStream when ended."""
        with self._cond:
            if not self._q and not self._closed:
                self._cond.wait(timeout)
            if self._q:
                frame = self._q.popleft()
                self._cond.notify_all()
                return frame
            if self._closed:
                return EndOfStream(self._error)
            return None

    def close(self, error: BaseException | None = None) -> None:
        with self._cond:
            self._closed = True
            self._error = self._error or error
            self._cond.notify_all()

    @property
    def error(self) -> BaseException | None:
        """Why the source ended, once it has failed."""
        with self._cond:
            return self._error

    def __len__(self) -> int:
        return len(self._q)


class Capture:
    """Reads `source.frames(frame_ms)` on its own thread into a FrameQueue."""

    def __init__(self, source: Any, frame_ms: int, queue: FrameQueue) -> None:
        self.source = source
        self.frame_ms = frame_ms
        self.queue = queue
        self.first_frame = threading.Event()
        self.last_frame_at = 0.0  # monotonic
        self._thread = threading.Thread(target=self._run, name="voxgate-capture", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            for frame in self.source.frames(self.frame_ms):
                self.last_frame_at = time.monotonic()
                self.first_frame.set()
                if not self.queue.put(frame):
                    break
        except Exception as exc:  # AudioError, a device unplugged, a broken pipe
            error = exc
            log.error("audio capture stopped: %s", exc)
        finally:
            self.queue.close(error)  # first: the start reads the error once first_frame is set
            self.first_frame.set()

    def stop(self, timeout: float = 1.0) -> None:
        """Ask the source to stop and wait a little; a reader stuck in a blocking read (stdin)
        is a daemon thread and does not hold up the exit."""
        self.queue.close()
        try:
            self.source.close()
        except Exception as exc:
            log.warning("closing the audio source: %s", exc)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()
