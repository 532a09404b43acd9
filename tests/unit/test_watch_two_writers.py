"""Watch streams on PostgreSQL with two writers: a row committed late (its sequence taken before a row already
delivered) is still delivered; streams are bounded in total and per caller."""

from __future__ import annotations

import asyncio
import threading
import time

import psycopg
import pytest

from services.common.contracts.product_classification.v1 import common_pb2
from services.common.errors import ClassificationError, ErrorKind
from services.results.grpc_api import StreamLimits
from services.results.store import ClassificationStore
from services.results.watch import WatchHub


@pytest.fixture
def loop():
    """The event loop the gRPC server would run the hub on, in a thread of its own."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop

    async def cancel_the_rest():
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    asyncio.run_coroutine_threadsafe(cancel_the_rest(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def collect(loop, hub: WatchHub, marketplace: str, after: int, seen: list):
    """Opens a stream (returns once it is open) and reads it into seen until cancelled."""
    stream = asyncio.run_coroutine_threadsafe(hub.open(marketplace, after), loop).result(10)

    async def read():
        async for classification in stream:
            seen.append(classification.listing_id)
    return asyncio.run_coroutine_threadsafe(read(), loop)


def wait_until(condition, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


def insert(cursor, listing_id):
    payload = common_pb2.Classification(listing_id=listing_id, marketplace="de-modehaus").SerializeToString()
    cursor.execute("INSERT INTO classifications (idempotency_key, listing_id, marketplace, status, payload, published, "
                   "stored_at) VALUES (%s, %s, 'de-modehaus', 1, %s, FALSE, 0) RETURNING sequence",
                   (f"{listing_id}|k", listing_id, payload))
    return cursor.fetchone()[0]


def test_a_row_committed_late_is_not_skipped(postgres_url, loop):
    store = ClassificationStore(postgres_url)
    store.start()
    insert_early = psycopg.connect(postgres_url)  # writer A: takes its sequence first, commits last
    insert_late = psycopg.connect(postgres_url, autocommit=True)  # writer B
    hub = WatchHub(store, poll_s=0.05, lookback_s=10)
    seen: list[str] = []
    try:
        hub.start(loop)
        reading = collect(loop, hub, "de-modehaus", 0, seen)
        early_sequence = insert(insert_early.cursor(), "early-sequence")
        late_sequence = insert(insert_late.cursor(), "committed-first")
        assert early_sequence < late_sequence
        wait_until(lambda: "committed-first" in seen)
        assert seen == ["committed-first"]
        insert_early.commit()  # the earlier sequence becomes visible after the later one was delivered
        wait_until(lambda: "early-sequence" in seen)
        assert seen == ["committed-first", "early-sequence"]  # delivered, and each once
        reading.cancel()
    finally:
        hub.stop()
        insert_early.close()
        insert_late.close()
        store.stop()


def test_many_streams_share_one_poll_and_a_resume_or_a_slow_reader_loses_nothing(postgres_url, loop):
    store = ClassificationStore(postgres_url)
    store.start()
    writer = psycopg.connect(postgres_url, autocommit=True)
    hub = WatchHub(store, poll_s=0.05, lookback_s=10, queue_depth=3)  # a tiny queue: readers fall behind at once
    try:
        hub.start(loop)
        first = insert(writer.cursor(), "before-0")
        views = [[] for _ in range(200)]
        readings = [collect(loop, hub, "de-modehaus", 0, seen) for seen in views]
        resumed: list[str] = []
        readings.append(collect(loop, hub, "de-modehaus", first - 1, resumed))  # from before it opened
        assert hub.open_streams == 201
        names = [f"row-{i}" for i in range(30)]
        with psycopg.connect(postgres_url) as batch:  # thirty rows in one commit: more than any queue holds
            for name in names:
                insert(batch.cursor(), name)
        wait_until(lambda: all(len(seen) == 30 for seen in views) and len(resumed) == 31, 15)
        wrong = [seen for seen in views if seen != names]
        assert not wrong, (len(wrong), wrong[:2])  # every reader, every row, once, in order
        assert resumed == ["before-0", *names]
        assert hub.fell_behind >= 200  # the readers did overflow, and caught up from the store
        for reading in readings:
            reading.cancel()
        wait_until(lambda: hub.open_streams == 0)
        assert hub.open_streams == 0
    finally:
        hub.stop()
        writer.close()
        store.stop()


def test_streams_are_bounded_in_total_and_per_caller():
    limits = StreamLimits(total=3, per_caller=2)
    with limits.held("a"), limits.held("a"):
        with pytest.raises(ClassificationError) as raised, limits.held("a"):
            pass
        assert raised.value.kind is ErrorKind.OVERLOADED and "this caller" in raised.value.reason
        with limits.held("b"):
            with pytest.raises(ClassificationError) as raised, limits.held("c"):
                pass
            assert "3 watch streams are open" in raised.value.reason
    with limits.held("a"), limits.held("a"), limits.held("c"):
        pass  # released: capacity is back


def test_with_no_stream_open_the_hub_reads_no_row_and_a_stream_opened_later_gets_what_follows(postgres_url, loop):
    store = ClassificationStore(postgres_url)
    store.start()
    rows_read: list[int] = []
    read_rows = store.by_sequences
    store.by_sequences = lambda sequences: rows_read.extend(sequences) or read_rows(sequences)  # counts, then reads
    writer = psycopg.connect(postgres_url, autocommit=True)
    hub = WatchHub(store, poll_s=0.05, lookback_s=10)
    seen: list[str] = []
    try:
        hub.start(loop)
        unwatched = [insert(writer.cursor(), f"unwatched-{i}") for i in range(20)]
        wait_until(lambda: hub._position >= unwatched[-1])
        assert hub._position == unwatched[-1]  # the hub kept its place...
        assert rows_read == []  # ...from the sequences alone: no row was read for nobody
        reading = collect(loop, hub, "de-modehaus", 0, seen)
        watched = insert(writer.cursor(), "watched")
        wait_until(lambda: "watched" in seen)
        time.sleep(0.3)  # a few more polls: nothing is delivered twice
        assert seen == ["watched"]
        assert rows_read == [watched]  # only the new row was read, once
        reading.cancel()
    finally:
        hub.stop()
        writer.close()
        store.stop()
