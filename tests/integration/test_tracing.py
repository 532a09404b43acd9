"""One listing's path is one trace: from the caller's gRPC metadata through every Kafka hop to publication."""

import secrets

from google.protobuf.message import DecodeError

from services.common.contracts.product_classification.v1 import events_pb2, gateway_pb2
from services.drivers.traffic import TopicReader, sample_listings


def trace_ids(kafka, topic, listing_id, parse) -> set[str]:
    def decode(value):
        try:
            return parse(value)
        except DecodeError:
            return None  # other tests put garbage on the topics on purpose

    reader = TopicReader(kafka, topic)
    try:
        records = reader.read(lambda rs: any(decode(r.value) == listing_id for r in rs), 60)
    finally:
        reader.close()
    found = set()
    for record in records:
        if decode(record.value) == listing_id:
            headers = dict(record.headers)
            found.add(headers["traceparent"].decode().split("-")[1])
    return found


def test_the_callers_trace_reaches_every_topic(kafka, gateway):
    trace_id = secrets.token_hex(16)
    sample = sample_listings(1, seed=53, prefix="traced")[0]
    gateway.SubmitListing(gateway_pb2.SubmitListingRequest(listing=sample.listing), timeout=30,
                          metadata=[("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01")])
    listing_id = sample.listing.listing_id
    assert trace_ids(kafka, kafka.topics.listing_submitted, listing_id,
                     lambda v: events_pb2.ListingSubmitted.FromString(v).listing.listing_id) == {trace_id}
    assert trace_ids(kafka, kafka.topics.prediction_made, listing_id,
                     lambda v: events_pb2.PredictionMade.FromString(v).listing_id) == {trace_id}
    assert trace_ids(kafka, kafka.topics.listing_classified, listing_id,
                     lambda v: events_pb2.ListingClassified.FromString(v).classification.listing_id) == {trace_id}
