"""Watch streams for many callers at the cost of one: a hub polls the store once per replica and fans new rows out.

The hub runs on the gRPC server's event loop (asyncio), so an open stream is a queue, not a thread. It is woken by
this replica's own writes and polls for other replicas' every poll interval, looking back a while each time for rows
whose sequence was taken before a row already delivered but committed after it (two writers), so none is skipped and
none delivered twice. A stream that asks to resume after a sequence reads what it missed from the store first; one
that falls behind (its queue is full) catches up from the store the same way, so a slow reader loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from services.common.contracts.product_classification.v1 import common_pb2
from services.common.errors import ClassificationError
from services.results.store import ClassificationStore

log = logging.getLogger(__name__)
PAGE = 200
SEQUENCE_PAGE = 10_000


class _Subscriber:
    def __init__(self, marketplace: str, depth: int):
        self.marketplace = marketplace
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=depth)
        self.behind = False  # the queue overflowed: catch up from the store

    def offer(self, classification: common_pb2.Classification) -> None:
        if self.behind or (self.marketplace and classification.marketplace != self.marketplace):
            return
        try:
            self.queue.put_nowait(classification)
        except asyncio.QueueFull:
            self.behind = True


class WatchHub:
    def __init__(self, store: ClassificationStore, poll_s: float, lookback_s: float, queue_depth: int = 1000):
        self.store = store
        self.poll_s = poll_s
        self.lookback_s = lookback_s
        self.queue_depth = queue_depth
        self._subscribers: set[_Subscriber] = set()
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="watch-store")  # apart from RPCs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._position = -1  # -1: not read yet
        self._positioned: asyncio.Event | None = None
        self.fell_behind = 0  # streams that overflowed their queue and caught up from the store

    @property
    def open_streams(self) -> int:
        return len(self._subscribers)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        async def begin():
            self._loop = loop
            self._wake = asyncio.Event()
            self._positioned = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name="watch-hub")
        asyncio.run_coroutine_threadsafe(begin(), loop).result(10)

    def stop(self) -> None:
        if self._loop is not None and self._task is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def notify(self) -> None:
        """Something was stored on this replica (called from any thread)."""
        if self._loop is not None and self._wake is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _store(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def _run(self) -> None:
        while self._position < 0:
            try:
                self._position = await self._store(self.store.last_sequence)
            except ClassificationError:
                await asyncio.sleep(self.poll_s)
        self._positioned.set()
        history: deque[tuple[float, int]] = deque()  # (when, position then): the look-back's floor
        sent: set[int] = set()
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            now = time.monotonic()
            history.append((now, self._position))
            while history[0][0] < now - self.lookback_s:
                history.popleft()
            floor = history[0][1]
            try:
                fresh = await self._read_new(floor, sent)
            except ClassificationError:
                continue  # the store is away for a moment: the streams stay, the next poll tries again
            except Exception as error:  # noqa: BLE001  (the hub must outlive any surprise)
                log.warning("watch poll failed", extra={"error": repr(error)})
                continue
            for sequence, classification in fresh:
                sent.add(sequence)
                self._position = max(self._position, sequence)
                if classification is not None:
                    for subscriber in list(self._subscribers):
                        subscriber.offer(classification)
            sent = {sequence for sequence in sent if sequence > floor}

    async def _read_new(self, floor: int, sent: set[int]) -> list[tuple[int, common_pb2.Classification | None]]:
        """(sequence, row) of the rows after floor not sent yet, oldest first. The look-back window is read as
        sequences only (the index); rows are read only for the new ones, and only while a stream is open: with none,
        the hub keeps its position and reads no row (it used to read and parse the whole window on every write)."""
        new = []
        while True:
            page = await self._store(self.store.sequences_after, floor, SEQUENCE_PAGE)
            new.extend(sequence for sequence in page if sequence not in sent)
            if len(page) < SEQUENCE_PAGE:
                break
            floor = page[-1]
        if not self._subscribers:
            return [(sequence, None) for sequence in new]
        rows = {}
        for start in range(0, len(new), PAGE):
            rows.update((c.sequence, c) for c in await self._store(self.store.by_sequences, new[start:start + PAGE]))
        return [(sequence, rows[sequence]) for sequence in new if sequence in rows]

    async def _read_after(self, cursor: int, marketplace: str, skip: set[int]) -> list[common_pb2.Classification]:
        """Rows after cursor not in skip, oldest first, paging past the skipped ones."""
        fresh = []
        while True:
            page = await self._store(self.store.after, cursor, marketplace, PAGE)
            fresh.extend(c for c in page if c.sequence not in skip)
            if len(page) < PAGE:
                return sorted(fresh, key=lambda c: c.sequence)
            cursor = page[-1].sequence

    async def open(self, marketplace: str, after_sequence: int) -> "WatchStream":
        """A stream of the marketplace's classifications (all when empty) stored after after_sequence, or after the
        store's last row now when 0. Open once this returns: nothing stored from then on is missed."""
        await self._positioned.wait()
        subscriber = _Subscriber(marketplace, self.queue_depth)
        self._subscribers.add(subscriber)  # before the start is read, so nothing stored in between is missed
        try:
            start = after_sequence or await self._store(self.store.last_sequence)
        except BaseException:
            self._subscribers.discard(subscriber)
            raise
        return WatchStream(self, subscriber, start, resume=after_sequence != 0)

    def close(self, subscriber: _Subscriber) -> None:
        self._subscribers.discard(subscriber)


class WatchStream:
    """One caller's view of the hub; iterate it, and close it when done (the gRPC handler does both)."""

    def __init__(self, hub: WatchHub, subscriber: _Subscriber, start: int, resume: bool):
        self.hub, self.subscriber, self.start, self.resume = hub, subscriber, start, resume

    def close(self) -> None:
        self.hub.close(self.subscriber)

    async def __aiter__(self) -> AsyncIterator[common_pb2.Classification]:
        subscriber, start = self.subscriber, self.start
        delivered: set[int] = set()
        position = start
        caught_up = not self.resume
        try:
            while True:
                if not caught_up:
                    # Rows before the hub's feed (a resume, or a reader that fell behind): from the store.
                    subscriber.behind = False
                    for classification in await self.hub._read_after(position, subscriber.marketplace, delivered):
                        delivered.add(classification.sequence)
                        position = max(position, classification.sequence)
                        yield classification
                    caught_up = True
                classification = await subscriber.queue.get()
                if subscriber.behind:
                    self.hub.fell_behind += 1
                    while not subscriber.queue.empty():
                        subscriber.queue.get_nowait()
                    caught_up = False
                    continue
                if classification.sequence in delivered or classification.sequence <= start:
                    continue
                delivered.add(classification.sequence)
                position = max(position, classification.sequence)
                if len(delivered) > 10_000:  # keep only what the hub could still send again (its look-back)
                    delivered = {s for s in delivered if s > position - 10_000}
                yield classification
        finally:
            self.close()
