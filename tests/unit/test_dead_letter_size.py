"""A dead letter always fits in a produce request. It copied the record's payload and ids whole, so a record near or
past the produce limit (one unfolded from a compressed batch can be 64 MiB) made a dead letter the producer refused,
and its batch was retried for ever."""

from __future__ import annotations

from types import SimpleNamespace

from kafka.record.default_records import DefaultRecordBatchBuilder

from services.common.contracts.product_classification.v1 import events_pb2
from services.common.dead_letters import dead_letter, unreadable_dead_letter
from services.common.errors import ErrorKind
from services.common.kafka import MAX_DEAD_LETTER_PAYLOAD, MAX_REQUEST_BYTES, UnreadableRecord, payload_headers


def record(value: bytes, key: bytes = b"listing-1"):
    return SimpleNamespace(topic="product-classification.listing-submitted.v1", partition=3, offset=41, key=key,
                           value=value)


def produced_size(failure: events_pb2.ProcessingFailed) -> int:
    """What kafka-python measures against max_request_size for this dead letter, keyed and headed as it is sent."""
    headers = payload_headers(failure) + [("traceparent", b"00-" + b"0" * 32 + b"-" + b"0" * 16 + b"-01")]
    return DefaultRecordBatchBuilder.estimate_size_in_bytes(failure.listing_id.encode(), failure.SerializeToString(),
                                                            headers)


def test_a_payload_a_dead_letter_can_carry_is_carried_whole():
    payload = bytes(range(256)) * 1000
    failure = dead_letter(record(payload), ErrorKind.INVALID_IMAGE, "the image cannot be decoded", "preprocessing")
    assert failure.original_payload == payload
    assert failure.reason == "the image cannot be decoded"
    assert (failure.source_partition, failure.source_offset, failure.listing_id) == (3, 41, "listing-1")


def test_a_payload_too_large_to_carry_is_left_where_it_is_and_the_reason_says_so():
    payload = bytes(MAX_DEAD_LETTER_PAYLOAD + 1)
    failure = dead_letter(record(payload), ErrorKind.INVALID_REQUEST, "not a ListingSubmitted", "preprocessing")
    assert failure.original_payload == b""
    assert failure.reason.startswith("not a ListingSubmitted (the payload, ")
    assert f"{MAX_DEAD_LETTER_PAYLOAD + 1} bytes, is not copied" in failure.reason
    assert (failure.source_topic, failure.source_partition, failure.source_offset) == (
        "product-classification.listing-submitted.v1", 3, 41)


def test_every_dead_letter_fits_a_produce_request_whatever_the_record_holds():
    """The largest payload carried, with ids, key and reason as long as a hostile record can make them."""
    for value in (bytes(MAX_DEAD_LETTER_PAYLOAD), bytes(MAX_REQUEST_BYTES), bytes(64 << 20)):
        for key, listing_id in ((b"k" * (8 << 20), ""), (b"k", "\u20ac" * (4 << 20))):
            failure = dead_letter(record(value, key), ErrorKind.INVALID_REQUEST, "\u20ac" * (1 << 20), "results",
                                  listing_id=listing_id, submission_id="s" * (4 << 20), marketplace="m" * (4 << 20))
            assert produced_size(failure) <= MAX_REQUEST_BYTES, (len(value), len(key), len(listing_id))


def test_ids_too_long_to_be_valid_stay_too_long_once_clipped():
    """The result service stores a failure under its listing id only when the id is valid (at most 256 characters):
    a clipped id must not become one, which could be another listing's."""
    failure = dead_letter(record(b"x"), ErrorKind.INVALID_REQUEST, "bad", "preprocessing", listing_id="a" * 100_000)
    assert 256 < len(failure.listing_id) < 100_000


def unreadable(**batch) -> UnreadableRecord:
    return UnreadableRecord("product-classification.listing-submitted.v1", 3, 41,
                            "unreadable record: CorruptRecordError: failed crc check", **batch)


def test_an_unreadable_record_s_dead_letter_carries_its_batch_where_it_fits():
    batch = bytes(range(256)) * 100
    failure = unreadable_dead_letter(unreadable(batch=batch, batch_offset=40, batch_size=len(batch)), "preprocessing")
    assert (failure.source_batch, failure.source_batch_offset, failure.source_offset) == (batch, 40, 41)
    assert failure.reason == "unreadable record: CorruptRecordError: failed crc check"
    assert failure.original_payload == b"" and failure.listing_id == ""
    assert failure.error_kind == ErrorKind.INVALID_REQUEST.proto


def test_an_unreadable_record_s_dead_letter_says_where_its_batch_is_when_it_does_not_carry_it():
    too_large = unreadable_dead_letter(unreadable(batch_offset=40, batch_size=MAX_DEAD_LETTER_PAYLOAD + 1), "results")
    assert too_large.source_batch == b"" and too_large.source_batch_offset == 0
    assert f"{MAX_DEAD_LETTER_PAYLOAD + 1} bytes from offset 40, is not copied" in too_large.reason
    carried = unreadable_dead_letter(unreadable(batch_offset=40, batch_size=100, carried_by=40), "results")
    assert carried.source_batch == b"" and "is in the dead letter of offset 40" in carried.reason
    not_found = unreadable_dead_letter(unreadable(), "results")
    assert not_found.source_batch == b"" and "could not be found in the fetch" in not_found.reason


def test_an_unreadable_record_s_dead_letter_fits_a_produce_request_with_the_largest_batch_it_carries():
    batch = bytes(MAX_DEAD_LETTER_PAYLOAD)
    failure = unreadable_dead_letter(unreadable(batch=batch, batch_offset=40, batch_size=len(batch)), "results")
    assert failure.source_batch == batch and produced_size(failure) <= MAX_REQUEST_BYTES
