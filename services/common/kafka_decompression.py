"""Compressed Kafka batches decompressed within a bound, not to whatever size their bytes unfold to.

kafka-python decompresses a fetched batch whole, in memory, before it reads the batch's first record, and then copies
the result: a batch of a few kilobytes of zstd or gzip can unfold to gigabytes of zeros (any producer on a topic can
write one; 8 KB of zstd unfolding to 256 MiB took its reader from 32 MiB to a peak of 800 MiB), and every consumer of
its partition then grows by three times that at each fetch of it, killed for its memory where it has a limit (2 GiB
for preprocessing, 512 MiB for results in deploy/) and restarted onto the same batch. Its partition never moves
again.

`install(limit)` puts bounded versions of kafka-python's four decoders where its record readers call them: a batch
that unfolds past `limit` bytes raises CorruptRecordError saying so once that much is out, and the consume loop takes
it as it takes any record it cannot read (dead-lettered with where it sits, then moved past:
`services/common/kafka_unreadable.py`). Under the limit each decoder answers what kafka-python's own does. Snappy's
frames state their length before any byte is decompressed, so that is what is checked for them.
"""

from __future__ import annotations

import gzip
import io
import struct

import kafka.codec as codec
import kafka.record.default_records as default_records
import kafka.record.legacy_records as legacy_records
from kafka.errors import CorruptRecordError

from services.common.settings import MAX_DECOMPRESSED_BATCH_BYTES

DEFAULT_LIMIT = MAX_DECOMPRESSED_BATCH_BYTES
_CHUNK = 1024 * 1024

_limit = DEFAULT_LIMIT
_originals: dict[str, object] = {}


def limit() -> int:
    return _limit


def _too_large(codec_name: str) -> CorruptRecordError:
    return CorruptRecordError(f"a {codec_name}-compressed batch unfolds to more than {_limit} bytes (the consumer's "
                              "limit, KAFKA_MAX_DECOMPRESSED_BATCH_BYTES): not decompressed further")


def _read_bounded(stream, codec_name: str) -> bytes:
    parts, size = [], 0
    while chunk := stream.read(_CHUNK):
        size += len(chunk)
        if size > _limit:
            raise _too_large(codec_name)
        parts.append(chunk)
    return b"".join(parts)


def gzip_decode(payload) -> bytes:
    with gzip.GzipFile(fileobj=io.BytesIO(payload), mode="rb") as stream:
        return _read_bounded(stream, "gzip")


def zstd_decode(payload) -> bytes:
    if not codec.zstd:
        raise NotImplementedError("Zstd codec is not available")
    with codec.zstd.ZstdDecompressor().stream_reader(io.BytesIO(payload), read_across_frames=True) as stream:
        return _read_bounded(stream, "zstd")


def lz4_decode(payload) -> bytes:
    """One LZ4 frame (what Kafka's producers write), decompressed no further than the limit."""
    if not codec.lz4:
        return _originals["lz4_decode"](payload)  # another LZ4 library kafka-python fell back on: left as it is
    decompressor = codec.lz4.LZ4FrameDecompressor()
    data = decompressor.decompress(bytes(payload), max_length=_limit + 1)
    if len(data) > _limit:
        raise _too_large("lz4")
    if not decompressor.eof:
        raise CorruptRecordError("an lz4-compressed batch ends before its frame does")
    return data


def _varint(data: bytes, position: int) -> int:
    """The little-endian base-128 number a raw Snappy block starts with: the block's length once decompressed."""
    value = 0
    for shift in range(0, 35, 7):
        if position >= len(data):
            raise CorruptRecordError("a snappy-compressed batch ends inside a block's length")
        byte = data[position]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value
        position += 1
    raise CorruptRecordError("a snappy-compressed block's length does not end")


def snappy_unfolded_size(payload: bytes) -> int:
    """What a Snappy payload states it decompresses to: one raw block, or the xerial framing kafka-python reads (a
    16-byte header, then blocks each preceded by its compressed size)."""
    if not codec._detect_xerial_stream(payload):
        return _varint(payload, 0)
    total, cursor = 0, 16
    while cursor < len(payload):
        if cursor + 4 > len(payload):
            raise CorruptRecordError("a snappy-compressed batch ends inside a block's size")
        block_size = struct.unpack_from("!i", payload, cursor)[0]
        cursor += 4
        if block_size < 0:
            raise CorruptRecordError("a snappy-compressed block states a negative size")
        total += _varint(payload, cursor)
        cursor += block_size
    return total


def snappy_decode(payload) -> bytes:
    payload = bytes(payload)
    if snappy_unfolded_size(payload) > _limit:
        raise _too_large("snappy")
    return _originals["snappy_decode"](payload)


_BOUNDED = {"gzip_decode": gzip_decode, "zstd_decode": zstd_decode, "lz4_decode": lz4_decode,
            "snappy_decode": snappy_decode}
# kafka.codec's own names too: lz4_decode_old_kafka (legacy batches) calls lz4_decode through them.
_MODULES = (codec, default_records, legacy_records)


def install(limit_bytes: int = DEFAULT_LIMIT) -> None:
    """Bounds decompression in every kafka-python consumer of this process to limit_bytes per batch (set again on
    every call; the decoders are put in place once)."""
    global _limit
    if limit_bytes < 1:
        raise ValueError(f"the decompressed batch limit must be positive, not {limit_bytes}")
    _limit = limit_bytes
    if _originals:
        return
    _originals.update({name: getattr(codec, name) for name in _BOUNDED})
    for module in _MODULES:
        for name, bounded in _BOUNDED.items():
            if hasattr(module, name):
                setattr(module, name, bounded)
