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


def fetched(records: list[tuple[bytes, list]], base_offset: int = 10, corrupt: bool = False) -> MemoryRecords:
    builder = MemoryRecordsBuilder(magic=2, compression_type=0, batch_size=1 << 20, offset=base_offset)
    for value, headers in records:
        builder.append(timestamp=None, key=None, value=value, headers=headers)
    builder.close()
    data = bytearray(builder.buffer())
    if corrupt:
        data[-1] ^= 0xFF  # the batch's last byte: its checksum no longer matches
    return MemoryRecords(bytes(data))


def partition_records(records: MemoryRecords) -> tuple[Fetcher.PartitionRecords, list]:
    drained = []
    return Fetcher.PartitionRecords(10, TopicPartition("t", 0), records, on_drain=drained.append), drained


def test_installed_for_the_pinned_release_by_every_client_the_services_make():
    import kafka.version

    import services.common.kafka  # noqa: F401  (installs it)

    assert kafka.version.__version__ == kafka_unreadable.WRITTEN_FOR, "the lock file's kafka-python changed: re-check"
    assert Fetcher.PartitionRecords.take.__wrapped__ is not None


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


def test_a_batch_failing_its_checksum_raises_at_its_first_offset():
    import services.common.kafka  # noqa: F401  (installs it)

    part, drained = partition_records(fetched([(b"a", []), (b"b", [])], corrupt=True))
    with pytest.raises(Exception) as raised:
        part.take(10)
    assert "crc" in str(raised.value)
    assert kafka_unreadable.unreadable_at(raised.value) == (TopicPartition("t", 0), 10) and drained == [part]


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
