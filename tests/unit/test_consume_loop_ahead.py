"""The consume loop polls ahead of its batches (ConsumeLoop._poll_batch): a poll takes what kafka-python holds, so the
client sends its next fetch at once, and the loop hands the records out a batch at a time. Nothing it holds is lost
or handled twice: not when a rebalance takes a partition away, not when a batch is rewound, not when a poll fails."""

from __future__ import annotations

import time
from types import SimpleNamespace

from kafka import TopicPartition
from kafka.errors import KafkaConnectionError

from services.common.kafka import POLL_AHEAD_BATCHES, ConsumeLoop
from tests.unit.test_consume_loop_fatal import FakeConsumer, FakeProducer


def record(partition: int, offset: int):
    return SimpleNamespace(topic="t", partition=partition, offset=offset, key=b"k", value=b"v")


class Consumer(FakeConsumer):
    """The seam: hands out the polls given, in turn (each at most max_records); then nothing."""

    def __init__(self, polls: list[list], partitions=(0,)):
        self.polls = [list(p) for p in polls]
        self.partitions = {TopicPartition("t", p) for p in partitions}
        self.max_records_asked: list[int | None] = []
        self.committed: list[dict[int, int]] = []
        self.seeks: list[tuple[int, int]] = []

    def poll(self, timeout_ms=0, max_records=None):
        self.max_records_asked.append(max_records)
        while self.polls and not self.polls[0]:
            self.polls.pop(0)
        if not self.polls:
            time.sleep(min(timeout_ms, 20) / 1000)
            return {}
        taken = self.polls[0][:max_records]
        del self.polls[0][:len(taken)]
        return {TopicPartition("t", taken[0].partition): taken}

    def commit(self, offsets):
        self.committed.append({tp.partition: o.offset for tp, o in offsets.items()})

    def assignment(self):
        return set(self.partitions)

    def seek(self, partition, offset):
        self.seeks.append((partition.partition, offset))


def run(consumer: Consumer, handler, until, **options) -> ConsumeLoop:
    loop = ConsumeLoop("test", consumer, ["t"], handler, FakeProducer(), **options)
    loop.start()
    deadline = time.monotonic() + 10
    while not until() and time.monotonic() < deadline:
        time.sleep(0.02)
    loop.stop(5)
    assert not loop.fatal.is_set(), loop.fatal_reason
    return loop


def offsets(batch) -> list[tuple[int, int]]:
    return [(r.partition, r.offset) for r in batch]


def test_one_poll_takes_what_the_client_holds_and_the_loop_hands_it_out_a_batch_at_a_time():
    consumer = Consumer([[record(0, o) for o in range(10)]])
    handled = []
    run(consumer, lambda batch: handled.append(offsets(batch)) or [], lambda: len(consumer.committed) == 3,
        max_batch=4)
    assert handled == [[(0, 0), (0, 1), (0, 2), (0, 3)], [(0, 4), (0, 5), (0, 6), (0, 7)], [(0, 8), (0, 9)]]
    assert consumer.committed == [{0: 4}, {0: 8}, {0: 10}]  # each batch committed after it was handled
    assert consumer.max_records_asked[0] == 4 * POLL_AHEAD_BATCHES  # the whole fetch in one poll, not one batch


def test_held_records_of_a_partition_a_rebalance_takes_away_are_left_to_its_new_owner_and_the_others_stay():
    polled = [record(0, 0), record(0, 1), record(1, 0), record(1, 1), record(0, 2), record(0, 3), record(1, 2)]

    class Rebalanced(Consumer):
        def poll(self, timeout_ms=0, max_records=None):  # every record comes in the first poll
            self.max_records_asked.append(max_records)
            if self.polls:
                return {TopicPartition("t", 0): self.polls.pop(0)}
            time.sleep(0.02)
            return {}

        def assignment(self):  # partition 0 goes to another member once the first batch is committed
            return {TopicPartition("t", 1)} if self.committed else {TopicPartition("t", 0), TopicPartition("t", 1)}

    consumer = Rebalanced([polled], partitions=(0, 1))
    handled = []
    run(consumer, lambda batch: handled.append(offsets(batch)) or [], lambda: len(consumer.committed) == 3,
        max_batch=2)
    # partition 0's held records (offsets 2 and 3) are not handled here: its new owner starts from offset 2
    assert handled == [[(0, 0), (0, 1)], [(1, 0), (1, 1)], [(1, 2)]]
    assert consumer.committed == [{0: 2}, {1: 2}, {1: 3}]


def test_a_rewound_partition_drops_the_held_records_that_will_be_fetched_again_and_keeps_those_before():
    loop = ConsumeLoop("test", Consumer([]), ["t"], lambda batch: [], FakeProducer())
    loop._ahead = [record(0, 5), record(0, 6), record(1, 3), record(0, 7), record(1, 4)]
    loop._rewind([record(0, 6), record(0, 7)])  # partition 0 starts again at offset 6
    assert offsets(loop._ahead) == [(0, 5), (1, 3), (1, 4)]
    assert loop.consumer.seeks == [(0, 6)]


def test_a_poll_that_fails_after_an_earlier_one_returned_records_loses_none_of_them():
    class FailsOnce(Consumer):
        failed = False

        def poll(self, timeout_ms=0, max_records=None):
            if len(self.max_records_asked) == 1 and not self.failed:  # the second poll: the one topping the batch up
                self.failed = True
                raise KafkaConnectionError("Connection reset by peer")
            return super().poll(timeout_ms, max_records)

    consumer = FailsOnce([[record(0, 0), record(0, 1)], [record(0, 2)]])
    handled = []
    loop = run(consumer, lambda batch: handled.append(offsets(batch)) or [],
               lambda: consumer.committed and consumer.committed[-1] == {0: 3}, max_batch=4, batch_linger_s=0.5)
    assert consumer.failed
    assert [o for batch in handled for o in batch] == [(0, 0), (0, 1), (0, 2)]
    assert loop.batches_handled == len(handled)
