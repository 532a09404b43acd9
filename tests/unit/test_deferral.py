"""The preprocessing worker's handler sends a listing it had no room for (OVERLOADED) to the back of its topic, counted,
and dead-letters it only after the most deferrals; the batch's other listings go on, and nothing is retried whole."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from services.common.contracts.product_classification.v1 import common_pb2, events_pb2
from services.common.deferral import DEFERRALS_HEADER, deferrals
from services.common.errors import ClassificationError, ErrorKind
from services.common.kafka import MAX_DEAD_LETTER_PAYLOAD
from services.common.settings import Topics
from services.preprocessing.kafka_worker import SubmittedListingHandler


class Sends:
    """The producer seam: what was sent, acknowledged at once."""

    def __init__(self):
        self.sent = []

    def send(self, topic, key=None, value=None, headers=None, timestamp_ms=None):
        self.sent.append(SimpleNamespace(topic=topic, key=key, value=value, headers=headers, timestamp_ms=timestamp_ms))
        return SimpleNamespace(add_callback=lambda callback: None)


class NoRoomFor:
    """The predictor seam: OVERLOADED for the listings named, a classification for the others."""

    def __init__(self, *listing_ids: str):
        self.listing_ids = set(listing_ids)

    def predict(self, requests):
        return [ClassificationError(ErrorKind.OVERLOADED, "no room before the deadline")
                if request.listing.listing_id in self.listing_ids
                else events_pb2.PredictionMade(submission_id=request.submission_id,
                                               listing_id=request.listing.listing_id)
                for request in requests]


def record(listing_id: str, offset: int, headers=(), stamped: bool = True):
    event = events_pb2.ListingSubmitted(submission_id=f"s-{listing_id}",
                                        listing=common_pb2.Listing(listing_id=listing_id, marketplace="m"))
    if stamped:
        event.submitted_at.FromSeconds(1_800_000_000)
    return SimpleNamespace(topic="listing-submitted", partition=3, offset=offset, key=listing_id.encode(),
                           value=event.SerializeToString(), timestamp=1_800_000_123_456, headers=list(headers))


def test_a_listing_without_room_goes_to_the_back_of_its_topic_and_the_others_on():
    producer = Sends()
    handler = SubmittedListingHandler(NoRoomFor("late"), producer, Topics(), max_deferrals=3)
    first, late = record("first", 10), record("late", 11, headers=[("traceparent", b"00-abc-01"), ("payload-type",
                                                                                                     b"x")])
    futures = handler([first, late])
    assert len(futures) == 2
    topics = [sent.topic for sent in producer.sent]
    assert topics == [Topics().prediction_made, "listing-submitted"]
    again = producer.sent[1]
    # The same key (its listing's partition), payload, headers and time, one deferral counted.
    assert again.key == b"late" and again.value == late.value and again.timestamp_ms == late.timestamp
    assert again.headers == [("traceparent", b"00-abc-01"), ("payload-type", b"x"), (DEFERRALS_HEADER, b"1")]


def test_a_listing_deferred_the_most_times_is_dead_lettered_as_overloaded():
    producer = Sends()
    handler = SubmittedListingHandler(NoRoomFor("late"), producer, Topics(), max_deferrals=3)
    handler([record("late", 12, headers=[(DEFERRALS_HEADER, b"2")])])
    assert producer.sent[-1].topic == "listing-submitted"
    assert producer.sent[-1].headers == [(DEFERRALS_HEADER, b"3")]  # the count replaced, not added beside
    handler([record("late", 13, headers=[(DEFERRALS_HEADER, b"3")])])
    letter = producer.sent[-1]
    assert letter.topic == Topics().processing_failed
    failure = events_pb2.ProcessingFailed.FromString(letter.value)
    assert failure.error_kind == common_pb2.ERROR_KIND_OVERLOADED and failure.listing_id == "late"
    assert "deferred 3 times" in failure.reason and (failure.source_partition, failure.source_offset) == (3, 13)


def test_a_deferred_listing_without_its_own_submission_time_carries_the_records():
    """So a newer edit of the listing that overtakes the copy stays the newer one."""
    producer = Sends()
    handler = SubmittedListingHandler(NoRoomFor("late"), producer, Topics())
    handler([record("late", 14, stamped=False)])
    copy = events_pb2.ListingSubmitted.FromString(producer.sent[-1].value)
    assert copy.submitted_at.ToMilliseconds() == 1_800_000_123_456 and copy.listing.listing_id == "late"


@pytest.mark.parametrize("value, count", [(b"4", 4), (b"-7", 0), (b"many", 0), (b"\xff", 0), (None, 0),
                                          (b"9" * 40, 10 ** 40 - 1)])
def test_a_producers_deferral_count_is_read_as_a_count_or_none(value, count):
    assert deferrals([("other", b"1"), (DEFERRALS_HEADER, value)]) == count


def test_a_listing_with_a_count_past_the_most_is_dead_lettered_at_once():
    producer = Sends()
    handler = SubmittedListingHandler(NoRoomFor("late"), producer, Topics(), max_deferrals=5)
    handler([record("late", 15, headers=[(DEFERRALS_HEADER, b"99999999999999999999")])])
    assert producer.sent[-1].topic == Topics().processing_failed


def test_a_listing_too_large_to_send_again_is_dead_lettered_not_retried_for_ever():
    """A record at the topic's limit: its copy, one header more, could be refused by the producer on every retry."""
    producer = Sends()
    handler = SubmittedListingHandler(NoRoomFor("late"), producer, Topics())
    large = record("late", 16)
    event = events_pb2.ListingSubmitted.FromString(large.value)
    event.listing.image_bytes = b"\xff" * MAX_DEAD_LETTER_PAYLOAD
    large.value = event.SerializeToString()
    handler([large])
    letter = producer.sent[-1]
    assert letter.topic == Topics().processing_failed
    failure = events_pb2.ProcessingFailed.FromString(letter.value)
    assert failure.error_kind == common_pb2.ERROR_KIND_OVERLOADED and "too large to send again" in failure.reason
    assert failure.original_payload == b""  # past what a dead letter carries: it stays at its source offset
