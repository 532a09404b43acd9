"""A public corpus of images (Pillow's own test images: fuzzer finds that crashed, hung or exhausted a decoder,
broken streams, bombs, every format's corners) sent to the running system as sellers' photos: over gRPC, several
calls at once, each gets a category or INVALID_ARGUMENT with a reason and the image's error kind; through Kafka, every listing gets exactly one
outcome, stored and queryable, none lost and none published twice; and the services go on classifying."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from services.common.contracts.product_classification.v1 import common_pb2, gateway_pb2, results_pb2
from services.common.errors import ERROR_KIND_METADATA_KEY, ErrorKind
from services.drivers.traffic import TopicReader, classified_by_listing, sample_listings, submit_listings
from tests.public_corpora import corpus_files, pillow_test_images

pytestmark = pytest.mark.integration

# The files fuzzers and bug reports found (by their names in Pillow's tree), sent through Kafka as well.
FOUND_BY_FUZZERS = re.compile(r"crash|oom|timeout|ossfuzz|fuzz|broken|trunc|bad|invalid|bomb", re.IGNORECASE)
# The kinds (x-error-kind) that say the photo is at fault.
IMAGE_KINDS = {ErrorKind.INVALID_IMAGE.name, ErrorKind.IMAGE_TOO_LARGE.name}


@pytest.fixture(scope="module")
def corpus():
    root = pillow_test_images()
    return [(path.relative_to(root).as_posix(), path.read_bytes()) for path in corpus_files(root)]


def listing(index: int, prefix: str, data: bytes) -> common_pb2.Listing:
    return common_pb2.Listing(listing_id=f"{prefix}-{index}", marketplace="de-modehaus", image_bytes=data)


def test_every_file_over_grpc_gets_a_category_or_a_clear_refusal(gateway, corpus):
    def classify(item):
        index, (name, data) = item
        try:
            answer = gateway.ClassifyListing(gateway_pb2.ClassifyListingRequest(
                listing=listing(index, "corpus-grpc", data)), timeout=120)
        except grpc.RpcError as error:
            kind = dict(error.trailing_metadata() or ()).get(ERROR_KIND_METADATA_KEY)
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT and kind in IMAGE_KINDS and len(error.details()) > 20:
                return name, "refused"
            return name, f"{error.code().name}: {error.details()}"[:200]
        return name, "classified" if answer.category.id else "no category"

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = dict(pool.map(classify, enumerate(corpus)))
    wrong = {name: answer for name, answer in answers.items() if answer not in ("classified", "refused")}
    assert not wrong, wrong
    counted = {answer: list(answers.values()).count(answer) for answer in ("classified", "refused")}
    assert counted["classified"] > 600 and counted["refused"] > 300, counted
    good = sample_listings(1, seed=307, prefix="corpus-after")[0].listing
    assert gateway.ClassifyListing(gateway_pb2.ClassifyListingRequest(listing=good), timeout=60).category.id


def test_fuzzer_finds_through_kafka_each_get_one_outcome(kafka, results, corpus):
    chosen = [(name, data) for name, data in corpus if FOUND_BY_FUZZERS.search(name)]
    chosen += [(name, data) for name, data in corpus if not FOUND_BY_FUZZERS.search(name)][::25]
    assert len(chosen) > 100
    listings = [listing(index, "corpus-kafka", data) for index, (_, data) in enumerate(chosen)]
    good = sample_listings(3, seed=311, prefix="corpus-kafka-good")
    reader = TopicReader(kafka, kafka.topics.listing_classified)
    try:
        submit_listings(kafka, [good[0].listing, *listings, good[1].listing, good[2].listing])
        wanted = {item.listing_id for item in listings} | {sample.listing.listing_id for sample in good}
        stored: dict[str, int] = {}
        deadline = time.monotonic() + 240
        while len(stored) < len(wanted) and time.monotonic() < deadline:
            for listing_id in sorted(wanted - set(stored)):
                try:
                    stored[listing_id] = results.GetClassification(
                        results_pb2.GetClassificationRequest(listing_id=listing_id), timeout=10).status
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.NOT_FOUND, error
            time.sleep(0.5)
        missing = sorted(wanted - set(stored))
        assert not missing, f"{len(missing)} listings with no outcome: {missing[:10]}"
        expected = {listing_id for listing_id, status in stored.items()
                    if status != common_pb2.CLASSIFICATION_STATUS_FAILED}
        records = reader.read(lambda records: expected <= set(classified_by_listing(records)), 120)
        records += reader.read(lambda records: False, 2.0)  # a duplicate published right after would show too
        published = classified_by_listing(records)
    finally:
        reader.close()
    names = {item.listing_id: name for item, (name, _) in zip(listings, chosen)}
    for listing_id, status in stored.items():
        events = published.get(listing_id, [])
        if status == common_pb2.CLASSIFICATION_STATUS_FAILED:
            assert not events, f"{names.get(listing_id)} failed and was published as classified"
        else:
            assert len(events) == 1, f"{names.get(listing_id)}: published {len(events)} times"
    for sample in good:
        assert stored[sample.listing.listing_id] != common_pb2.CLASSIFICATION_STATUS_FAILED
