"""A photo listed again (an edited listing, one product on several marketplaces) is answered from the preprocessing
worker's memory: not decoded, not sent to Triton, and classified as it was the first time, through Kafka and gRPC."""

from __future__ import annotations

import time
import uuid

from google.protobuf.message import DecodeError

from services.common.contracts.product_classification.v1 import (common_pb2, events_pb2, gateway_pb2, results_pb2,
                                                                  results_pb2_grpc)
from services.common.decode_path import PIXELS_ENSEMBLE
from services.common.kafka import payload_headers
from services.drivers.metrics_reader import scrape, total
from services.drivers.traffic import (TopicReader, jpeg_with_comment, labelled_photos, produce_raw,
                                      submit_and_collect, submit_listings)

LOOKUPS = "product_classification_prediction_cache_lookups_total"
TRITON_BATCHES = "product_classification_triton_batch_images_count"


def readable(records, message_type):
    """The records' messages of message_type; other tests put records none can be read from on every topic."""
    for record in records:
        try:
            yield message_type.FromString(record.value or b"")
        except DecodeError:
            continue


def photo_no_test_sent_before() -> bytes:
    """A real photo with a comment of its own: the same pixels, bytes (so a digest) no other test sent."""
    path, _ = labelled_photos()[7]
    return jpeg_with_comment(path.read_bytes(), uuid.uuid4().hex)


def test_a_photo_listed_again_is_answered_from_memory_and_classified_as_before(stack, kafka, gateway):
    metrics = stack.services["preprocessing"].metrics_url
    photo = photo_no_test_sent_before()
    run = uuid.uuid4().hex[:6]

    def listing(name: str, marketplace: str, locale: str) -> common_pb2.Listing:
        return common_pb2.Listing(listing_id=f"seen-{run}-{name}", marketplace=marketplace, locale=locale,
                                  image_bytes=photo)

    first, on_another_marketplace, edited = (listing("first", "de-modehaus", "de-DE"),
                                             listing("again", "fr-boutique", "fr-FR"),
                                             listing("first", "de-modehaus", "de-DE"))
    edited.title = "the same listing, its title edited"
    before = scrape(metrics)
    one = submit_and_collect(kafka, [first], 60)[first.listing_id][0].classification
    after_first = scrape(metrics)
    two = submit_and_collect(kafka, [on_another_marketplace], 60)[on_another_marketplace.listing_id][0].classification
    three = gateway.ClassifyListing(gateway_pb2.ClassifyListingRequest(listing=edited), timeout=60)
    after = scrape(metrics)

    def grew(since, until, name: str, *labels: str) -> float:
        return total(until, name, *labels) - total(since, name, *labels)

    assert grew(before, after_first, LOOKUPS, "outcome=miss") == 1
    assert grew(before, after_first, LOOKUPS, "outcome=hit") == 0
    assert grew(before, after_first, TRITON_BATCHES, f"model={PIXELS_ENSEMBLE}") == 1
    assert grew(after_first, after, LOOKUPS, "outcome=hit") == 2  # through Kafka and through the gateway
    assert grew(after_first, after, LOOKUPS, "outcome=miss") == 0
    assert grew(after_first, after, TRITON_BATCHES, f"model={PIXELS_ENSEMBLE}") == 0
    assert total(after, "product_classification_prediction_cache_photos") >= 1
    assert total(after, "product_classification_prediction_cache_bytes") > len(one.image_digest)
    for again in (two, three):
        assert again.image_digest == one.image_digest and again.model_versions == one.model_versions
        assert again.label == one.label and again.confidence == one.confidence
        assert [(c.label, c.confidence) for c in again.candidates] == [(c.label, c.confidence) for c in one.candidates]
    assert two.marketplace == "fr-boutique" and two.listing_id != one.listing_id  # mapped for its own marketplace
    # the edited listing: the same listing, photo and models, so the same classification, stored and published once
    assert three.listing_id == one.listing_id and three.sequence == one.sequence


def test_a_listing_back_to_a_photo_it_had_is_classified_and_published_for_that_photo_again(stack, kafka, results):
    """A seller undoes an edit: photo A, then B, then A again. Before, the third event found A's first row: nothing
    was published and the listing's classification stayed B's, for a photo it no longer shows. An operator's
    verdict on A given while the listing shows B is kept for A, not published for B."""
    run = uuid.uuid4().hex[:6]
    photos = labelled_photos()
    a_path, a_label = photos[7]
    b_path, _ = next((path, label) for path, label in photos if label != a_label)
    a, b = jpeg_with_comment(a_path.read_bytes(), run), jpeg_with_comment(b_path.read_bytes(), run)
    listing_id = f"back-{run}"

    def mine(records) -> list[events_pb2.ListingClassified]:
        return [e for e in readable(records, events_pb2.ListingClassified) if e.classification.listing_id == listing_id]

    def verdicts(records) -> list[common_pb2.Correction]:
        return [e.correction for e in readable(records, events_pb2.ListingCorrected)
                if e.correction.listing_id == listing_id]

    reader = TopicReader(kafka, kafka.topics.listing_classified)
    corrected = TopicReader(kafka, kafka.topics.listing_corrected)
    events: list[events_pb2.ListingClassified] = []
    try:
        for count, photo in enumerate((a, b, a), start=1):
            submit_listings(kafka, [common_pb2.Listing(listing_id=listing_id, marketplace="de-modehaus",
                                                       locale="de-DE", image_bytes=photo)])
            events += mine(reader.read(lambda records: len(events) + len(mine(records)) >= count, 60))
            if count == 1:  # an operator overrules the models on A (the console's call)
                first = events[0].classification
                chosen = next(c.category.id for c in first.candidates[1:] if c.category.id != first.category.id)
                with stack.internal_channel("results", "console") as channel:
                    verdict = results_pb2_grpc.ClassificationResultsStub(channel).RecordCorrection(
                        results_pb2.RecordCorrectionRequest(
                            correction_id=f"undo-{run}", listing_id=listing_id, category_id=chosen,
                            classification_sequence=first.sequence, operator="ana"), timeout=10)
            if count == 2:  # another operator, from a queue loaded before B came, keeps the models' answer for A
                with stack.internal_channel("results", "console") as channel:
                    late = results_pb2_grpc.ClassificationResultsStub(channel).RecordCorrection(
                        results_pb2.RecordCorrectionRequest(
                            correction_id=f"late-{run}", listing_id=listing_id, category_id=first.category.id,
                            classification_sequence=first.sequence, operator="ben"), timeout=10)
        carried = verdicts(corrected.read(lambda records: len(verdicts(records)) >= 2, 60))
    finally:
        reader.close()
        corrected.close()
    digests = [event.classification.image_digest for event in events]
    assert digests[0] == digests[2] != digests[1] and len(events) == 3, digests
    assert len({event.event_id for event in events}) == 3  # a consumer that drops ids it has seen keeps all three
    assert events[2].classification.label == events[0].classification.label
    assert events[2].classification.sequence > events[1].classification.sequence
    current = results.GetClassification(results_pb2.GetClassificationRequest(listing_id=listing_id), timeout=10)
    assert current.image_digest == digests[0] and current.sequence == events[2].classification.sequence
    # the late verdict on A, given while the listing showed B, is stored but not published (B would get it)
    assert late.photo_replaced_by_sequence == events[1].classification.sequence
    # the latest verdict on A (the late one) follows the listing back to A, after the models' answer for it
    assert [c.classification_sequence for c in carried] == [events[0].classification.sequence, current.sequence]
    assert carried[0].correction_id == verdict.correction_id
    assert carried[1].carried_from_sequence == late.sequence and carried[1].category.id == late.category.id
    assert carried[1].operator == "ben" and carried[1].model_was_right and not carried[1].photo_replaced_by_sequence
    queue = results.ListReviewQueue(results_pb2.ListReviewQueueRequest(listing_id=listing_id, page_size=10), timeout=10)
    assert not queue.classifications  # judged: not put before an operator again


def test_an_earlier_submission_arriving_after_a_newer_one_is_stored_superseded_and_not_published(
        stack, kafka, results, store):
    """Photo A was submitted before photo B, but B's event is recorded first (A came from another producer, or
    through the gateway). A is stored, marked superseded, not published, and the listing's classification stays
    B's; so does an earlier photo that cannot be read (dead-lettered, stored FAILED and superseded)."""
    run = uuid.uuid4().hex[:6]
    photos = labelled_photos()
    a = jpeg_with_comment(photos[3][0].read_bytes(), run)
    b = jpeg_with_comment(photos[8][0].read_bytes(), run)
    listing_id = f"late-{run}"

    def mine(records) -> list[events_pb2.ListingClassified]:
        return [e for e in readable(records, events_pb2.ListingClassified) if e.classification.listing_id == listing_id]

    reader = TopicReader(kafka, kafka.topics.listing_classified)
    try:
        submit_listings(kafka, [common_pb2.Listing(listing_id=listing_id, marketplace="de-modehaus", locale="de-DE",
                                                   image_bytes=b)])
        [newer] = mine(reader.read(lambda records: len(mine(records)) >= 1, 60))
        for photo in (a, b"not a photo: dead-lettered"):  # photo A, and one that cannot be read
            earlier = events_pb2.ListingSubmitted(submission_id=str(uuid.uuid4()), listing=common_pb2.Listing(
                listing_id=listing_id, marketplace="de-modehaus", locale="de-DE", image_bytes=photo))
            earlier.submitted_at.FromMicroseconds(newer.classification.submitted_at.ToMicroseconds() - 60_000_000)
            produce_raw(kafka, kafka.topics.listing_submitted, listing_id.encode(), earlier.SerializeToString(),
                        payload_headers(earlier))
        deadline = time.monotonic() + 60
        while store.count_for_listing(listing_id) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)  # what a wrong publication would have sent by now
        later = mine(reader.read(lambda records: False, 2))
    finally:
        reader.close()
    assert store.count_for_listing(listing_id) == 3
    assert later == []  # nothing published for the earlier photo
    current = results.GetClassification(results_pb2.GetClassificationRequest(listing_id=listing_id), timeout=10)
    assert current.sequence == newer.classification.sequence and not current.superseded
    listed = results.ListClassifications(results_pb2.ListClassificationsRequest(marketplace="de-modehaus",
                                                                               page_size=200), timeout=10)
    others = [c for c in listed.classifications if c.listing_id == listing_id and c.sequence != current.sequence]
    [late] = [c for c in others if c.status != common_pb2.CLASSIFICATION_STATUS_FAILED]
    [failed] = [c for c in others if c.status == common_pb2.CLASSIFICATION_STATUS_FAILED]
    assert failed.superseded and failed.error_kind == common_pb2.ERROR_KIND_INVALID_IMAGE  # not the listing's answer
    assert late.superseded and late.image_digest != current.image_digest
    assert late.submitted_at.ToMicroseconds() < current.submitted_at.ToMicroseconds()
