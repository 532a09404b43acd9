"""When a listing was submitted, as the preprocessing worker reads it off a record: the event's own time, else the
record's timestamp (which of a listing's events is the newer depends on it: services/results/store.py)."""

from types import SimpleNamespace

from services.common.contracts.product_classification.v1 import events_pb2
from services.preprocessing.kafka_worker import submitted_at


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

