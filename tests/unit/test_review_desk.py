"""The operators' side of the result service on both stores: thumbnails, the review queue, corrections published once
(two replicas racing, a broker that refuses, a retried submission), and the numbers."""

from __future__ import annotations

import io
import threading

import pytest
from PIL import Image

from services.common.contracts.product_classification.v1 import common_pb2, events_pb2, results_pb2
from services.common.errors import ClassificationError, ErrorKind
from services.results.core import ClassificationRecorder
from services.results.operator_store import OperatorStore
from services.results.review import ReviewDesk, usable_thumbnail
from services.results.store import ClassificationStore
from services.results.taxonomy import Taxonomies
from tests.unit.broker_answer import Sent

LABELS = ["dress", "hat", "longsleeve", "outwear", "pants", "shirt", "shoes", "shorts", "skirt", "t-shirt"]


@pytest.fixture(scope="module")
def taxonomies():
    return Taxonomies.load(model_labels=LABELS, default_review_threshold=0.6)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path, postgres_url):
    url = f"sqlite:///{tmp_path / 'results.sqlite3'}" if request.param == "sqlite" else postgres_url
    store = ClassificationStore(url)
    store.start()
    if request.param == "postgresql":  # one database per test session: start each test from empty tables
        with store.transaction() as cursor:
            cursor.execute("TRUNCATE classifications, corrections, thumbnails")
    yield store
    store.stop()


def jpeg(colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def prediction(listing_id: str, top: str, confidence: float, digest: str | None = None,
               thumbnail: bytes = b"") -> events_pb2.PredictionMade:
    other = "hat" if top != "hat" else "dress"
    return events_pb2.PredictionMade(
        listing_id=listing_id, marketplace="de-modehaus", locale="de",
        image_digest=digest or (listing_id.encode().hex() * 64)[:64],
        predictions=[common_pb2.ModelPrediction(model_name="m", model_version="1", labels=[top, other],
                                                probabilities=[confidence, 1 - confidence])],
        thumbnail_jpeg=thumbnail)


def recorder_for(store, taxonomies) -> ClassificationRecorder:
    return ClassificationRecorder(store, taxonomies, {"m": 1.0}, lambda event: Sent(),
                                  thumbnails=OperatorStore(store))


def desk_for(store, taxonomies, published: list, failing: list | None = None, name: str = "replica-a") -> ReviewDesk:
    def publish(event):
        if failing:
            return Sent(failing[0])
        published.append(event)
        return Sent()
    return ReviewDesk(OperatorStore(store), taxonomies, publish, name)


def test_thumbnails_are_kept_once_per_image_and_only_bounded_jpegs(store, taxonomies):
    recorder = recorder_for(store, taxonomies)
    good = jpeg()
    recorder.record_predictions([prediction("l-1", "dress", 0.9, thumbnail=good),
                                 prediction("l-2", "dress", 0.9, digest="f" * 64, thumbnail=b"<svg onload=x>"),
                                 prediction("l-3", "dress", 0.9, digest="e" * 64,
                                            thumbnail=b"\xff\xd8\xff" + b"0" * 70_000)])
    operators = OperatorStore(store)
    assert operators.thumbnail(prediction("l-1", "dress", 0.9).image_digest) == good
    assert operators.thumbnail("f" * 64) is None  # not a JPEG: dropped, the listing still classified
    assert operators.thumbnail("e" * 64) is None  # over the bound
    assert store.latest_for_listing("l-2").status == common_pb2.CLASSIFICATION_STATUS_CLASSIFIED
    assert usable_thumbnail(good) and not usable_thumbnail(b"")


def test_review_queue_puts_needs_review_first_least_confident_first_and_drops_judged(store, taxonomies):
    recorder = recorder_for(store, taxonomies)
    recorder.record_predictions([prediction("sure", "dress", 0.95), prediction("unsure", "hat", 0.55),
                                 prediction("very-unsure", "shoes", 0.52), prediction("fine", "skirt", 0.80)])
    operators = OperatorStore(store)
    queue, total = operators.review_queue("", "", 10, 0)
    assert [c.listing_id for c in queue] == ["very-unsure", "unsure", "fine", "sure"] and total == 4
    assert [c.status for c in queue[:2]] == [common_pb2.CLASSIFICATION_STATUS_NEEDS_REVIEW] * 2
    hats, hat_total = operators.review_queue("de-modehaus", queue[1].category.id.rsplit("/", 1)[-1], 10, 0)
    assert [c.listing_id for c in hats] == ["unsure"] and hat_total == 1
    assert operators.review_queue("fr-boutique", "", 10, 0) == ([], 0)

    desk = desk_for(store, taxonomies, [])
    desk.record_correction(results_pb2.RecordCorrectionRequest(
        correction_id="c" * 16, listing_id="unsure", classification_sequence=queue[1].sequence,
        category_id=queue[1].category.id, operator="ana", locale="en"))
    remaining, total = operators.review_queue("", "", 10, 0)
    assert "unsure" not in [c.listing_id for c in remaining] and total == 3
    # A newer classification of a judged listing (a new photo) is judged afresh.
    recorder.record_predictions([prediction("unsure", "pants", 0.51, digest="a" * 64)])
    assert operators.review_queue("", "", 1, 0)[0][0].listing_id == "unsure"


def test_a_correction_is_stored_with_the_model_answer_published_once_and_named_in_the_operators_language(
        store, taxonomies):
    recorder_for(store, taxonomies).record_predictions([prediction("l-7", "dress", 0.55)])
    judged = store.latest_for_listing("l-7")
    published: list = []
    desk = desk_for(store, taxonomies, published)
    shoes = taxonomies.marketplaces["de-modehaus"].labels["shoes"]
    request = results_pb2.RecordCorrectionRequest(correction_id="retry-me-1", listing_id="l-7",
                                                  classification_sequence=judged.sequence, category_id=shoes,
                                                  operator="ana", locale="ja")
    correction = desk.record_correction(request)
    again = desk.record_correction(request)  # the browser retried: stored and published once
    assert again.sequence == correction.sequence and len(published) == 1
    event = published[0]
    assert event.correction.label == "shoes" and not event.correction.model_was_right
    assert event.correction.model_answer.label == "dress" and event.correction.operator == "ana"
    assert event.correction.category.locale == "ja" and event.correction.category.name != "Shoes"
    assert event.event_id and event.correction.corrected_at.seconds > 0
    [listed] = desk.operators.corrections("", "l-7", 10)
    assert listed.correction_id == "retry-me-1"
    other = results_pb2.RecordCorrectionRequest()
    other.CopyFrom(request)
    other.category_id = judged.category.id  # the same id for another decision: refused, not answered with the first
    with pytest.raises(ClassificationError) as reused:
        desk.record_correction(other)
    assert reused.value.kind is ErrorKind.INVALID_REQUEST and "already used" in reused.value.reason


@pytest.mark.parametrize("change, reason", [
    ({"correction_id": "short"}, "correction_id"),
    ({"correction_id": "<script>alert(1)</script>"}, "correction_id"),
    ({"listing_id": "someone-else"}, "is not one of listing"),
    ({"category_id": "gid://shopify/TaxonomyCategory/zz-99"}, "is not a category"),
    ({"operator": ""}, "operator is required"),
])
def test_corrections_that_cannot_be_right_are_refused_with_the_reason(store, taxonomies, change, reason):
    recorder_for(store, taxonomies).record_predictions([prediction("l-8", "dress", 0.55)])
    judged = store.latest_for_listing("l-8")
    fields = {"correction_id": "a-good-id-1", "listing_id": "l-8", "classification_sequence": judged.sequence,
              "category_id": judged.category.id, "operator": "ana", **change}
    with pytest.raises(ClassificationError) as refused:
        desk_for(store, taxonomies, []).record_correction(results_pb2.RecordCorrectionRequest(**fields))
    assert refused.value.kind is ErrorKind.INVALID_REQUEST and reason in refused.value.reason


def test_a_correction_the_broker_refused_is_kept_and_published_by_the_sweep(store, taxonomies):
    recorder_for(store, taxonomies).record_predictions([prediction("l-9", "dress", 0.55)])
    judged = store.latest_for_listing("l-9")
    published: list = []
    failing = [ConnectionError("broker away")]
    desk = desk_for(store, taxonomies, published, failing)
    with pytest.raises(ClassificationError) as refused:
        desk.record_correction(results_pb2.RecordCorrectionRequest(
            correction_id="broker-away-1", listing_id="l-9", classification_sequence=judged.sequence,
            category_id=judged.category.id, operator="ana"))
    assert refused.value.kind is ErrorKind.UNAVAILABLE and "stored" in refused.value.reason
    failing.clear()
    # The failed publication released its claim: the next sweep (of any replica) publishes it.
    assert desk.publish_pending(older_than_s=0) == 1
    assert desk.publish_pending(older_than_s=0) == 0
    assert [e.correction.correction_id for e in published] == ["broker-away-1"]
    assert published[0].correction.model_was_right


def test_two_replicas_sweeping_the_same_backlog_publish_each_correction_once(postgres_url, taxonomies):
    stores = [ClassificationStore(postgres_url) for _ in range(2)]
    for store in stores:
        store.start()
    try:
        with stores[0].transaction() as cursor:
            cursor.execute("TRUNCATE classifications, corrections, thumbnails")
        recorder_for(stores[0], taxonomies).record_predictions(
            [prediction(f"race-{i}", "dress", 0.55) for i in range(20)])
        failing = [ConnectionError("broker away")]
        writer = desk_for(stores[0], taxonomies, [], failing, "writer")
        for i in range(20):
            judged = stores[0].latest_for_listing(f"race-{i}")
            with pytest.raises(ClassificationError):
                writer.record_correction(results_pb2.RecordCorrectionRequest(
                    correction_id=f"race-correction-{i}", listing_id=f"race-{i}",
                    classification_sequence=judged.sequence, category_id=judged.category.id, operator="ana"))
        with stores[0].transaction() as cursor:  # the writer died: its claims have run out
            cursor.execute("UPDATE corrections SET claimed_until = 0")
        published: list = []
        lock = threading.Lock()

        def sweeper(store, name):
            def publish(event):
                with lock:
                    published.append(event.correction.correction_id)
                return Sent()
            ReviewDesk(OperatorStore(store), taxonomies, publish, name).publish_pending(older_than_s=0)

        threads = [threading.Thread(target=sweeper, args=(store, f"sweeper-{i}")) for i, store in enumerate(stores)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(published) == sorted(f"race-correction-{i}" for i in range(20))
    finally:
        for store in stores:
            store.stop()


def test_the_numbers_count_by_status_minute_and_label_and_the_accuracy_of_what_operators_checked(store, taxonomies):
    recorder_for(store, taxonomies).record_predictions(
        [prediction("n-1", "dress", 0.9), prediction("n-2", "dress", 0.55), prediction("n-3", "hat", 0.95)])
    desk = desk_for(store, taxonomies, [])
    for listing, category in (("n-1", None), ("n-2", "shoes")):
        judged = store.latest_for_listing(listing)
        chosen = judged.category.id if category is None else taxonomies.marketplaces["de-modehaus"].labels[category]
        desk.record_correction(results_pb2.RecordCorrectionRequest(
            correction_id=f"numbers-{listing}", listing_id=listing, classification_sequence=judged.sequence,
            category_id=chosen, operator="ana", locale="de"))
    numbers = desk.statistics(results_pb2.GetStatisticsRequest(window_s=3600, locale="de"))
    assert (numbers.classified, numbers.needs_review, numbers.failed) == (2, 1, 0)
    assert (numbers.checked, numbers.checked_correct) == (2, 1)
    assert sum(b.classifications for b in numbers.per_minute) == 3
    dress = next(c for c in numbers.per_category if c.label == "dress")
    assert (dress.classified, dress.needs_review, dress.checked, dress.checked_correct) == (1, 1, 2, 1)
    assert dress.category.locale == "de" and dress.category.name == "Kleider"
    other = desk.statistics(results_pb2.GetStatisticsRequest(marketplace="fr-boutique"))
    assert other.classified == 0 and other.checked == 0


def test_the_numbers_say_why_listings_failed_also_for_rows_stored_before_the_kind_had_a_column(store, taxonomies):
    recorder = recorder_for(store, taxonomies)
    recorder.record_predictions([prediction("k-ok", "dress", 0.9)])
    kinds = [ErrorKind.INVALID_IMAGE] * 3 + [ErrorKind.SOURCE_UNREACHABLE] * 2 + [ErrorKind.OVERLOADED]
    for index, kind in enumerate(kinds):
        recorder.record_failure(events_pb2.ProcessingFailed(
            listing_id=f"k-{index}", submission_id=f"s-{index}", marketplace="de-modehaus", error_kind=kind.proto,
            reason="why", stage="preprocessing"))
    with store.transaction() as cursor:  # what a release before the column left: the kind only in the payload
        cursor.execute(store.sql("UPDATE classifications SET error_kind = NULL WHERE listing_id IN (?, ?)"),
                       ("k-0", "k-3"))
    numbers = ReviewDesk(OperatorStore(store), taxonomies, lambda event: Sent(), "x").statistics(
        results_pb2.GetStatisticsRequest(window_s=3600))
    assert (numbers.classified + numbers.needs_review, numbers.failed) == (1, 6)
    assert [(f.error_kind, f.count) for f in numbers.failed_by_kind] == [
        (ErrorKind.INVALID_IMAGE.proto, 3), (ErrorKind.SOURCE_UNREACHABLE.proto, 2), (ErrorKind.OVERLOADED.proto, 1)]
    elsewhere = ReviewDesk(OperatorStore(store), taxonomies, lambda event: Sent(), "x").statistics(
        results_pb2.GetStatisticsRequest(window_s=3600, marketplace="fr-boutique"))
    assert elsewhere.failed == 0 and not elsewhere.failed_by_kind
    # the latest failures, of any kind or of one, newest first and page by page (the console's list under a kind)
    assert [c.listing_id for c in store.recent("", 10, failed_only=True)] == [f"k-{i}" for i in range(5, -1, -1)]
    unreadable = store.recent("de-modehaus", 10, error_kind=ErrorKind.INVALID_IMAGE.proto)
    assert [c.listing_id for c in unreadable] == ["k-2", "k-1"]  # k-0's kind is only in its payload
    assert all(c.error_reason == "why" for c in unreadable)
    assert [c.listing_id for c in store.recent("", 1, unreadable[0].sequence, error_kind=unreadable[0].error_kind)] \
        == ["k-1"]
    assert store.recent("fr-boutique", 10, failed_only=True) == []


def test_search_names_categories_in_any_taxonomy_locale_and_by_id(taxonomies):
    desk = ReviewDesk(None, taxonomies, lambda event: Sent(), "x")
    found = desk.search_categories(results_pb2.SearchCategoriesRequest(marketplace="de-modehaus", locale="ja",
                                                                       query="ドレス"))
    assert found and all(c.locale == "ja" for c in found)
    dress = taxonomies.marketplaces["de-modehaus"].labels["dress"]
    [by_id] = desk.search_categories(results_pb2.SearchCategoriesRequest(
        marketplace="de-modehaus", locale="pt-BR", category_ids=[f"gid://shopify/TaxonomyCategory/{dress}"]))
    assert by_id.locale == "pt-BR" and by_id.customs_codes
    starts = desk.search_categories(results_pb2.SearchCategoriesRequest(marketplace="de-modehaus", locale="en",
                                                                        query="sho"))
    assert starts[0].name.casefold().startswith("sho")
