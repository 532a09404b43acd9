"""Compressed batches are decompressed within a bound: kafka-python's own record reader, given a batch that unfolds
past it, raises CorruptRecordError once that much is out (before, it unfolded the whole batch in memory and copied
it); under the bound it reads every record as before, in each of Kafka's four codecs."""

from __future__ import annotations

import resource

import pytest
from kafka.errors import CorruptRecordError
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from kafka.record.legacy_records import LegacyRecordBatch, LegacyRecordBatchBuilder

from services.common import kafka_decompression
from services.common.kafka import MAX_REQUEST_BYTES  # importing it installs the bounded decoders, as in every service

CODECS = {"gzip": DefaultRecordBatch.CODEC_GZIP, "snappy": DefaultRecordBatch.CODEC_SNAPPY,
          "lz4": DefaultRecordBatch.CODEC_LZ4, "zstd": DefaultRecordBatch.CODEC_ZSTD}
LIMIT = 4 * 1024 * 1024


@pytest.fixture()
def small_limit():
    kafka_decompression.install(LIMIT)
    try:
        yield
    finally:
        kafka_decompression.install(kafka_decompression.DEFAULT_LIMIT)


def batch(codec: int, values: list[bytes]) -> bytes:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=False, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 30)
    for offset, value in enumerate(values):
        builder.append(offset, timestamp=1_700_000_000_000, key=b"k", value=value, headers=[])
    return bytes(builder.build())


def read(data: bytes) -> list[bytes]:
    return [record.value for record in DefaultRecordBatch(data)]


@pytest.mark.parametrize("name", CODECS)
def test_a_batch_under_the_limit_reads_as_before(small_limit, name):
    values = [b"listing %d " % i * 1000 for i in range(50)] + [bytes(range(256)) * 4000]  # about 1.4 MB in all
    assert read(batch(CODECS[name], values)) == values


@pytest.mark.parametrize("name", CODECS)
def test_a_batch_unfolding_past_the_limit_is_refused_without_unfolding_it(small_limit, name):
    data = batch(CODECS[name], [bytes(3 * 1024 * 1024), bytes(3 * 1024 * 1024)])  # 6 MiB of zeros
    assert len(data) < 1024 * 1024  # what travels is small
    with pytest.raises(CorruptRecordError, match=f"{name}-compressed batch unfolds to more than {LIMIT} bytes"):
        read(data)


def test_a_batch_at_the_default_limit_is_refused_before_the_consumer_grows_by_it():
    """512 MiB of zeros in a few KB of zstd: kafka-python unfolded it whole and copied it (three times the unfolded
    size at its peak); now the read stops at the default limit of 64 MiB."""
    assert kafka_decompression.limit() == kafka_decompression.DEFAULT_LIMIT == 4 * MAX_REQUEST_BYTES
    data = batch(CODECS["zstd"], [bytes(512 * 1024 * 1024)])
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with pytest.raises(CorruptRecordError, match="zstd-compressed batch unfolds to more than 67108864 bytes"):
        read(data)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak_before
    assert grown < 256 * 1024 * 1024, f"the process's peak grew by {grown >> 20} MiB"


def test_legacy_batches_are_bounded_too(small_limit):
    """Message sets of the pre-0.11 format (magic 0 and 1), which a broker may still hold or send (LZ4 from magic 1:
    kafka-python writes magic 0's LZ4 only with a library the services do not install)."""
    codecs = (("gzip", LegacyRecordBatch.CODEC_GZIP), ("snappy", LegacyRecordBatch.CODEC_SNAPPY),
              ("lz4", LegacyRecordBatch.CODEC_LZ4))
    for magic in (0, 1):
        for name, codec in codecs[:2] if magic == 0 else codecs:
            builder = LegacyRecordBatchBuilder(magic=magic, compression_type=codec, batch_size=1 << 30)
            builder.append(0, timestamp=1_700_000_000_000 if magic else None, key=b"k", value=bytes(6 << 20))
            data = bytes(builder.build())
            with pytest.raises(CorruptRecordError, match=f"{name}-compressed batch unfolds"):
                [record.value for record in LegacyRecordBatch(data, magic)]


def test_a_snappy_payload_states_its_size_before_it_is_decompressed():
    import kafka.codec as codec

    raw = codec.snappy.compress(bytes(100_000))
    assert kafka_decompression.snappy_unfolded_size(raw) == 100_000
    framed = codec.snappy_encode(bytes(100_000), xerial_compatible=True, xerial_blocksize=32 * 1024)
    assert kafka_decompression.snappy_unfolded_size(framed) == 100_000
    with pytest.raises(CorruptRecordError):
        kafka_decompression.snappy_unfolded_size(b"\xff\xff")


def test_the_limit_must_be_positive():
    with pytest.raises(ValueError):
        kafka_decompression.install(0)
    assert kafka_decompression.limit() == kafka_decompression.DEFAULT_LIMIT
