"""A record read out of the bytes a dead letter carries for a record the Kafka client could not read: its key, value
and headers as they were sent, the header key that stopped kafka-python included, whatever the codec, the checksum
not checked; bytes that are not such a batch are a RecordBatchError, never another error or a hang."""

from __future__ import annotations

import random

import pytest
from kafka.record import MemoryRecordsBuilder

from services.common.record_batch import RawRecord, RecordBatchError, record_at
from services.drivers.chaos.poison import UndecodableHeaderKey

# kafka-python's codec numbers: what a Java or Go producer's compression.type writes.
GZIP, SNAPPY, LZ4, ZSTD = 1, 2, 3, 4


def batch(records: list[tuple[bytes | None, bytes | None, list]], first: int = 100, compression: int = 0,
          corrupt: bool = False) -> bytes:
    builder = MemoryRecordsBuilder(magic=2, compression_type=compression, batch_size=1 << 24, offset=0)
    for key, value, headers in records:
        builder.append(timestamp=1_796_000_000_000, key=key, value=value, headers=headers)
    builder.close()
    data = bytearray(builder.buffer())
    data[:8] = first.to_bytes(8, "big")  # the broker writes the first offset
    if corrupt:
        data[17] ^= 0xFF  # a byte of its checksum (at 17 to 21): the records no longer match it
    return bytes(data)


UNDECODABLE = [("payload-type", b"product_classification.v1.ListingSubmitted"), (UndecodableHeaderKey("x"), b"1")]


@pytest.mark.parametrize("compression", [0, GZIP, SNAPPY, LZ4, ZSTD])
def test_the_record_kafka_python_refused_comes_out_as_sent(compression):
    data = batch([(b"listing-1", b"first", []), (b"listing-2", b"the event" * 1000, UNDECODABLE),
                  (b"listing-3", None, [])], compression=compression)
    record = record_at(data, 101)
    assert record == RawRecord(101, 1_796_000_000_000, b"listing-2", b"the event" * 1000,
                               ((b"payload-type", b"product_classification.v1.ListingSubmitted"),
                                (b"\xff\xfe-not-utf-8", b"1")))
    assert record_at(data, 100).value == b"first"
    assert record_at(data, 102).value is None and record_at(data, 102).key == b"listing-3"


def test_a_batch_failing_its_checksum_is_read_all_the_same():
    from kafka.record.default_records import DefaultRecordBatch

    data = batch([(b"k", b"value-a", []), (b"k", b"value-b", [])], corrupt=True)
    assert not DefaultRecordBatch(data).validate_crc()
    assert [record_at(data, o).value for o in (100, 101)] == [b"value-a", b"value-b"]


@pytest.mark.parametrize("data, offset, says", [
    (b"", 0, "shorter than a record batch's header"),
    (batch([(b"k", b"v", [])])[:-1], 100, "the batch states"),
    (batch([(b"k", b"v", [])]), 99, "offset 99 is not in the batch (100 to 100)"),
    (batch([(b"k", b"v", [])]), 101, "offset 101 is not in the batch"),
])
def test_what_is_not_there_is_said(data, offset, says):
    with pytest.raises(RecordBatchError, match=says.replace("(", r"\(").replace(")", r"\)")):
        record_at(data, offset)


def test_a_legacy_message_set_is_refused_by_name():
    builder = MemoryRecordsBuilder(magic=1, compression_type=0, batch_size=1 << 20, offset=5)
    builder.append(timestamp=None, key=b"k", value=b"v", headers=[])
    builder.close()
    with pytest.raises(RecordBatchError, match="log format v1"):
        record_at(bytes(builder.buffer()), 5)


def test_a_batch_unfolding_past_the_consumers_bound_is_not_unfolded():
    from services.common import kafka_decompression

    data = batch([(b"k", bytes(kafka_decompression.limit() + 1), [])], compression=ZSTD)
    assert len(data) < 1 << 20
    with pytest.raises(RecordBatchError, match="unfolds to more than"):
        record_at(data, 100)


def test_damaged_bytes_are_a_record_batch_error_never_another():
    """Every byte of a batch (three records, headers, the odd key) changed in turn, then random changes: the reader
    answers a record or a RecordBatchError, at once."""
    for compression in (0, GZIP):
        original = batch([(b"a", b"x" * 40, UNDECODABLE), (None, b"y", []), (b"c", None, [("h", None)])],
                         compression=compression)
        generator = random.Random(7 + compression)
        variants = []
        for index in range(len(original)):
            for value in (0x00, 0xFF, original[index] ^ 0x01, 0x80):
                changed = bytearray(original)
                changed[index] = value
                variants.append(bytes(changed))
        for _ in range(2000):
            changed = bytearray(original)
            for _ in range(generator.randint(1, 8)):
                changed[generator.randrange(len(changed))] = generator.randrange(256)
            variants.append(bytes(changed))
        variants += [original[:cut] for cut in range(len(original))]
        for variant in variants:
            for offset in (100, 101, 102):
                try:
                    record_at(variant, offset)
                except RecordBatchError:
                    pass
