"""When a listing was submitted, as the preprocessing worker reads it off a record: the event's own time, else the
record's timestamp (which of a listing's events is the newer depends on it: services/results/store.py)."""

from types import SimpleNamespace

from services.common.contracts.product_classification.v1 import common_pb2, events_pb2
from services.common.errors import ClassificationError, ErrorKind
from services.common.settings import Topics
from services.preprocessing.kafka_worker import SubmittedListingHandler, submitted_at


def test_the_events_own_time_first_then_the_records_then_none():
    stamped = events_pb2.ListingSubmitted(submission_id="s")
    stamped.submitted_at.FromSeconds(1_800_000_000)
    unstamped = events_pb2.ListingSubmitted(submission_id="s")
    record = SimpleNamespace(timestamp=1_800_000_123_456)  # milliseconds, as Kafka keeps it
    assert submitted_at(record, stamped).ToSeconds() == 1_800_000_000
    assert submitted_at(record, unstamped).ToMilliseconds() == 1_800_000_123_456
    assert submitted_at(SimpleNamespace(timestamp=-1), unstamped) is None  # a record with no time
    assert submitted_at(SimpleNamespace(timestamp=None), unstamped) is None


def test_a_time_no_date_can_be_made_of_counts_as_none():
    far = events_pb2.ListingSubmitted(submission_id="s")
    far.submitted_at.seconds = 10 ** 12
    record = SimpleNamespace(timestamp=1_800_000_123_456)
    assert submitted_at(record, far).ToMilliseconds() == 1_800_000_123_456  # the record's time instead
    assert submitted_at(SimpleNamespace(timestamp=2 ** 62), far) is None
    bad_nanos = events_pb2.ListingSubmitted(submission_id="s")
    bad_nanos.submitted_at.nanos = -5
    assert submitted_at(SimpleNamespace(timestamp=None), bad_nanos) is None



class Sends:
    """The producer seam: what was sent, acknowledged at once."""

    def __init__(self):
        self.sent = []

    def send(self, topic, key, value, headers):
        self.sent.append((topic, value))
        return SimpleNamespace(add_callback=lambda callback: None)


def test_a_dead_letter_carries_the_listings_submission_time():
    """The result store orders a dead-lettered submission among the listing's others by it."""
    class Unreadable:
        def predict(self, requests):
            return [ClassificationError(ErrorKind.INVALID_IMAGE, "not an image") for _ in requests]

    stamped = events_pb2.ListingSubmitted(submission_id="stamped", listing=common_pb2.Listing(listing_id="l1"))
    stamped.submitted_at.FromSeconds(1_800_000_000)
    unstamped = events_pb2.ListingSubmitted(submission_id="unstamped", listing=common_pb2.Listing(listing_id="l2"))

    def record(event_bytes, offset):
        return SimpleNamespace(topic="listing-submitted", partition=0, offset=offset, key=b"l", value=event_bytes,
                               timestamp=1_800_000_123_456, headers=[])

    producer = Sends()
    SubmittedListingHandler(Unreadable(), producer, Topics())(
        [record(b"\xff\xff", 1), record(stamped.SerializeToString(), 2), record(unstamped.SerializeToString(), 3)])
    failures = [events_pb2.ProcessingFailed.FromString(value) for _, value in producer.sent]
    assert [f.submission_id for f in failures] == ["", "stamped", "unstamped"]
    assert failures[0].submitted_at.ToMilliseconds() == 1_800_000_123_456  # an unreadable event: the record's
    assert failures[1].submitted_at.ToSeconds() == 1_800_000_000  # the event's own time
    assert failures[2].submitted_at.ToMilliseconds() == 1_800_000_123_456  # else the record's
