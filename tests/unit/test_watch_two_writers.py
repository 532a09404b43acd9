"""Watch streams on PostgreSQL with two writers: a row committed late (its sequence taken before a row already
delivered) is still delivered; streams are bounded in total and per caller."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from services.common.contracts.product_classification.v1 import common_pb2, results_pb2
from services.common.errors import ClassificationError, ErrorKind
from services.results.grpc_api import ClassificationResultsServicer, StreamLimits
from services.results.store import ClassificationStore


class Context:
    """The seam: what a gRPC context tells a servicer."""

    def __init__(self, caller="key-a"):
        self.active = True
        self.caller = caller

    def is_active(self):
        return self.active

    def invocation_metadata(self):
        return (("authorization", f"Bearer {self.caller}"),)

    def peer(self):
        return "ipv4:127.0.0.1:5555"


class Recorder:
    def __init__(self, store):
        self.store = store
        self.stored = threading.Condition()


def insert(cursor, listing_id):
    payload = common_pb2.Classification(listing_id=listing_id, marketplace="de-modehaus").SerializeToString()
    cursor.execute("INSERT INTO classifications (idempotency_key, listing_id, marketplace, status, payload, published, "
                   "stored_at) VALUES (%s, %s, 'de-modehaus', 1, %s, FALSE, 0) RETURNING sequence",
                   (f"{listing_id}|k", listing_id, payload))
    return cursor.fetchone()[0]


def test_a_row_committed_late_is_not_skipped(postgres_url):
    store = ClassificationStore(postgres_url)
    store.start()
    insert_early = psycopg.connect(postgres_url)  # writer A: takes its sequence first, commits last
    insert_late = psycopg.connect(postgres_url, autocommit=True)  # writer B
    context = Context()
    seen: list[str] = []
    try:
        servicer = ClassificationResultsServicer(Recorder(store), watch_poll_s=0.05)
        stream = servicer.WatchClassifications(results_pb2.WatchClassificationsRequest(marketplace="de-modehaus"),
                                               context)
        reader = threading.Thread(target=lambda: [seen.append(c.listing_id) for c in stream], daemon=True)
        reader.start()
        time.sleep(0.3)  # the stream takes its starting point
        early_sequence = insert(insert_early.cursor(), "early-sequence")
        late_sequence = insert(insert_late.cursor(), "committed-first")
        assert early_sequence < late_sequence
        deadline = time.monotonic() + 5
        while "committed-first" not in seen and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen == ["committed-first"]
        insert_early.commit()  # the earlier sequence becomes visible after the later one was delivered
        deadline = time.monotonic() + 5
        while "early-sequence" not in seen and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen == ["committed-first", "early-sequence"]  # delivered, and each once
    finally:
        context.active = False
        insert_early.close()
        insert_late.close()
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
