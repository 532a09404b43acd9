"""Kafka edge of preprocessing: listing-submitted events in, prediction-made or processing-failed events out."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.contracts.product_classification.v1 import events_pb2
from services.common.errors import ClassificationError, ErrorKind, KafkaOutcome
from services.common.dead_letters import send_dead_letter
from services.common.deferral import copy_bytes, defer, deferrals
from services.common.kafka import MAX_DEAD_LETTER_PAYLOAD, send_event
from services.common.settings import Topics
from services.common.tracing import consuming_span
from services.common.validation import valid_timestamp
from services.preprocessing.core import ListingPredictor, ListingRequest


def submitted_at(record, event: events_pb2.ListingSubmitted) -> Timestamp | None:
    """When the listing was submitted: the event's own time, else the record's (the producer's clock when it made
    the record, or the broker's when it appended it): which of a listing's events is the newer one (the result
    store's _keys_in_order, for classifications and dead letters alike) and its end-to-end time both need one. A
    time no date can be made of (a producer's, out of Timestamp's range) counts as none."""
    if event.HasField("submitted_at") and valid_timestamp(event.submitted_at):
        return event.submitted_at
    milliseconds = getattr(record, "timestamp", None)
    if not isinstance(milliseconds, int) or milliseconds < 0:
        return None
    stamp = Timestamp(seconds=milliseconds // 1000, nanos=milliseconds % 1000 * 1_000_000)
    return stamp if valid_timestamp(stamp) else None


class SubmittedListingHandler:
    """Handles one polled batch; returns the send futures so the loop commits only after the broker acknowledged."""

    def __init__(self, predictor: ListingPredictor, producer, topics: Topics, max_deferrals: int = 5):
        self.predictor = predictor
        self.producer = producer
        self.topics = topics
        # A listing the worker had no room for before the batch's deadline goes to the back of its topic this many
        # times at most, then is dead-lettered as OVERLOADED (services.common.deferral).
        self.max_deferrals = max_deferrals

    def _dead_letter(self, record, kind: ErrorKind, reason: str, event: events_pb2.ListingSubmitted | None = None):
        return send_dead_letter(self.producer, self.topics.processing_failed, record, kind, reason, "preprocessing",
                                listing_id=event.listing.listing_id if event else "",
                                submission_id=event.submission_id if event else "",
                                marketplace=event.listing.marketplace if event else "",
                                submitted_at=submitted_at(record, event or events_pb2.ListingSubmitted()))

    def __call__(self, records: Sequence) -> list:
        futures, parsed = [], []
        for record in records:
            try:
                event = events_pb2.ListingSubmitted.FromString(record.value or b"")
            except DecodeError as error:
                with consuming_span(record, "preprocess listing"):
                    futures.append(self._dead_letter(record, ErrorKind.INVALID_REQUEST,
                                                     f"not a ListingSubmitted: {error}"))
                continue
            parsed.append((record, event))
        requests = [ListingRequest(e.submission_id, e.listing, submitted_at(record, e)) for record, e in parsed]
        outcomes = self.predictor.predict(requests) if requests else []
        for (record, event), outcome in zip(parsed, outcomes):
            if isinstance(outcome, ClassificationError) and outcome.kind.kafka_outcome is KafkaOutcome.RETRY:
                raise outcome  # the whole batch is retried; nothing is committed
        for (record, event), outcome in zip(parsed, outcomes):
            with consuming_span(record, "preprocess listing") as span:  # each output continues its input's trace
                span.set_attribute("listing.id", event.listing.listing_id)
                if isinstance(outcome, ClassificationError) and outcome.kind.kafka_outcome is KafkaOutcome.DEFER:
                    futures.append(self._defer_or_dead_letter(record, event, outcome))
                elif isinstance(outcome, ClassificationError):
                    futures.append(self._dead_letter(record, outcome.kind, outcome.reason, event))
                else:
                    futures.append(send_event(self.producer, self.topics.prediction_made, outcome.listing_id, outcome))
        return futures

    def _defer_or_dead_letter(self, record, event: events_pb2.ListingSubmitted, outcome: ClassificationError):
        """The listing to the back of its topic, or to the dead letters once deferred the most times. The copy
        carries the time the listing was submitted, so a newer edit that overtakes it stays the newer one."""
        before = deferrals(record.headers)
        if before >= self.max_deferrals:
            return self._dead_letter(record, outcome.kind, f"{outcome.reason}; deferred {before} times already, the "
                                     f"most allowed ({self.max_deferrals}): send it again once the workers have "
                                     "room (replay-dead-letters)", event)
        value = None
        if not event.HasField("submitted_at"):
            stamp = submitted_at(record, event)
            if stamp is not None:
                event.submitted_at.CopyFrom(stamp)
                value = event.SerializeToString()
        size = copy_bytes(record, value)
        if size > MAX_DEAD_LETTER_PAYLOAD:
            return self._dead_letter(record, outcome.kind, f"{outcome.reason}; too large to send again "
                                     f"({size} bytes with its headers): it stays at its source "
                                     "offset, for replay-dead-letters once the workers have room", event)
        return defer(self.producer, record, "preprocessing", value)
