"""The pipeline end to end on the real broker, the real Triton (CPU) and the real PostgreSQL."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest

from services.common.contracts.product_classification.v1 import (
    common_pb2,
    events_pb2,
    gateway_pb2,
    results_pb2,
)
from services.drivers.traffic import (
    MARKETPLACES,
    TopicReader,
    classified_by_listing,
    produce_raw,
    sample_listings,
    submit_listings,
)
from services.trainer.real_models import clothing_dataset

GARBAGE_IMAGE = b"\x89PNG\r\n\x1a\n this is not really a PNG"

# (validation photo, label): answers known in advance (see known_photos.txt).
KNOWN_PHOTOS = [tuple(line.split()[:2]) for line in Path(__file__).with_name("known_photos.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#")]


def mapped_category(marketplace: str, label: str) -> str:
    """The Shopify category the marketplace's own file maps the label to."""
    import tomllib

    from services.results.taxonomy import CONFIG

    return tomllib.loads((CONFIG / "marketplaces" / f"{marketplace}.toml").read_text())["labels"][label]


def read_classified(kafka, listing_ids: set[str], timeout_s: float = 120.0) -> dict[str, list]:
    reader = TopicReader(kafka, kafka.topics.listing_classified)
    try:
        records = reader.read(lambda rs: listing_ids <= set(classified_by_listing(rs)), timeout_s)
        # a little longer, so a duplicate published right after would be seen too
        records += reader.read(lambda rs: False, 1.0)
    finally:
        reader.close()
    found = classified_by_listing(records)
    return {listing_id: found.get(listing_id, []) for listing_id in listing_ids}


def read_failures(kafka, listing_ids: set[str], timeout_s: float = 60.0) -> dict[str, events_pb2.ProcessingFailed]:
    reader = TopicReader(kafka, kafka.topics.processing_failed)

    def failures(records):
        return {f.listing_id: f for f in (events_pb2.ProcessingFailed.FromString(r.value) for r in records)}

    try:
        records = reader.read(lambda rs: listing_ids <= set(failures(rs)), timeout_s)
    finally:
        reader.close()
    return {k: v for k, v in failures(records).items() if k in listing_ids}


def test_fifty_listings_through_kafka_are_classified_published_and_stored_once(stack, kafka, store):
    listings = sample_listings(50, seed=11, prefix="kafka50")
    ids = {s.listing.listing_id for s in listings}
    submit_listings(kafka, [s.listing for s in listings])

    published = read_classified(kafka, ids)

    assert {i for i, events in published.items() if not events} == set(), "listings never classified"
    assert {i: len(e) for i, e in published.items() if len(e) != 1} == {}, "published more than once"
    statuses, right = set(), 0
    for sample in listings:
        event = published[sample.listing.listing_id][0].classification
        statuses.add(event.status)
        # NEEDS_REVIEW exactly when the calibrated confidence is below the marketplace's threshold
        expected = (common_pb2.CLASSIFICATION_STATUS_CLASSIFIED if event.confidence >= event.review_threshold
                    else common_pb2.CLASSIFICATION_STATUS_NEEDS_REVIEW)
        assert event.status == expected and 0.0 < event.review_threshold < 1.0
        assert event.marketplace == sample.listing.marketplace and event.category.id and event.label
        assert event.category.id.startswith("gid://shopify/TaxonomyCategory/aa")
        assert event.category.google_category.id and event.category.customs_codes
        assert 0.0 < event.confidence <= 1.0
        assert {v.split(":")[0] for v in event.model_versions.split(",")} == set(stack.called_models)
        assert store.count_for_listing(sample.listing.listing_id) == 1
        right += event.label == sample.true_label
    assert right >= 0.8 * len(listings), f"only {right}/{len(listings)} real validation photos right"
    # Both outcomes occur among 50 real photos (about a sixth need review at the fitted threshold).
    assert statuses == {common_pb2.CLASSIFICATION_STATUS_CLASSIFIED, common_pb2.CLASSIFICATION_STATUS_NEEDS_REVIEW}


def test_photos_with_a_known_answer_get_their_category_in_every_marketplace(gateway):
    """Photos the published models get right by a wide margin: a label-order bug, swapped colour channels or a
    broken fusion would change these answers."""
    assert len(KNOWN_PHOTOS) >= 10
    for index, (photo, label) in enumerate(KNOWN_PHOTOS):
        marketplace, locale = MARKETPLACES[index % len(MARKETPLACES)]
        listing = common_pb2.Listing(listing_id=f"known-{index}", marketplace=marketplace, locale=locale,
                                     image_bytes=(clothing_dataset() / "validation" / photo).read_bytes())
        answer = gateway.ClassifyListing(gateway_pb2.ClassifyListingRequest(listing=listing), timeout=60)
        assert (answer.label, answer.category.id) == (label, mapped_category(marketplace, label)), photo
        assert answer.status == common_pb2.CLASSIFICATION_STATUS_CLASSIFIED and answer.confidence > 0.9, photo


def test_synchronous_call_returns_a_category(gateway):
    sample = sample_listings(1, seed=3, prefix="sync")[0]
    classification = gateway.ClassifyListing(gateway_pb2.ClassifyListingRequest(listing=sample.listing), timeout=60)
    assert classification.listing_id == sample.listing.listing_id
    assert classification.status in (common_pb2.CLASSIFICATION_STATUS_CLASSIFIED,
                                     common_pb2.CLASSIFICATION_STATUS_NEEDS_REVIEW)
    assert classification.category.id and list(classification.category.path)
    assert classification.sequence > 0  # stored


def test_classify_many_in_one_call_and_as_a_stream(gateway):
    samples = sample_listings(4, seed=5, prefix="many")
    bad = common_pb2.Listing(listing_id="many-bad", marketplace="de-modehaus", image_bytes=GARBAGE_IMAGE)
    response = gateway.ClassifyListings(gateway_pb2.ClassifyListingsRequest(
        listings=[s.listing for s in samples] + [bad]), timeout=120)
    assert [o.listing_id for o in response.outcomes] == [s.listing.listing_id for s in samples] + ["many-bad"]
    assert all(o.WhichOneof("outcome") == "classification" for o in response.outcomes[:4])
    assert response.outcomes[4].error.kind == common_pb2.ERROR_KIND_INVALID_IMAGE

    requests = [gateway_pb2.ClassifyListingRequest(listing=s.listing) for s in samples]
    outcomes = list(gateway.ClassifyListingStream(iter(requests), timeout=120))
    assert sorted(o.listing_id for o in outcomes) == sorted(s.listing.listing_id for s in samples)
    assert all(o.classification.category.id for o in outcomes)


def test_query_api_returns_what_was_stored(gateway, results, store):
    samples = sample_listings(3, seed=13, prefix="query")
    returned = [gateway.ClassifyListing(gateway_pb2.ClassifyListingRequest(listing=s.listing), timeout=60)
                for s in samples]
    for classification in returned:
        fetched = results.GetClassification(results_pb2.GetClassificationRequest(listing_id=classification.listing_id))
        assert fetched == store.latest_for_listing(classification.listing_id)
        assert fetched.category == classification.category and fetched.sequence == classification.sequence

    page = results.ListClassifications(results_pb2.ListClassificationsRequest(page_size=2))
    assert len(page.classifications) == 2 and page.next_before_sequence
    assert page.classifications[0].sequence > page.classifications[1].sequence
    next_page = results.ListClassifications(results_pb2.ListClassificationsRequest(
        page_size=2, before_sequence=page.next_before_sequence))
    assert next_page.classifications[0].sequence < page.classifications[1].sequence

    with pytest.raises(grpc.RpcError) as raised:
        results.GetClassification(results_pb2.GetClassificationRequest(listing_id="never-seen"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_asynchronous_submission_is_classified_later(gateway, results):
    sample = sample_listings(1, seed=17, prefix="async")[0]
    accepted = gateway.SubmitListing(gateway_pb2.SubmitListingRequest(listing=sample.listing), timeout=30)
    assert accepted.submission_id and accepted.listing_id == sample.listing.listing_id
    deadline = time.monotonic() + 60
    while True:
        try:
            found = results.GetClassification(results_pb2.GetClassificationRequest(listing_id=accepted.listing_id))
            break
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND and time.monotonic() < deadline
            time.sleep(0.2)
    assert found.submission_id == accepted.submission_id and found.category.id


def test_watch_stream_sees_new_classifications(gateway, results):
    seen: list = []
    stream = results.WatchClassifications(results_pb2.WatchClassificationsRequest(marketplace="fr-boutique"),
                                          timeout=60)

    def watch():
        try:
            for classification in stream:
                seen.append(classification)
                if len(seen) >= 2:
                    stream.cancel()
        except grpc.RpcError:
            pass

    watcher = threading.Thread(target=watch)
    watcher.start()
    stream.initial_metadata()  # sent by the server once the stream's starting point is taken: nothing after is missed
    samples = [s for s in sample_listings(6, seed=19, prefix="watch") if s.listing.marketplace == "fr-boutique"]
    for sample in samples:
        gateway.ClassifyListing(gateway_pb2.ClassifyListingRequest(listing=sample.listing), timeout=60)
    watcher.join(60)
    assert [c.listing_id for c in seen] == [s.listing.listing_id for s in samples]
    assert all(c.marketplace == "fr-boutique" for c in seen)


def test_undecodable_image_fails_clearly_and_the_pipeline_goes_on(kafka, gateway, results):
    good = sample_listings(3, seed=23, prefix="poison")
    bad = common_pb2.Listing(listing_id="poison-bad-image", marketplace="de-modehaus", image_bytes=GARBAGE_IMAGE)
    submit_listings(kafka, [good[0].listing, bad, good[1].listing])

    failures = read_failures(kafka, {"poison-bad-image"})
    failure = failures["poison-bad-image"]
    assert failure.error_kind == common_pb2.ERROR_KIND_INVALID_IMAGE
    assert "cannot be decoded" in failure.reason and failure.stage == "preprocessing"
    assert events_pb2.ListingSubmitted.FromString(failure.original_payload).listing.image_bytes == GARBAGE_IMAGE
    published = read_classified(kafka, {good[0].listing.listing_id, good[1].listing.listing_id})
    assert all(len(events) == 1 for events in published.values())

    with pytest.raises(grpc.RpcError) as raised:
        gateway.ClassifyListing(gateway_pb2.ClassifyListingRequest(listing=bad), timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot be decoded" in raised.value.details()
    # the failed listing is queryable with its reason, and the next call works
    stored = results.GetClassification(results_pb2.GetClassificationRequest(listing_id="poison-bad-image"))
    assert stored.status == common_pb2.CLASSIFICATION_STATUS_FAILED and "cannot be decoded" in stored.error_reason
    after = gateway.ClassifyListing(gateway_pb2.ClassifyListingRequest(listing=good[2].listing), timeout=60)
    assert after.category.id


def test_a_web_page_sent_as_a_photo_is_named_in_the_answer(gateway):
    """What an image host answers with a login or error page: the caller is told it is a web page, not a photo."""
    page = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Sign in to see this photo</body></html>"
    listing = common_pb2.Listing(listing_id="html-instead-of-photo", marketplace="de-modehaus", image_bytes=page)
    with pytest.raises(grpc.RpcError) as raised:
        gateway.ClassifyListing(gateway_pb2.ClassifyListingRequest(listing=listing), timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the file is an HTML page" in raised.value.details()
    assert "a web page came where the photo should be" in raised.value.details()


def test_garbage_event_is_dead_lettered_with_its_reason(kafka):
    produce_raw(kafka, kafka.topics.listing_submitted, b"garbage-event", b"\xff\x00 not protobuf")
    failure = read_failures(kafka, {"garbage-event"})["garbage-event"]
    assert failure.error_kind == common_pb2.ERROR_KIND_INVALID_REQUEST and failure.original_payload


def test_a_submission_time_no_date_can_be_made_of_is_dropped_and_the_listing_classified(kafka, results):
    """A producer's submitted_at (or record timestamp) out of Timestamp's range. Before, preprocessing carried it on
    into the stored classification and the published event, where a consumer converting it to JSON or to a date
    fails (protobuf's own MessageToJson raises). And the first version of the record-time fallback (d9e5128) failed
    the whole batch of a record with no submitted_at and such a timestamp, for good (converting it raised)."""
    from kafka import KafkaProducer

    from services.common.kafka import payload_headers
    from services.common.validation import valid_timestamp
    from services.drivers.traffic import AllClassified, submitted_event

    samples = sample_listings(2, seed=233, prefix="bad-time")
    far_future = submitted_event(samples[0].listing)
    far_future.submitted_at.seconds = 10 ** 12  # year 31,690
    unstamped = submitted_event(samples[1].listing)
    unstamped.ClearField("submitted_at")
    reader = TopicReader(kafka, kafka.topics.listing_classified)
    producer = KafkaProducer(**kafka.client_options(), acks="all")
    try:
        for event, record_ms in ((far_future, None), (unstamped, 2 ** 62)):  # the record's own time far off too
            producer.send(kafka.topics.listing_submitted, key=event.listing.listing_id.encode(),
                          value=event.SerializeToString(), headers=payload_headers(event), timestamp_ms=record_ms)
        producer.flush(30)
        wanted = {s.listing.listing_id for s in samples}
        found = classified_by_listing(reader.read(AllClassified(wanted), 60))
    finally:
        producer.close()
        reader.close()
    assert set(found) >= wanted
    far, none = (found[s.listing.listing_id][0].classification for s in samples)
    assert valid_timestamp(far.submitted_at) and far.submitted_at.seconds > 0  # the record's time instead
    assert not none.HasField("submitted_at")
    stored = results.GetClassification(results_pb2.GetClassificationRequest(listing_id=far.listing_id), timeout=10)
    assert stored.submitted_at.ToJsonString()


@pytest.mark.parametrize("listing, code", [
    (common_pb2.Listing(marketplace="de-modehaus", image_bytes=b"x"), grpc.StatusCode.INVALID_ARGUMENT),
    (common_pb2.Listing(listing_id="no-image", marketplace="de-modehaus"), grpc.StatusCode.INVALID_ARGUMENT),
    (common_pb2.Listing(listing_id="m", marketplace="nowhere", image_bytes=b"x"), grpc.StatusCode.INVALID_ARGUMENT),
])
def test_invalid_requests_get_invalid_argument_with_a_reason(gateway, listing, code):
    if listing.marketplace == "nowhere":
        listing.image_bytes = sample_listings(1)[0].listing.image_bytes
    with pytest.raises(grpc.RpcError) as raised:
        gateway.ClassifyListing(gateway_pb2.ClassifyListingRequest(listing=listing), timeout=30)
    assert raised.value.code() == code and raised.value.details()


def test_limits_at_the_grpc_boundary(stack, gateway):
    """What a gRPC caller receives past the limits the README names: the per-call listing cap, the image cap, and
    the 32 MB message cap."""
    from services.common.grpc_security import with_api_key

    tiny = sample_listings(1, seed=149, prefix="limits")[0].listing
    many = [common_pb2.Listing(listing_id=f"cap-{i}", marketplace="de-modehaus", image_bytes=tiny.image_bytes)
            for i in range(101)]
    with pytest.raises(grpc.RpcError) as raised:
        gateway.ClassifyListings(gateway_pb2.ClassifyListingsRequest(listings=many), timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 100" in raised.value.details()

    big = common_pb2.Listing(listing_id="cap-big", marketplace="de-modehaus", image_bytes=b"\xff" * (21 * 1024 * 1024))
    with pytest.raises(grpc.RpcError) as raised:
        gateway.ClassifyListing(gateway_pb2.ClassifyListingRequest(listing=big), timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "over the limit" in raised.value.details()

    huge = common_pb2.Listing(listing_id="cap-huge", marketplace="de-modehaus", image_bytes=b"\xff" * (33 * 1024 * 1024))
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    with with_api_key(grpc.insecure_channel(stack.services["gateway"].address, options=options),
                      stack.gateway_api_key) as channel:
        from services.common.contracts.product_classification.v1 import gateway_pb2_grpc

        with pytest.raises(grpc.RpcError) as raised:
            gateway_pb2_grpc.ListingClassifierStub(channel).ClassifyListing(
                gateway_pb2.ClassifyListingRequest(listing=huge), timeout=30)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # the server's 32 MB receive cap
    # and the gateway goes on
    assert gateway.ClassifyListing(gateway_pb2.ClassifyListingRequest(listing=tiny), timeout=60).category.id
