"""A handler error the loop cannot handle stops the process loudly instead of leaving a member that never consumes."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from services.common.errors import ClassificationError, ErrorKind
from services.common.kafka import ConsumeLoop
from services.common.lifecycle import run_until_signalled


class FakeConsumer:
    """The seam: one batch to poll, then nothing; records what was committed."""

    def __init__(self):
        self.batches = [{"tp": [SimpleNamespace(topic="t", partition=0, offset=7, key=b"k", value=b"v")]}]
        self.committed = []

    def subscribe(self, topics, listener=None):
        pass

    def poll(self, timeout_ms=0, max_records=None):
        if self.batches:
            return self.batches.pop()
        time.sleep(timeout_ms / 1000)
        return {}

    def commit(self, offsets):
        self.committed.append(offsets)

    def assignment(self):
        return set()

    def pause(self, *partitions):
        pass

    def resume(self, *partitions):
        pass

    def close(self, autocommit=False):
        pass


class FakeProducer:
    def flush(self, timeout=None):
        pass


@pytest.mark.parametrize("error", [RuntimeError("a bug in the handler"),
                                   ClassificationError(ErrorKind.INTERNAL, "an unexpected state")])
def test_an_unhandled_error_marks_the_loop_fatal_and_commits_nothing(error):
    def handler(records):
        raise error

    consumer = FakeConsumer()
    loop = ConsumeLoop("test", consumer, ["t"], handler, FakeProducer())
    loop.start()
    assert loop.fatal.wait(5), "the loop must report that it cannot go on"
    assert not loop.healthy.is_set() and consumer.committed == []
    assert str(error) in loop.fatal_reason
    loop.stop(5)


def test_a_fatal_part_stops_the_service_with_a_non_zero_exit():
    fatal = threading.Event()
    serving, stopped = [], []
    threading.Timer(0.3, fatal.set).start()
    with pytest.raises(SystemExit) as exited:
        run_until_signalled(lambda: None, lambda: stopped.append(True), lambda: True, serving.append,
                            check_interval_s=10.0, fatal=fatal)
    assert exited.value.code == 70 and stopped == [True]
    assert serving == [True, False]  # NOT_SERVING at once, without waiting out the check interval


class Future:
    """The seam: one send's acknowledgement, or its failure."""

    def __init__(self, error: Exception | None = None):
        self.error = error

    def get(self, timeout=None):
        if self.error:
            raise self.error


class RecordingConsumer(FakeConsumer):
    def __init__(self, batches):
        super().__init__()
        self.batches = list(reversed(batches))
        self.paused = 0
        self.resumed = 0
        self.seeks = []

    def assignment(self):
        from kafka import TopicPartition

        return {TopicPartition("t", 0)}

    def pause(self, *partitions):
        self.paused += 1

    def resume(self, *partitions):
        self.resumed += 1

    def seek(self, partition, offset):
        self.seeks.append((partition.partition, offset))


def run_until_committed(consumer, handler, **options) -> ConsumeLoop:
    """Runs a loop over the consumer until it commits something (or 10 s pass), then stops it."""
    loop = ConsumeLoop("test", consumer, ["t"], handler, FakeProducer(), **options)
    loop.start()
    deadline = time.monotonic() + 10
    while not consumer.committed and time.monotonic() < deadline:
        time.sleep(0.05)
    loop.stop(5)
    return loop


def test_an_unacknowledged_send_leaves_the_batch_uncommitted_and_it_is_redone():
    from kafka.errors import KafkaTimeoutError

    records = [SimpleNamespace(topic="t", partition=0, offset=o, key=b"k", value=b"v") for o in (3, 4)]
    consumer = RecordingConsumer([{"tp": records}])
    calls = []

    def handler(batch):
        calls.append([r.offset for r in batch])
        # the first attempt's send is never acknowledged; the second is
        return [Future(KafkaTimeoutError("no ack")) if len(calls) == 1 else Future()]

    loop = run_until_committed(consumer, handler, send_timeout_s=1)
    assert calls == [[3, 4], [3, 4]], "the same batch is handled again"
    assert len(consumer.committed) == 1  # committed once, after the acknowledged attempt
    [(partition, offset)] = consumer.committed[0].items()
    assert offset.offset == 5
    assert consumer.paused >= 1 and consumer.resumed >= 1  # fetching paused while retrying, resumed after
    assert not loop.fatal.is_set()


def test_a_retryable_failure_while_stopping_rewinds_to_the_batch_start():
    records = [SimpleNamespace(topic="t", partition=0, offset=o, key=b"k", value=b"v") for o in (7, 8)]
    consumer = RecordingConsumer([{"tp": records}])

    def handler(batch):
        raise ClassificationError(ErrorKind.UNAVAILABLE, "Triton is down")

    loop = ConsumeLoop("test", consumer, ["t"], handler, FakeProducer())
    loop.start()
    deadline = time.monotonic() + 5
    while consumer.paused == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not loop.healthy.is_set()  # NOT_SERVING while the dependency is down
    loop.stop(5)
    assert consumer.committed == [] and (0, 7) in consumer.seeks  # redone by whoever holds the partition next


def test_a_partition_revoked_while_a_batch_waits_to_be_retried_is_left_to_its_new_owner():
    """Retried batch, rebalance in between: only the records of partitions still held are redone and committed."""
    from kafka import TopicPartition

    records = [SimpleNamespace(topic="t", partition=p, offset=o, key=b"k", value=b"v") for p, o in ((0, 3), (1, 9))]

    class Rebalanced(RecordingConsumer):
        def assignment(self):  # the group takes partition 0 away once the loop has paused for its retry
            held = {TopicPartition("t", 0), TopicPartition("t", 1)}
            return held - {TopicPartition("t", 0)} if self.paused else held

    consumer = Rebalanced([{"tp": records}])
    calls = []

    def handler(batch):
        calls.append(sorted((r.partition, r.offset) for r in batch))
        if len(calls) == 1:
            raise ClassificationError(ErrorKind.UNAVAILABLE, "the store is away for a moment")
        return []

    run_until_committed(consumer, handler)
    assert calls == [[(0, 3), (1, 9)], [(1, 9)]]  # partition 0's record is not redone here
    [offsets] = consumer.committed
    assert {tp.partition: o.offset for tp, o in offsets.items()} == {1: 10}  # nothing committed for partition 0


def test_the_broker_unreachable_while_a_batch_waits_to_be_retried_is_waited_out_not_fatal():
    """A poll during the paused wait raises (the coordinator unreachable too): the loop waits and retries the batch."""
    from kafka.errors import KafkaConnectionError

    records = [SimpleNamespace(topic="t", partition=0, offset=5, key=b"k", value=b"v")]

    class Unreachable(RecordingConsumer):
        failures = 3

        def poll(self, timeout_ms=0, max_records=None):
            if self.paused and self.failures:
                self.failures -= 1
                raise KafkaConnectionError("Connection reset by peer")
            return super().poll(timeout_ms, max_records)

    consumer = Unreachable([{"tp": records}])
    calls = []

    def handler(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise KafkaConnectionError("the send could not reach the broker")
        return []

    loop = run_until_committed(consumer, handler)
    assert not loop.fatal.is_set(), loop.fatal_reason
    # at least one poll raised during the wait (how many fit before the retry is due depends on the machine's pace)
    assert consumer.failures < 3 and calls == [1, 1] and len(consumer.committed) == 1


def test_health_says_not_serving_while_the_broker_keeps_a_batch_unacknowledged():
    records = [SimpleNamespace(topic="t", partition=0, offset=1, key=b"k", value=b"v")]
    released = threading.Event()

    class SlowBroker(FakeProducer):
        def flush(self, timeout=None):
            released.wait(timeout)

    consumer = RecordingConsumer([{"tp": records}])
    loop = ConsumeLoop("test", consumer, ["t"], lambda batch: [], SlowBroker(), ack_patience_s=0.2)
    loop.start()
    deadline = time.monotonic() + 5
    while loop.healthy.is_set() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not loop.healthy.is_set() and consumer.committed == []  # waiting, NOT_SERVING, nothing committed
    released.set()
    deadline = time.monotonic() + 5
    while not consumer.committed and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    assert consumer.committed and loop.healthy.is_set()  # acknowledged: committed and serving again
    loop.stop(5)
    assert not loop.fatal.is_set()


class UnreadableConsumer(FakeConsumer):
    """The seam: polls that raise, as kafka-python's does for a batch it cannot read, until `readable` is set."""

    def __init__(self):
        super().__init__()
        self.batches = []
        self.readable = threading.Event()
        self.failed = 0

    def poll(self, timeout_ms=0, max_records=None):
        if not self.readable.is_set():
            from kafka.errors import UnsupportedCodecError

            self.failed += 1
            raise UnsupportedCodecError("Libraries for lz4 compression codec not found")
        return super().poll(timeout_ms, max_records)


def test_polls_that_keep_failing_turn_health_not_serving_until_one_succeeds():
    consumer = UnreadableConsumer()
    loop = ConsumeLoop("test", consumer, ["t"], lambda records: [], FakeProducer())
    loop.start()
    try:
        deadline = time.monotonic() + 10
        while loop.healthy.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not loop.healthy.is_set(), "a loop that cannot read its partitions said SERVING"
        assert consumer.failed >= 3 and not loop.fatal.is_set()  # not a bug of ours: it keeps trying
        consumer.readable.set()
        assert loop.healthy.wait(15), "health did not come back once the polls succeeded"
    finally:
        loop.stop(5)


def test_polls_failing_while_the_broker_is_away_leave_health_alone():
    """An unreachable broker makes polls raise kafka-python's retriable errors; a service with no batch in hand keeps
    serving its API meanwhile (the README's Faults section)."""
    from kafka.errors import KafkaConnectionError

    class BrokerAway(UnreadableConsumer):
        def poll(self, timeout_ms=0, max_records=None):
            self.failed += 1
            raise KafkaConnectionError("socket disconnected")

    consumer = BrokerAway()
    loop = ConsumeLoop("test", consumer, ["t"], lambda records: [], FakeProducer())
    loop.start()
    try:
        deadline = time.monotonic() + 10
        while consumer.failed < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert consumer.failed >= 5 and loop.healthy.is_set()
    finally:
        loop.stop(5)


class PositionedConsumer(RecordingConsumer):
    """A one-partition seam that keeps its position, moved by the loop's seeks."""

    def __init__(self, position_at: int):
        super().__init__([])
        self.position_at = position_at

    def position(self, partition):
        return self.position_at

    def seek(self, partition, offset):
        super().seek(partition, offset)
        self.position_at = offset


class UnreadableRecordConsumer(PositionedConsumer):
    """The seam: partition 0 holds records 3 and 4, then one the client cannot read at offset 5 (raised with its
    place, as kafka_unreadable makes kafka-python raise it: a new error on every poll that fetched it again; with
    reraise_held the error of the fetch that returned 3 and 4 is raised again first, as kafka-python raises what it
    held), then record 6."""

    def __init__(self, reraise_held: bool = False):
        super().__init__(3)
        self.reraise_held = reraise_held
        self.held_error = None
        self.unreadable_polls = 0

    def poll(self, timeout_ms=0, max_records=None):
        from kafka import TopicPartition
        from kafka.errors import CorruptRecordError

        from services.common.kafka_unreadable import PLACE_ATTRIBUTE

        if self.position_at == 3:  # the records before it, then the error in the same fetch
            self.position_at = 5
            self.held_error = CorruptRecordError("Record batch at offset 5 failed crc check")
            setattr(self.held_error, PLACE_ATTRIBUTE, (TopicPartition("t", 0), 5))
            return {"tp": [SimpleNamespace(topic="t", partition=0, offset=o, key=b"k", value=b"v") for o in (3, 4)]}
        if self.position_at == 5:
            self.unreadable_polls += 1
            if self.reraise_held and self.unreadable_polls <= 2:
                raise self.held_error  # the error met in the first fetch, raised again (twice: a stricter seam)
            error = CorruptRecordError("Record batch at offset 5 failed crc check")
            setattr(error, PLACE_ATTRIBUTE, (TopicPartition("t", 0), 5))
            raise error
        if self.position_at == 6:
            self.position_at = 7
            return {"tp": [SimpleNamespace(topic="t", partition=0, offset=6, key=b"k", value=b"v")]}
        time.sleep(timeout_ms / 1000)
        return {}


def run_until_offset_committed(consumer, handled: list, offset: int, **options) -> ConsumeLoop:
    def handler(batch):
        handled.extend(r.offset for r in batch)
        return []

    loop = ConsumeLoop("test", consumer, ["t"], handler, FakeProducer(), batch_linger_s=0.05, **options)
    loop.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(
            o.offset >= offset for commit in consumer.committed for o in commit.values()):
        time.sleep(0.02)
    loop.stop(5)
    return loop


@pytest.mark.parametrize("reraise_held", [False, True])
def test_a_record_the_client_cannot_read_is_dead_lettered_then_skipped_and_what_surrounds_it_handled(reraise_held):
    consumer = UnreadableRecordConsumer(reraise_held)
    letters, handled = [], []

    def dead_letter(record):
        letters.append(record)
        return Future()

    loop = run_until_offset_committed(consumer, handled, 7, on_unreadable=dead_letter)
    assert handled == [3, 4, 6], "the records before and after it were not all handled, once each"
    assert [(r.topic, r.partition, r.offset) for r in letters] == [("t", 0, 5)]
    assert "crc" in letters[0].reason and consumer.seeks == [(0, 6)]
    # the skip committed as soon as nothing before it was in hand, then the record after it
    assert [{tp.partition: o.offset for tp, o in c.items()} for c in consumer.committed] == [{0: 5}, {0: 6}, {0: 7}]
    # met in two fetches: the same error raised again is not counted as a second
    assert consumer.unreadable_polls == (3 if reraise_held else 2)
    assert not loop.fatal.is_set()


class TwoUnreadablePartitionsConsumer(RecordingConsumer):
    """The seam: partitions 0 and 1 each hold a record the client cannot read at offset 5, then a readable one at 6.
    Polls take the partitions in turn, as kafka-python's fetcher does, so the two raise one after the other."""

    def __init__(self):
        super().__init__([])
        self.positions = {0: 5, 1: 5}
        self.turn = 0

    def assignment(self):
        from kafka import TopicPartition

        return {TopicPartition("t", 0), TopicPartition("t", 1)}

    def position(self, partition):
        return self.positions[partition.partition]

    def seek(self, partition, offset):
        super().seek(partition, offset)
        self.positions[partition.partition] = offset

    def poll(self, timeout_ms=0, max_records=None):
        from kafka import TopicPartition
        from kafka.errors import CorruptRecordError

        from services.common.kafka_unreadable import PLACE_ATTRIBUTE

        waiting = [p for p in (0, 1) if self.positions[p] < 7]
        if not waiting:
            time.sleep(timeout_ms / 1000)
            return {}
        partition = waiting[self.turn % len(waiting)]
        self.turn += 1
        if self.positions[partition] == 6:
            self.positions[partition] = 7
            return {partition: [SimpleNamespace(topic="t", partition=partition, offset=6, key=b"k", value=b"v")]}
        error = CorruptRecordError(f"Record batch at offset 5 of partition {partition} failed crc check")
        setattr(error, PLACE_ATTRIBUTE, (TopicPartition("t", partition), 5))
        raise error


def test_unreadable_records_in_two_partitions_raising_in_turn_are_both_dead_lettered():
    """make chaos held two such records, in two partitions: the loop, which remembered only the last place met, never
    met either twice in a row and polled for ever, both partitions stalled."""
    consumer = TwoUnreadablePartitionsConsumer()
    letters, handled = [], []

    def handler(batch):
        handled.extend((r.partition, r.offset) for r in batch)
        return []

    def dead_letter(record):
        letters.append((record.partition, record.offset))
        return Future()

    loop = ConsumeLoop("test", consumer, ["t"], handler, FakeProducer(), on_unreadable=dead_letter)
    loop.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sorted(handled) != [(0, 6), (1, 6)]:
            time.sleep(0.02)
    finally:
        loop.stop(5)
    assert sorted(letters) == [(0, 5), (1, 5)]
    assert sorted(handled) == [(0, 6), (1, 6)] and sorted(consumer.seeks) == [(0, 6), (1, 6)]


class CorruptBatchConsumer(PositionedConsumer):
    """The seam: partition 0 holds one batch at offsets 5 to 7 that fails its checksum (each of its records raises,
    with its place and the batch's bytes, as kafka_unreadable makes kafka-python raise them), then record 8."""

    BATCH = b"the batch as fetched"

    def __init__(self):
        super().__init__(5)

    def poll(self, timeout_ms=0, max_records=None):
        from kafka import TopicPartition
        from kafka.errors import CorruptRecordError

        from services.common.kafka_unreadable import BATCH_ATTRIBUTE, PLACE_ATTRIBUTE

        if self.position_at in (5, 6, 7):
            error = CorruptRecordError("Record batch at offset 5 failed crc check")
            setattr(error, PLACE_ATTRIBUTE, (TopicPartition("t", 0), self.position_at))
            setattr(error, BATCH_ATTRIBUTE, (5, self.BATCH))
            raise error
        if self.position_at == 8:
            self.position_at = 9
            return {"tp": [SimpleNamespace(topic="t", partition=0, offset=8, key=b"k", value=b"v")]}
        time.sleep(timeout_ms / 1000)
        return {}


def test_a_batch_failing_its_checksum_is_carried_by_its_first_record_s_dead_letter_only():
    """Skipped one record at a time, each dead-lettered: a batch of 500 would otherwise be copied 500 times."""
    consumer = CorruptBatchConsumer()
    letters, handled = [], []

    def dead_letter(record):
        letters.append(record)
        return Future()

    run_until_offset_committed(consumer, handled, 9, on_unreadable=dead_letter)
    assert handled == [8]
    assert [(r.offset, r.batch, r.batch_offset, r.carried_by) for r in letters] == [
        (5, CorruptBatchConsumer.BATCH, 5, -1), (6, b"", 5, 5), (7, b"", 5, 5)]


def test_a_batch_whose_dead_letter_was_not_acknowledged_is_carried_again():
    from kafka.errors import KafkaTimeoutError

    consumer = CorruptBatchConsumer()
    letters, handled = [], []

    def dead_letter(record):
        letters.append(record)
        return Future(KafkaTimeoutError("no ack")) if len(letters) == 1 else Future()

    run_until_offset_committed(consumer, handled, 9, on_unreadable=dead_letter)
    assert [(r.offset, r.batch) for r in letters] == [(5, CorruptBatchConsumer.BATCH), (5, CorruptBatchConsumer.BATCH),
                                                      (6, b""), (7, b"")]


def test_an_unreadable_record_whose_dead_letter_is_not_acknowledged_is_not_skipped():
    from kafka.errors import KafkaTimeoutError

    consumer = UnreadableRecordConsumer()
    attempts, handled = [], []

    def dead_letter(record):
        attempts.append(record.offset)
        return Future(KafkaTimeoutError("no ack")) if len(attempts) == 1 else Future()

    run_until_offset_committed(consumer, handled, 7, on_unreadable=dead_letter, send_timeout_s=0.1)
    assert attempts == [5, 5] and consumer.seeks == [(0, 6)] and handled == [3, 4, 6]


def test_without_a_dead_letter_an_unreadable_record_is_not_skipped_and_health_says_so():
    consumer = UnreadableRecordConsumer()
    handled = []
    loop = ConsumeLoop("test", consumer, ["t"], lambda batch: handled.extend(r.offset for r in batch) or [],
                       FakeProducer())
    loop.start()
    try:
        deadline = time.monotonic() + 10
        while loop.healthy.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not loop.healthy.is_set() and handled == [3, 4] and consumer.seeks == []
    finally:
        loop.stop(5)
