"""Listing events the Kafka client cannot read. A header key that is not UTF-8, as a Go or C producer may write (header
keys are bytes on the wire): kafka-python's parser raised, and the next poll never returned (the fetcher looped for
ever on the records it still held), so the listings before it in the same fetch and every one after it in its
partition were never classified, while health said SERVING. A batch whose checksum fails (which this broker stores;
Apache Kafka refuses it on produce, but a disk or a replica can still corrupt one): raised on every poll, the
partition held for good. Now each such record is dead-lettered with where it sits, and the partition goes on."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import kafka.record.default_records as default_records
import pytest
from kafka import KafkaProducer

from services.common.contracts.product_classification.v1 import common_pb2, events_pb2
from services.common.kafka import PAYLOAD_TYPE_HEADER
from services.drivers.chaos.poison import UndecodableHeaderKey
from services.drivers.traffic import AllClassified, TopicReader, classified_by_listing, sample_listings, submitted_event

pytestmark = pytest.mark.integration


def dead_letters_at(topic: str, partition: int, offsets: list[int]):
    def found(records: list) -> bool:
        return all(any(_at(record, topic, partition, offset) for record in records) for offset in offsets)
    return found


def _at(record, topic: str, partition: int, offset: int) -> bool:
    failure = events_pb2.ProcessingFailed.FromString(record.value)
    return (failure.source_topic, failure.source_partition, failure.source_offset) == (topic, partition, offset)


def test_a_record_the_client_cannot_read_is_dead_lettered_and_its_partition_goes_on(stack, kafka):
    samples = sample_listings(4, seed=171, prefix="unreadable")
    classified_reader = TopicReader(kafka, kafka.topics.listing_classified)
    failed_reader = TopicReader(kafka, kafka.topics.processing_failed)
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all", linger_ms=0)
    try:
        offsets = []
        for index, sample in enumerate(samples):
            event = submitted_event(sample.listing)
            headers = [(PAYLOAD_TYPE_HEADER, event.DESCRIPTOR.full_name.encode())]
            if index == 2:
                headers.append((UndecodableHeaderKey("x"), b"value"))
            # One key: one partition, the listings before and after the unreadable one in the same log.
            metadata = producer.send(kafka.topics.listing_submitted, key=b"one-partition",
                                     value=event.SerializeToString(), headers=headers).get(30)
            offsets.append((metadata.partition, metadata.offset))
        readable = {sample.listing.listing_id for index, sample in enumerate(samples) if index != 2}
        classified = classified_by_listing(classified_reader.read(AllClassified(readable), 90))
        partition, offset = offsets[2]
        failures = failed_reader.read(dead_letters_at(kafka.topics.listing_submitted, partition, [offset]), 30)
    finally:
        producer.close()
        classified_reader.close()
        failed_reader.close()
    assert readable <= set(classified), f"never classified: {sorted(readable - set(classified))}"
    assert samples[2].listing.listing_id not in classified
    letters = [events_pb2.ProcessingFailed.FromString(r.value) for r in failures
               if _at(r, kafka.topics.listing_submitted, *offsets[2])]
    assert len(letters) >= 1, "the unreadable record was not dead-lettered"
    letter = letters[0]
    assert letter.stage == "preprocessing"
    assert "UnicodeDecodeError" in letter.reason and letter.error_kind == common_pb2.ERROR_KIND_INVALID_REQUEST
    # Nothing of it could be read, so the dead letter carries the bytes of its batch as the broker sent them: the
    # listing event is in there, past the topic's retention.
    assert letter.source_batch_offset <= offset <= batch_last_offset(letter.source_batch)
    assert samples[2].listing.SerializeToString() in letter.source_batch


def batch_last_offset(batch: bytes) -> int:
    """A v2 record batch's last offset, from its frame (its checksum may fail: nothing else of it is read)."""
    return int.from_bytes(batch[:8], "big") + int.from_bytes(batch[23:27], "big", signed=True)


def test_unreadable_records_in_two_partitions_fetched_together_are_both_dead_lettered(stack, kafka):
    """One such record in each of two partitions, in the worker's one fetch: kafka-python raises them in turn, and the
    loop, which remembered only the last place met, never met either twice in a row: it polled for ever and neither
    partition went on (seen in `make chaos`). The workers are stopped while the records are sent, so that one fetch
    holds both."""
    samples = sample_listings(2, seed=191, prefix="two-unreadable")
    topic = kafka.topics.listing_submitted
    classified_reader = TopicReader(kafka, kafka.topics.listing_classified)
    failed_reader = TopicReader(kafka, kafka.topics.processing_failed)
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all", linger_ms=0)
    workers = [service.process.process.pid for name, service in stack.services.items()
               if name.startswith("preprocessing")]
    unreadable = []
    try:
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        try:  # well within the group's session timeout: no rebalance
            for partition, sample in zip((0, 1), samples):
                unreadable.append(producer.send(topic, partition=partition, key=b"two-unreadable", value=b"x",
                                                headers=[(UndecodableHeaderKey("x"), b"1")]))
                event = submitted_event(sample.listing)
                producer.send(topic, partition=partition, key=b"two-unreadable", value=event.SerializeToString(),
                              headers=[(PAYLOAD_TYPE_HEADER, event.DESCRIPTOR.full_name.encode())])
            producer.flush(10)
        finally:
            for pid in workers:
                os.kill(pid, signal.SIGCONT)
        unreadable = [future.get(30) for future in unreadable]
        wanted = {sample.listing.listing_id for sample in samples}
        classified = set(classified_by_listing(classified_reader.read(AllClassified(wanted), 90)))
        failures = failed_reader.read(lambda rs: all(dead_letters_at(topic, m.partition, [m.offset])(rs)
                                                     for m in unreadable), 30)
    finally:
        producer.close()
        classified_reader.close()
        failed_reader.close()
    assert wanted <= classified, f"never classified: {sorted(wanted - classified)}"
    for metadata in unreadable:
        assert any(_at(r, topic, metadata.partition, metadata.offset) for r in failures), (
            f"the unreadable record at {metadata.partition}/{metadata.offset} was not dead-lettered")


def test_a_topic_reader_passes_over_a_record_it_cannot_read(stack, kafka):
    """The drivers' reader (demo, evaluation, these tests) reads a topic holding one, as the services do."""
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all", linger_ms=0)
    topic = kafka.topics.listing_corrected  # read by no service: nothing else meets the record
    try:
        sent = [producer.send(topic, key=b"reader", value=value, headers=headers).get(30) for value, headers in
                ((b"before", []), (b"unreadable", [(UndecodableHeaderKey("x"), b"1")]), (b"after", []))]
    finally:
        producer.close()
    reader = TopicReader(kafka, topic)
    try:
        records = reader.read(lambda rs: any(r.value == b"after" and r.offset == sent[2].offset for r in rs), 30)
    finally:
        reader.close()
    mine = [(r.value, r.offset) for r in records if r.partition == sent[0].partition and r.key == b"reader"]
    assert (b"before", sent[0].offset) in mine and (b"after", sent[2].offset) in mine
    assert (sent[1].topic_partition, sent[1].offset) in reader.unreadable


def test_every_record_of_a_batch_failing_its_checksum_is_dead_lettered_and_the_partition_goes_on(stack, kafka,
                                                                                                   monkeypatch):
    samples = sample_listings(5, seed=173, prefix="corrupt")
    classified_reader = TopicReader(kafka, kafka.topics.listing_classified)
    failed_reader = TopicReader(kafka, kafka.topics.processing_failed)
    # batch_size over the three listings' photos: with the default 16 KiB each record was a batch of its own
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all", linger_ms=200, retries=0,
                             batch_size=1 << 20)

    def send(sample):
        event = submitted_event(sample.listing)
        return producer.send(kafka.topics.listing_submitted, key=b"one-corrupt-partition",
                             value=event.SerializeToString(),
                             headers=[(PAYLOAD_TYPE_HEADER, event.DESCRIPTOR.full_name.encode())])
    try:
        first = send(samples[0]).get(30)
        checksum = default_records.calc_crc32c
        monkeypatch.setattr(default_records, "calc_crc32c", lambda data: (checksum(data) + 1) & 0xFFFFFFFF)
        corrupt = [send(sample) for sample in samples[1:4]]  # one batch of three, its checksum wrong
        producer.flush(30)
        monkeypatch.setattr(default_records, "calc_crc32c", checksum)
        corrupt = [future.get(30) for future in corrupt]
        last = send(samples[4]).get(30)
        assert len({m.partition for m in [first, *corrupt, last]}) == 1
        assert [m.offset for m in corrupt] == [first.offset + 1, first.offset + 2, first.offset + 3]
        readable = {samples[0].listing.listing_id, samples[4].listing.listing_id}
        classified = classified_by_listing(classified_reader.read(AllClassified(readable), 90))
        failures = failed_reader.read(dead_letters_at(kafka.topics.listing_submitted, last.partition,
                                                      [m.offset for m in corrupt]), 30)
    finally:
        producer.close()
        classified_reader.close()
        failed_reader.close()
    assert readable <= set(classified), f"never classified: {sorted(readable - set(classified))}"
    carried = {}
    for metadata in corrupt:
        letters = [events_pb2.ProcessingFailed.FromString(r.value) for r in failures
                   if _at(r, kafka.topics.listing_submitted, metadata.partition, metadata.offset)]
        assert letters, f"offset {metadata.offset} was not dead-lettered"
        assert "crc" in letters[0].reason and letters[0].stage == "preprocessing"
        carried.update({metadata.offset: letter.source_batch for letter in letters if letter.source_batch})
        if not any(letter.source_batch for letter in letters):
            assert f"is in the dead letter of offset {corrupt[0].offset})" in letters[0].reason
    # The batch's bytes are carried once (by its first record's dead letter, or again after a rebalance), as sent:
    # its three listing events, its checksum still failing.
    assert corrupt[0].offset in carried
    batch = carried[corrupt[0].offset]
    assert (int.from_bytes(batch[:8], "big"), batch_last_offset(batch)) == (corrupt[0].offset, corrupt[2].offset)
    assert not default_records.DefaultRecordBatch(batch).validate_crc()
    for sample in samples[1:4]:
        assert sample.listing.SerializeToString() in batch



def _large_then_listing(kafka, key: bytes, value: bytes, headers: list, sample):
    """Sends value as one zstd-compressed record (a few KB on the wire, whatever it unfolds to), then sample's listing
    under the same key (the same partition, after it); returns the first's metadata, whether the listing was
    classified, and the first's dead letters."""
    topic = kafka.topics.listing_submitted
    classified_reader = TopicReader(kafka, kafka.topics.listing_classified)
    failed_reader = TopicReader(kafka, kafka.topics.processing_failed)
    compressing = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all", linger_ms=0,
                                compression_type="zstd", max_request_size=1 << 30)
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all", linger_ms=0)
    try:
        large = compressing.send(topic, key=key, value=value, headers=headers).get(60)
        event = submitted_event(sample.listing)
        after = producer.send(topic, key=key, value=event.SerializeToString(),
                              headers=[(PAYLOAD_TYPE_HEADER, event.DESCRIPTOR.full_name.encode())]).get(30)
        assert after.partition == large.partition and after.offset > large.offset
        wanted = {sample.listing.listing_id}
        classified = wanted <= set(classified_by_listing(classified_reader.read(AllClassified(wanted), 90)))
        failures = failed_reader.read(dead_letters_at(topic, large.partition, [large.offset]), 30)
    finally:
        compressing.close()
        producer.close()
        classified_reader.close()
        failed_reader.close()
    letters = [events_pb2.ProcessingFailed.FromString(r.value) for r in failures
               if _at(r, topic, large.partition, large.offset)]
    return large, classified, letters


def test_a_listing_too_large_for_a_dead_letter_is_dead_lettered_without_it_and_the_partition_goes_on(stack, kafka):
    """A listing event of 40 MiB (a photo of 40 MiB of zeros: a few kilobytes of zstd, so the broker takes it) is
    refused for its image's size. Its dead letter used to copy it whole: the producer refused a 40 MiB dead letter,
    the batch was retried for ever, and nothing after it in its partition was classified."""
    samples = sample_listings(2, seed=181, prefix="oversized")
    large = common_pb2.Listing()
    large.CopyFrom(samples[0].listing)
    large.image_bytes = bytes(40 << 20)
    event = submitted_event(large)
    _, classified, letters = _large_then_listing(kafka, b"oversized", event.SerializeToString(),
                                                 [(PAYLOAD_TYPE_HEADER, event.DESCRIPTOR.full_name.encode())],
                                                 samples[1])
    assert classified, "the listing after the large one was never classified"
    assert letters, "the large listing was not dead-lettered"
    assert letters[0].listing_id == large.listing_id and letters[0].stage == "preprocessing"
    assert letters[0].original_payload == b"" and "is not copied into this dead letter" in letters[0].reason


def _memory_kib(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {line.split(":")[0]: int(line.split()[1]) for line in status if line.startswith(("VmRSS", "VmHWM"))}


def test_a_batch_unfolding_to_gigabytes_is_dead_lettered_without_the_worker_growing_by_it(stack, kafka):
    """256 MiB of zeros in 8 KB of zstd: kafka-python unfolded the batch whole and copied it, so each fetch grew the
    worker by about 768 MiB (past its 2 GiB limit in deploy/ with a larger batch: restarted onto the same batch for
    good), and the record's dead letter, which copied its 256 MiB, was refused, so nothing after it was classified.
    Now it stops at KAFKA_MAX_DECOMPRESSED_BATCH_BYTES (64 MiB), dead-letters the record with where it sits, and the
    partition goes on."""
    sample = sample_listings(1, seed=179, prefix="unfolding")[0]
    workers = [service.process.process.pid for name, service in stack.services.items()
               if name.startswith("preprocessing")]
    before = {pid: _memory_kib(pid) for pid in workers}
    _, classified, letters = _large_then_listing(kafka, b"unfolding", bytes(256 << 20), [], sample)
    assert classified, "the listing after the batch was never classified"
    assert letters, "the batch was not dead-lettered"
    assert "zstd-compressed batch unfolds to more than" in letters[0].reason
    assert letters[0].error_kind == common_pb2.ERROR_KIND_INVALID_REQUEST
    # its batch carried as sent: a few kilobytes of zstd, not the 256 MiB they unfold to
    assert letters[0].source_batch_offset == letters[0].source_offset and len(letters[0].source_batch) < 64 << 10
    for pid, memory in before.items():
        peak = _memory_kib(pid)["VmHWM"]
        # The peak may rise by what one bounded read holds (64 MiB, in 1 MiB parts), not by the batch unfolded.
        assert peak <= max(memory["VmHWM"], memory["VmRSS"] + 160 * 1024), (
            f"preprocessing (pid {pid}) peaked at {peak >> 10} MiB, from {memory['VmRSS'] >> 10} MiB resident")
