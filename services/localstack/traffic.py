"""Sample traffic for the local stack: listings made from the sample catalogue, sent through Kafka, and read back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from services.common.contracts.product_classification.v1 import common_pb2, events_pb2
from services.common.kafka import payload_headers
from services.common.settings import KafkaSettings
from services.trainer.sample_catalogue import sample_images

MARKETPLACES = (("eu-fashion", "de-DE"), ("us-general", "en-US"), ("jp-market", "ja-JP"))


@dataclass(frozen=True)
class SampleListing:
    listing: common_pb2.Listing
    true_label: str


def sample_listings(count: int, seed: int = 7, prefix: str = "demo") -> list[SampleListing]:
    """count listings, each with a SYNTHETIC product photo inline, spread over the sample marketplaces."""
    run = uuid.uuid4().hex[:6]
    listings = []
    for index, image in enumerate(sample_images(count, seed)):
        marketplace, locale = MARKETPLACES[index % len(MARKETPLACES)]
        listing = common_pb2.Listing(listing_id=f"{prefix}-{run}-{index:04d}", marketplace=marketplace, locale=locale,
                                     image_bytes=image.jpeg, title=f"sample {image.category}")
        listings.append(SampleListing(listing, image.category))
    return listings


def submitted_event(listing: common_pb2.Listing) -> events_pb2.ListingSubmitted:
    submitted_at = Timestamp()
    submitted_at.GetCurrentTime()
    return events_pb2.ListingSubmitted(submission_id=str(uuid.uuid4()), listing=listing, submitted_at=submitted_at)


def submit_listings(settings: KafkaSettings, listings: Iterable[common_pb2.Listing]) -> int:
    """Produces a ListingSubmitted per listing (key = listing id) and waits for every acknowledgement."""
    producer = KafkaProducer(**settings.client_options(), acks="all", linger_ms=5, max_request_size=16 * 1024 * 1024)
    try:
        futures = []
        for listing in listings:
            event = submitted_event(listing)
            futures.append(producer.send(settings.topics.listing_submitted, key=listing.listing_id.encode(),
                                         value=event.SerializeToString(), headers=payload_headers(event)))
        producer.flush()
        for future in futures:
            future.get(timeout=30)
        return len(futures)
    finally:
        producer.close()


def produce_raw(settings: KafkaSettings, topic: str, key: bytes, value: bytes) -> None:
    producer = KafkaProducer(**settings.client_options(), acks="all")
    try:
        producer.send(topic, key=key, value=value).get(timeout=30)
    finally:
        producer.close()


class TopicReader:
    """Reads a whole topic from the beginning without a consumer group (every partition assigned)."""

    def __init__(self, settings: KafkaSettings, topic: str):
        self.consumer = KafkaConsumer(**settings.client_options(), enable_auto_commit=False, group_id=None,
                                      fetch_max_bytes=64 * 1024 * 1024)
        partitions = self.consumer.partitions_for_topic(topic) or set()
        deadline = time.monotonic() + 10
        while not partitions and time.monotonic() < deadline:
            time.sleep(0.2)
            partitions = self.consumer.partitions_for_topic(topic) or set()
        self.consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        self.consumer.seek_to_beginning()

    def read(self, until, timeout_s: float) -> list:
        """Polls records until until(records_so_far) holds or the time is up; returns every record read."""
        records: list = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not until(records):
            for batch in self.consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records

    def close(self) -> None:
        self.consumer.close()


def classified_by_listing(records: list) -> dict[str, list[events_pb2.ListingClassified]]:
    found: dict[str, list] = {}
    for record in records:
        event = events_pb2.ListingClassified.FromString(record.value)
        found.setdefault(event.classification.listing_id, []).append(event)
    return found


def submit_and_collect(settings: KafkaSettings, listings: list[common_pb2.Listing], timeout_s: float
                       ) -> dict[str, list[events_pb2.ListingClassified]]:
    """Submits the listings through Kafka and waits until each is published as classified (or the time is up)."""
    wanted = {listing.listing_id for listing in listings}
    reader = TopicReader(settings, settings.topics.listing_classified)
    try:
        submit_listings(settings, listings)
        records = reader.read(lambda rs: wanted <= set(classified_by_listing(rs)), timeout_s)
    finally:
        reader.close()
    return {k: v for k, v in classified_by_listing(records).items() if k in wanted}
