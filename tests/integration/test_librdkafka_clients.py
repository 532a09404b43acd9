"""Listing services on librdkafka, the C client under Go's confluent-kafka-go, .NET's Confluent.Kafka, Node's
node-rdkafka, PHP, Ruby and Python's confluent-kafka: its own record batches (an idempotent producer's sequence numbers,
its own codecs), its own consumer group client. They produce listing events the services classify, and read the
classifications back as a listing service would, headers included."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, Producer

from services.common.contracts.product_classification.v1 import events_pb2
from services.common.kafka import EVENT_ID_HEADER, PAYLOAD_TYPE_HEADER, payload_headers
from services.drivers.traffic import sample_listings, submitted_event

pytestmark = pytest.mark.integration

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


def librdkafka_options(kafka) -> dict:
    """The stack's Kafka settings in librdkafka's words (over TLS: its CA, and the client's certificate and key)."""
    options = {"bootstrap.servers": kafka.bootstrap_servers, "security.protocol": kafka.security_protocol.lower()}
    for ours, theirs in (("ssl_cafile", "ssl.ca.location"), ("ssl_certfile", "ssl.certificate.location"),
                         ("ssl_keyfile", "ssl.key.location")):
        if getattr(kafka, ours):
            options[theirs] = getattr(kafka, ours)
    return options


def produce(kafka, samples, codec: str) -> None:
    failures = []
    producer = Producer({**librdkafka_options(kafka), "enable.idempotence": True, "acks": "all",
                         "compression.type": codec, "linger.ms": 50,  # the two listings in one batch
                         # the Java client's partitioner: a listing keyed alike lands where a Java producer puts it
                         "partitioner": "murmur2_random", "message.max.bytes": 16 * 1024 * 1024})
    for sample in samples:
        event = submitted_event(sample.listing)
        producer.produce(kafka.topics.listing_submitted, key=sample.listing.listing_id.encode(),
                         value=event.SerializeToString(), headers=payload_headers(event),
                         on_delivery=lambda error, _message: error and failures.append(error))
    assert producer.flush(30) == 0 and not failures, failures


def read_classified(kafka, wanted: set[str], timeout_s: float) -> dict[str, tuple[events_pb2.ListingClassified, dict]]:
    """Each wanted listing's classification as a librdkafka consumer group of its own reads it: (event, headers)."""
    consumer = Consumer({**librdkafka_options(kafka), "group.id": f"librdkafka-reader-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": kafka.session_timeout_ms,
                         "heartbeat.interval.ms": kafka.heartbeat_interval_ms})
    found: dict[str, tuple[events_pb2.ListingClassified, dict]] = {}
    try:
        consumer.subscribe([kafka.topics.listing_classified])
        deadline = time.monotonic() + timeout_s
        while set(found) != wanted and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None:
                continue
            if message.error():
                assert message.error().code() == KafkaError._PARTITION_EOF, message.error()
                continue
            event = events_pb2.ListingClassified.FromString(message.value())
            if event.classification.listing_id in wanted:
                found[event.classification.listing_id] = (event, dict(message.headers() or []))
    finally:
        consumer.close()
    return found


def test_listings_from_an_idempotent_librdkafka_producer_in_every_codec_are_classified_and_read_back(stack, kafka):
    samples = sample_listings(2 * len(CODECS), seed=229, prefix="librdkafka")
    for index, codec in enumerate(CODECS):
        produce(kafka, samples[2 * index:2 * index + 2], codec)
    check_read_back(kafka, samples)


def check_read_back(kafka, samples) -> None:
    wanted = {sample.listing.listing_id for sample in samples}
    found = read_classified(kafka, wanted, 120)
    assert set(found) == wanted, f"never read back: {sorted(wanted - set(found))}"
    right = 0
    for sample in samples:
        event, headers = found[sample.listing.listing_id]
        assert headers[PAYLOAD_TYPE_HEADER] == b"product_classification.v1.ListingClassified"
        assert headers[EVENT_ID_HEADER].decode() == event.event_id != ""
        assert event.classification.category.id and event.classification.marketplace == sample.listing.marketplace
        right += event.classification.label == sample.true_label
    assert right >= 0.7 * len(samples), f"{right} of {len(samples)} photos classified right"  # 0.93 over them all
