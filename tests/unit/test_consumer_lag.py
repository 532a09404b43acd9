"""Each consume loop exports its backlog per topic (product_classification_kafka_consumer_lag): the records of the
partitions it holds that it has not handled, held ahead ones included, from what the client already knows."""

from __future__ import annotations

import threading
import time

from kafka import TopicPartition
from prometheus_client import REGISTRY

from services.common.kafka import ConsumeLoop
from tests.unit.test_consume_loop_ahead import Consumer, record
from tests.unit.test_consume_loop_fatal import FakeProducer


def lag(topic: str = "t") -> float | None:
    return REGISTRY.get_sample_value("product_classification_kafka_consumer_lag", {"topic": topic})


class Watermarked(Consumer):
    """The seam, with a high watermark per partition as fetches report it, and positions past what was polled."""

    def __init__(self, polls, highwater: dict[int, int | None], partitions=(0,)):
        super().__init__(polls, partitions)
        self.watermarks = dict(highwater)
        self.positions: dict[int, int] = {}

    def poll(self, timeout_ms=0, max_records=None):
        polled = super().poll(timeout_ms, max_records)
        for partition, records in polled.items():
            self.positions[partition.partition] = records[-1].offset + 1
        return polled

    def highwater(self, partition):
        return self.watermarks.get(partition.partition)

    def position(self, partition, timeout_ms=None):
        if partition.partition not in self.positions:
            raise TimeoutError("no position yet")
        return self.positions[partition.partition]


def test_the_lag_counts_what_is_held_ahead_and_what_the_broker_has_beyond_it():
    consumer = Watermarked([[record(0, offset) for offset in range(30)]], {0: 50, 1: 7}, partitions=(0, 1))
    seen: list[float | None] = []
    first_done = threading.Event()
    release = threading.Event()

    def handler(records):
        if not first_done.is_set():
            first_done.set()
            release.wait(5)
        seen.append(lag())
        return []

    loop = ConsumeLoop("lag-test", consumer, ["t"], handler, FakeProducer(), max_batch=10)
    loop.start()
    try:
        assert first_done.wait(5)
        release.set()
        deadline = time.monotonic() + 5
        while len(seen) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        # after the first batch: offsets 10 to 29 held ahead, 30 to 49 at the broker; partition 1 has no position yet
        assert seen[1] == 40 and seen[2] == 30
        assert lag() == 20  # all 30 handled: what the broker has beyond them
        consumer.positions[1] = 3
        consumer.watermarks[0] = 30
        deadline = time.monotonic() + 3
        while lag() != 4 and time.monotonic() < deadline:  # exported by the idle loop too
            time.sleep(0.05)
        assert lag() == 4
    finally:
        loop.stop(5)


def test_a_partition_given_away_stops_counting():
    consumer = Watermarked([[record(0, offset) for offset in range(5)]], {0: 100})
    loop = ConsumeLoop("lag-test", consumer, ["t"], lambda records: [], FakeProducer(), max_batch=10)
    loop.start()
    try:
        deadline = time.monotonic() + 3
        while lag() != 95 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lag() == 95
        consumer.partitions = set()
        deadline = time.monotonic() + 3
        while lag() != 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lag() == 0
    finally:
        loop.stop(5)


def test_a_client_without_watermarks_exports_nothing_wrong():
    """A partition whose watermark is not known yet (no fetch answered since it was assigned) is left out."""
    consumer = Watermarked([[record(0, offset) for offset in range(5)]], {0: None})
    loop = ConsumeLoop("lag-test", consumer, ["t"], lambda records: [], FakeProducer(), max_batch=10)
    loop.start()
    try:
        time.sleep(0.5)
        assert lag() == 0
        assert TopicPartition("t", 0) in consumer.assignment()
    finally:
        loop.stop(5)
