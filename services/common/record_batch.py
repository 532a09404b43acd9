"""One record read out of a Kafka record batch's bytes, leniently: what a dead letter of a record the Kafka client
could not read carries (`ProcessingFailed.source_batch`, services.common.kafka_unreadable).

kafka-python refuses the whole record where any part of it is off (a header key that is not UTF-8, a batch failing
its checksum); this reads Kafka's v2 log format itself, header keys as bytes and the checksum not checked, so the
record's key and value can be taken out and sent again (`replay-dead-letters`). The bytes may be what is broken, so
every length is checked against what is there, decompression is bounded as the consumers' is
(services.common.kafka_decompression), and anything that does not parse is a RecordBatchError saying where.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kafka.record.util import decode_varint

from services.common import kafka  # noqa: F401  (puts the bounded decoders in place)
from services.common import kafka_decompression

# baseOffset, batchLength, partitionLeaderEpoch, magic, crc, attributes, lastOffsetDelta, firstTimestamp,
# maxTimestamp, producerId, producerEpoch, baseSequence, recordsCount: 61 bytes.
_BATCH_HEADER = struct.Struct(">qiibIhiqqqhii")
_MAGIC_AT, _COMPRESSION_MASK, _CONTROL_FLAG = 16, 0x07, 0x20
_DECODERS = {1: ("gzip", kafka_decompression.gzip_decode), 2: ("snappy", kafka_decompression.snappy_decode),
             3: ("lz4", kafka_decompression.lz4_decode), 4: ("zstd", kafka_decompression.zstd_decode)}


class RecordBatchError(ValueError):
    """The bytes are not a v2 record batch holding the record asked for; the message says what is off."""


@dataclass(frozen=True)
class RawRecord:
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[bytes, bytes | None], ...]  # keys as bytes: the one that was not UTF-8 included


def record_at(batch: bytes, offset: int) -> RawRecord:
    """The record at offset in batch (one v2 record batch, as kafka_unreadable takes it from a fetch)."""
    if len(batch) > _MAGIC_AT and batch[_MAGIC_AT] != 2:
        raise RecordBatchError(f"log format v{batch[_MAGIC_AT]}: only v2 record batches (Kafka 0.11 and later) are "
                               "read")
    if len(batch) < _BATCH_HEADER.size:
        raise RecordBatchError(f"{len(batch)} bytes: shorter than a record batch's header ({_BATCH_HEADER.size})")
    (first, length, _, _, _, attributes, last_delta, first_timestamp, _, _, _, _,
     count) = _BATCH_HEADER.unpack_from(batch)
    if length + 12 != len(batch):
        raise RecordBatchError(f"the batch states {length + 12} bytes and holds {len(batch)}")
    if attributes & _CONTROL_FLAG:
        raise RecordBatchError("a control batch (a transaction marker): it holds no records of a producer")
    if not first <= offset <= first + last_delta:
        raise RecordBatchError(f"offset {offset} is not in the batch ({first} to {first + last_delta})")
    records = _records_bytes(batch, attributes & _COMPRESSION_MASK)
    if not 0 <= count <= len(records):
        raise RecordBatchError(f"the batch states {count} records in {len(records)} bytes")
    position = 0
    for index in range(count):
        try:
            record, position = _read_record(records, position, first, first_timestamp)
        except (IndexError, ValueError) as error:  # a varint running past the end or out of range, a length off
            raise RecordBatchError(f"record {index + 1} of {count} cannot be read: {error}") from error
        if record.offset == offset:
            return record
    raise RecordBatchError(f"no record at offset {offset} among the batch's {count} (compacted away?)")


def _records_bytes(batch: bytes, codec: int) -> bytes:
    body = batch[_BATCH_HEADER.size:]
    if codec == 0:
        return body
    if codec not in _DECODERS:
        raise RecordBatchError(f"compression codec {codec}: not one Kafka has")
    name, decode = _DECODERS[codec]
    try:
        return decode(body)
    except Exception as error:  # noqa: BLE001  (each codec's library raises its own; all mean the same here)
        raise RecordBatchError(f"its {name}-compressed records cannot be decompressed: {error}") from error


def _read_record(data: bytes, position: int, first: int, first_timestamp: int) -> tuple[RawRecord, int]:
    length, position = decode_varint(data, position)
    end = position + length
    if length < 0 or end > len(data):
        raise RecordBatchError(f"a record states {length} bytes where {len(data) - position} are left")
    position += 1  # attributes, unused
    timestamp_delta, position = decode_varint(data, position)
    offset_delta, position = decode_varint(data, position)
    key, position = _bytes_field(data, position, end, "key")
    value, position = _bytes_field(data, position, end, "value")
    header_count, position = decode_varint(data, position)
    if not 0 <= header_count <= end - position:
        raise RecordBatchError(f"a record states {header_count} headers in {end - position} bytes")
    headers = []
    for _ in range(header_count):
        header_key, position = _bytes_field(data, position, end, "header key")
        header_value, position = _bytes_field(data, position, end, "header value")
        headers.append((header_key or b"", header_value))
    if position != end:
        raise RecordBatchError(f"a record's fields end {end - position} bytes from where its length says")
    return RawRecord(first + offset_delta, first_timestamp + timestamp_delta, key, value, tuple(headers)), end


def _bytes_field(data: bytes, position: int, end: int, name: str) -> tuple[bytes | None, int]:
    size, position = decode_varint(data, position)
    if size < 0:
        return None, position
    if position + size > end:
        raise RecordBatchError(f"a record's {name} states {size} bytes where {end - position} are left")
    return bytes(data[position:position + size]), position + size
