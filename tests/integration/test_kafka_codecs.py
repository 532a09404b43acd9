"""Listing events from producers that compress, as producers in other languages do (a Java producer's
`compression.type`): a batch in a codec the consumer could not read raised on every poll, so its partition (and every
listing after it there) was never classified, while the service went on saying SERVING."""

from __future__ import annotations

import pytest
from kafka import KafkaProducer

from services.common.kafka import PAYLOAD_TYPE_HEADER
from services.drivers.traffic import AllClassified, TopicReader, classified_by_listing, sample_listings, submitted_event

pytestmark = pytest.mark.integration

CODECS = ["gzip", "snappy", "lz4", "zstd"]


def test_listings_compressed_in_every_kafka_codec_are_classified(stack, kafka):
    samples = sample_listings(2 * len(CODECS), seed=167, prefix="codec")
    reader = TopicReader(kafka, kafka.topics.listing_classified)
    try:
        for index, codec in enumerate(CODECS):
            producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, compression_type=codec, acks="all",
                                     linger_ms=50)  # two listings in one compressed batch
            for sample in samples[2 * index:2 * index + 2]:
                event = submitted_event(sample.listing)
                producer.send(kafka.topics.listing_submitted, key=sample.listing.listing_id.encode(),
                              value=event.SerializeToString(),
                              headers=[(PAYLOAD_TYPE_HEADER, event.DESCRIPTOR.full_name.encode())])
            producer.flush(30)
            producer.close()
        wanted = {sample.listing.listing_id for sample in samples}
        classified = classified_by_listing(reader.read(AllClassified(wanted), 120))
    finally:
        reader.close()
    missing = sorted(wanted - set(classified))
    assert not missing, f"never classified: {missing}"
    for sample in samples:
        assert classified[sample.listing.listing_id][0].classification.label
