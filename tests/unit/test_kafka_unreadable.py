"""kafka-python's fetcher made to raise, with where it sits, for a record it cannot read, on every poll: before, the
poll after the one that raised never returned (the fetcher kept the records whose reading had failed and looped on
them for ever)."""

from __future__ import annotations

import pytest
from kafka import TopicPartition
from kafka.consumer.fetcher import Fetcher
from kafka.record import MemoryRecords, MemoryRecordsBuilder

from services.common import kafka_unreadable
from services.drivers.chaos.poison import UndecodableHeaderKey


def batch_bytes(records: list[tuple[bytes, list]], base_offset: int = 10, corrupt: bool = False, magic: int = 2,
                compression: int = 0) -> bytes:
    # A v2 batch's records count from its first offset, which the broker writes (outside the checksum).
    builder = MemoryRecordsBuilder(magic=magic, compression_type=compression, batch_size=1 << 20,
                                   offset=0 if magic == 2 else base_offset)
    for value, headers in records:
        builder.append(timestamp=None, key=None, value=value, headers=headers)
    builder.close()
    data = bytearray(builder.buffer())
    if magic == 2:
        data[:8] = base_offset.to_bytes(8, "big")
    if corrupt:
        data[-1] ^= 0xFF  # the batch's last byte: its checksum no longer matches
    return bytes(data)


def fetched(records: list[tuple[bytes, list]], base_offset: int = 10, corrupt: bool = False) -> MemoryRecords:
    return MemoryRecords(batch_bytes(records, base_offset, corrupt))


def partition_records(records: MemoryRecords) -> tuple[Fetcher.PartitionRecords, list]:
    drained = []
    return Fetcher.PartitionRecords(10, TopicPartition("t", 0), records, on_drain=drained.append), drained


def test_installed_for_the_pinned_release_by_every_client_the_services_make():
    import kafka.version

    import services.common.kafka  # noqa: F401  (installs it)

    assert kafka.version.__version__ == kafka_unreadable.WRITTEN_FOR, "the lock file's kafka-python changed: re-check"
    assert Fetcher.PartitionRecords.take.__wrapped__ is not None
    assert Fetcher.PartitionRecords.drain.__wrapped__ is not None
    assert Fetcher.PartitionRecords.__init__.__wrapped__ is not None


def test_a_record_that_cannot_be_read_raises_with_its_place_and_its_fetch_is_let_go():
    import services.common.kafka  # noqa: F401  (installs it)

    part, drained = partition_records(fetched([(b"a", []), (b"b", []), (b"c", [(UndecodableHeaderKey("x"), b"1")]),
                                               (b"d", [])]))
    assert [r.value for r in part.take(10)] == [b"a", b"b"]  # what comes before it is handed out
    with pytest.raises(Exception) as raised:
        part.take(10)
    assert "UnicodeDecodeError" in str(raised.value)
    assert kafka_unreadable.unreadable_at(raised.value) == (TopicPartition("t", 0), 12)
    assert not part and drained == [part]  # let go: the next poll fetches from the position again
    # all there is of it: the bytes of its batch as fetched, from the batch's first offset
    assert kafka_unreadable.unreadable_batch(raised.value) == (10, part_bytes(part, raised))


def part_bytes(part, raised) -> bytes:
    first, data = kafka_unreadable.unreadable_batch(raised.value)
    assert getattr(part, "_fetched_bytes") is None, "a fetch let go still holds its bytes"
    return data


def test_the_batch_carried_is_the_one_holding_the_record_among_those_fetched_together():
    import services.common.kafka  # noqa: F401  (installs it)

    readable = batch_bytes([(b"a", []), (b"b", [])], base_offset=10)
    holding = batch_bytes([(b"c", []), (b"record-d", [(UndecodableHeaderKey("x"), b"1")]), (b"e", [])],
                          base_offset=12)
    after = batch_bytes([(b"record-f", [])], base_offset=15)
    part, _ = partition_records(MemoryRecords(readable + holding + after))
    assert [r.value for r in part.take(10)] == [b"a", b"b", b"c"]
    with pytest.raises(Exception) as raised:
        part.take(10)
    assert kafka_unreadable.unreadable_at(raised.value) == (TopicPartition("t", 0), 13)
    assert kafka_unreadable.unreadable_batch(raised.value) == (12, holding)
    assert b"record-d" in holding and b"record-f" not in holding


def test_a_batch_failing_its_checksum_is_carried_as_fetched():
    import services.common.kafka  # noqa: F401  (installs it)

    corrupt = batch_bytes([(b"a", []), (b"b", [])], corrupt=True)
    part, _ = partition_records(MemoryRecords(corrupt))
    with pytest.raises(Exception) as raised:
        part.take(10)
    assert kafka_unreadable.unreadable_batch(raised.value) == (10, corrupt)


def test_a_fetch_read_to_its_end_or_drained_lets_go_of_its_bytes():
    import services.common.kafka  # noqa: F401  (installs it)

    part, drained = partition_records(fetched([(b"a", []), (b"b", [])]))
    assert getattr(part, "_fetched_bytes") is not None
    assert [r.value for r in part.take(10)] == [b"a", b"b"] and drained == [part]
    assert getattr(part, "_fetched_bytes") is None
    part, drained = partition_records(fetched([(b"a", []), (b"b", [])]))
    part.drain()  # as the fetcher does on a seek or a pause
    assert getattr(part, "_fetched_bytes") is None and drained == [part]


def test_batch_holding_reads_only_the_frame_every_format_shares():
    v2 = batch_bytes([(b"a", []), (b"b", []), (b"c", [])], base_offset=20)
    compressed = batch_bytes([(b"x" * 1000, []), (b"y", [])], base_offset=23, compression=1)  # gzip
    legacy = batch_bytes([(b"l", []), (b"m", [])], base_offset=25, magic=1)  # two messages, offsets 25 and 26
    fetch = v2 + compressed + legacy
    assert kafka_unreadable.batch_holding(fetch, 19) == (20, v2)
    assert kafka_unreadable.batch_holding(fetch, 22) == (20, v2)
    assert kafka_unreadable.batch_holding(fetch, 23) == (23, compressed)
    assert kafka_unreadable.batch_holding(fetch, 24) == (23, compressed)
    assert kafka_unreadable.batch_holding(fetch, 26)[0] == 26  # a legacy message is a batch of its own
    assert kafka_unreadable.batch_holding(fetch, 27) is None
    # a fetch closing on a partial batch (the broker's size limit), or with a length no batch can have
    assert kafka_unreadable.batch_holding(v2 + compressed[:30], 23) is None
    broken = bytearray(v2)
    broken[8:12] = (-5).to_bytes(4, "big", signed=True)
    assert kafka_unreadable.batch_holding(bytes(broken), 20) is None
    assert kafka_unreadable.batch_holding(b"", 0) is None and kafka_unreadable.batch_holding(b"\0" * 11, 0) is None
    # a v2 frame too short to state its last offset counts as holding its first only
    short = (30).to_bytes(8, "big") + (6).to_bytes(4, "big") + bytes(4) + bytes([2]) + bytes(1)
    assert kafka_unreadable.batch_holding(short, 30) == (30, short)


def test_a_batch_failing_its_checksum_raises_at_its_first_offset():
    import services.common.kafka  # noqa: F401  (installs it)

    part, drained = partition_records(fetched([(b"a", []), (b"b", [])], corrupt=True))
    with pytest.raises(Exception) as raised:
        part.take(10)
    assert "crc" in str(raised.value)
    assert kafka_unreadable.unreadable_at(raised.value) == (TopicPartition("t", 0), 10) and drained == [part]
    assert kafka_unreadable.unreadable_batch(raised.value)[0] == 10


def test_without_it_the_fetch_is_kept_as_if_unread():
    """What the wrapper changes: kafka-python's own take leaves the fetch in hand, its reader finished."""
    original = Fetcher.PartitionRecords.take
    original = getattr(original, "__wrapped__", original)
    part, drained = partition_records(fetched([(b"a", [(UndecodableHeaderKey("x"), b"1")])]))
    with pytest.raises(Exception):
        original(part, 10)
    assert part and drained == [] and original(part, 10) == []  # held, nothing to read: the poll loops on it


def test_other_errors_carry_no_place():
    assert kafka_unreadable.unreadable_at(ValueError("x")) is None
    assert kafka_unreadable.unreadable_batch(ValueError("x")) is None
