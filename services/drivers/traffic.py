"""Traffic for the local stack: listings made from real validation photos, sent through Kafka, and read back.

The photos are the clothing dataset's validation split (never its training photos): the models were not trained on
them, so what comes back is what a marketplace would get.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from services.common.contracts.product_classification.v1 import common_pb2, events_pb2
from services.common.kafka import payload_headers
from services.common.kafka_unreadable import unreadable_at
from services.common.settings import KafkaSettings
from services.trainer.dataset import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

# The example marketplaces (services/results/config/marketplaces) and a locale each of their listings arrives in.
MARKETPLACES = (("de-modehaus", "de-DE"), ("fr-boutique", "fr-FR"), ("jp-ichiba", "ja-JP"), ("br-loja", "pt-BR"))


@dataclass(frozen=True)
class SampleListing:
    listing: common_pb2.Listing
    true_label: str
    path: Path | None = None


def labelled_photos(folder: Path | None = None) -> list[tuple[Path, str]]:
    """(photo, label) for every photo of a folder-per-category set; default: the clothing validation split."""
    if folder is None:
        from services.trainer.real_models import clothing_dataset  # the trainer's imports (torch) only when needed

        folder = clothing_dataset() / "validation"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no photos (set CLOTHING_DATASET_DIR to the clothing dataset)")
    return [(path, category.name) for category in sorted(p for p in folder.iterdir() if p.is_dir())
            for path in sorted(category.iterdir()) if path.suffix.lower() in IMAGE_SUFFIXES]


def jpeg_with_comment(data: bytes, text: str) -> bytes:
    """A JPEG with a comment segment (COM) of its own after its start marker: the same pixels in bytes, so a digest,
    that no other listing had. Anything that is not a JPEG is returned as it is."""
    comment = text.encode()[:65533]
    if data[:2] != b"\xff\xd8":
        return data
    return data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + data[2:]


def sample_listings(count: int, seed: int = 7, prefix: str = "demo", folder: Path | None = None,
                    photos_new_to_the_stack: bool = False) -> list[SampleListing]:
    """count listings with a real photo inline each, drawn evenly over the categories (the seed picks which),
    spread over the example marketplaces. Photos repeat once every photo has been used. photos_new_to_the_stack:
    each JPEG carries a comment of its own (jpeg_with_comment), so no preprocessing worker has answered it before
    and each is decoded and sent to the models (its prediction cache would answer a photo seen before at once)."""
    photos = labelled_photos(folder)
    rng = random.Random(seed)
    by_label: dict[str, list[Path]] = {}
    for path, label in photos:
        by_label.setdefault(label, []).append(path)
    for paths in by_label.values():
        rng.shuffle(paths)
    ordered = [by_label[label][i] for i in range(max(map(len, by_label.values())))
               for label in sorted(by_label) if i < len(by_label[label])]
    labels = {path: label for path, label in photos}
    run = uuid.uuid4().hex[:6]
    listings = []
    for index in range(count):
        path = ordered[index % len(ordered)]
        marketplace, locale = MARKETPLACES[index % len(MARKETPLACES)]
        listing_id = f"{prefix}-{run}-{index:04d}"
        data = path.read_bytes()
        if photos_new_to_the_stack:
            data = jpeg_with_comment(data, listing_id)
        listing = common_pb2.Listing(listing_id=listing_id, marketplace=marketplace, locale=locale,
                                     image_bytes=data, title=f"photo {path.name}")
        listings.append(SampleListing(listing, labels[path], path))
    return listings


def large_photo_listings(count: int, seed: int = 7, prefix: str = "large", scale: int = 10) -> list[SampleListing]:
    """sample_listings whose photos are enlarged `scale` times each way (nearest neighbour) and sent as PNG: a
    validation photo of 400x534 becomes 21 megapixels in about 0.7 MB, each listing's photo its own, which a worker
    decodes at full size (0.1 s on two cores, about 140 MB by its decoding estimate) before averaging it down."""
    import io

    from PIL import Image

    samples = sample_listings(count, seed, prefix)
    enlarged = []
    for sample in samples:
        picture = Image.open(io.BytesIO(sample.listing.image_bytes)).convert("RGB")
        out = io.BytesIO()
        picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST).save(out, "PNG",
                                                                                            compress_level=1)
        listing = common_pb2.Listing()
        listing.CopyFrom(sample.listing)
        listing.image_bytes = out.getvalue()
        enlarged.append(SampleListing(listing, sample.true_label, sample.path))
    return enlarged


def submitted_event(listing: common_pb2.Listing) -> events_pb2.ListingSubmitted:
    submitted_at = Timestamp()
    submitted_at.GetCurrentTime()
    return events_pb2.ListingSubmitted(submission_id=str(uuid.uuid4()), listing=listing, submitted_at=submitted_at)


def submit_listings(settings: KafkaSettings, listings: Iterable[common_pb2.Listing],
                    partitions: Iterable[int] | None = None) -> int:
    """Produces a ListingSubmitted per listing (key = listing id; to the given partition each, when given, else to
    the key's) and waits for every acknowledgement."""
    # batch_size as the services' producers (services/common/kafka.py): with the default 16 KiB each photo was a
    # batch of its own, 0.55 against 0.34 CPU-ms per 300 KB listing here, taken from the pipeline it measures
    producer = KafkaProducer(**settings.client_options(), acks="all", linger_ms=5, batch_size=1024 * 1024,
                             max_request_size=16 * 1024 * 1024)
    try:
        futures = []
        for listing, partition in zip(listings, partitions if partitions is not None else itertools.repeat(None)):
            event = submitted_event(listing)
            futures.append(producer.send(settings.topics.listing_submitted, key=listing.listing_id.encode(),
                                         value=event.SerializeToString(), headers=payload_headers(event),
                                         partition=partition))
        producer.flush()
        for future in futures:
            future.get(timeout=30)
        return len(futures)
    finally:
        producer.close()


def produce_raw(settings: KafkaSettings, topic: str, key: bytes, value: bytes, headers: list | None = None,
                compression_type: str | None = None):
    """One record as given (in a batch of its own, compressed when asked: any size then, what travels is checked by
    the broker); returns its metadata (partition, offset) once the broker acknowledged it."""
    producer = KafkaProducer(**settings.client_options(), acks="all", compression_type=compression_type,
                             **({"max_request_size": 1 << 30} if compression_type else {}))
    try:
        return producer.send(topic, key=key, value=value, headers=headers or []).get(timeout=30)
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
        self.unreadable: list[tuple[TopicPartition, int]] = []  # where records that could not be read were passed over

    def read(self, until, timeout_s: float) -> list:
        """Polls records until until(records_so_far) holds or the time is up; returns every record read. A record the
        client cannot read (services.common.kafka_unreadable) is logged, noted in `unreadable` and passed over."""
        records: list = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not until(records):
            try:
                polled = self.consumer.poll(timeout_ms=200)
            except Exception as error:  # noqa: BLE001
                place = unreadable_at(error)
                if place is None:
                    raise
                log.warning("passing over a record that cannot be read at %s/%s/%s: %s", place[0].topic,
                            place[0].partition, place[1], error)
                self.unreadable.append(place)
                self.consumer.seek(place[0], place[1] + 1)
                continue
            for batch in polled.values():
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


class AllClassified:
    """A TopicReader's stopping condition: every wanted listing published as classified. Parses each record once:
    parsing everything read so far after every poll cost the load generator most of a core at 1,400 listings on a
    GPU host, and the run's end was seen late."""

    def __init__(self, wanted: set[str]):
        self.wanted = set(wanted)
        self.seen: set[str] = set()
        self._parsed = 0

    def __call__(self, records: list) -> bool:
        for record in records[self._parsed:]:
            self.seen.add(events_pb2.ListingClassified.FromString(record.value).classification.listing_id)
        self._parsed = len(records)
        return self.wanted <= self.seen


def submit_and_collect(settings: KafkaSettings, listings: list[common_pb2.Listing], timeout_s: float
                       ) -> dict[str, list[events_pb2.ListingClassified]]:
    """Submits the listings through Kafka and waits until each is published as classified (or the time is up)."""
    wanted = {listing.listing_id for listing in listings}
    reader = TopicReader(settings, settings.topics.listing_classified)
    try:
        submit_listings(settings, listings)
        records = reader.read(AllClassified(wanted), timeout_s)
    finally:
        reader.close()
    return {k: v for k, v in classified_by_listing(records).items() if k in wanted}
