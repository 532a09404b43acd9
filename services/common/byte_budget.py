"""A fixed number of bytes that work takes a share of while it runs: a weighted semaphore, thread-safe.

Preprocessing's decodes hold what they will allocate (services/preprocessing/decode_memory.py); the gateway's calls
hold the listings they carry until their outcome is known (services/gateway/grpc_api.py).
"""

from __future__ import annotations

import collections
import threading
import time


class ByteBudget:
    """`total` bytes; a share is taken at once (try_take), or waited for until a deadline (take), and given back.

    Shares are taken in the order they were asked for: one waiting holds back those asked for after it, even where
    they would fit. Otherwise a large share (a 49-megapixel WebP's decode wants nearly the whole budget) could wait for
    ever behind a stream of small ones, each fitting in what the others leave, and time out every time it is tried."""

    def __init__(self, total: int):
        self.total = total
        self._held = 0
        self._room = threading.Condition()
        self._waiting: collections.deque[object] = collections.deque()  # those waiting, first asked first

    @property
    def held(self) -> int:
        with self._room:
            return self._held

    def fits(self, share: int) -> int:
        """The share as taken: never more than the whole budget (a share that large waits until it is alone)."""
        return min(share, self.total)

    def try_take(self, share: int) -> bool:
        """Takes the share if there is room now and nobody is waiting for room."""
        share = self.fits(share)
        with self._room:
            if self._waiting or self._held + share > self.total:
                return False
            self._held += share
            return True

    def take(self, share: int, deadline: float | None = None, on_wait=None) -> bool:
        """Takes the share once there is room and those who asked before have theirs, waiting until `deadline`
        (time.monotonic()) at most, None: for as long as it takes. False when the deadline came first. `on_wait`,
        if given, is called once, when it has to wait."""
        share = self.fits(share)
        with self._room:
            if not self._waiting and self._held + share <= self.total:
                self._held += share
                return True
            if on_wait is not None:
                on_wait()
            turn = object()
            self._waiting.append(turn)
            try:
                while self._waiting[0] is not turn or self._held + share > self.total:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._room.wait(remaining)
                self._held += share
                return True
            finally:
                self._waiting.remove(turn)
                self._room.notify_all()  # the next in line may fit now, or be first now

    def give_back(self, share: int) -> None:
        with self._room:
            self._held -= self.fits(share)
            self._room.notify_all()
