"""Each classification is published once: two replicas on one PostgreSQL, a failed send, a stable event id."""

from __future__ import annotations

import threading
import uuid

import pytest

from services.common.contracts.product_classification.v1 import common_pb2, events_pb2
from services.common.errors import ClassificationError, ErrorKind
from services.results.core import ClassificationRecorder, event_id
from services.results.store import ClassificationStore, idempotency_key
from services.results.taxonomy import Taxonomies
from tests.unit.broker_answer import Sent

LABELS = ["dress", "hat", "longsleeve", "outwear", "pants", "shirt", "shoes", "shorts", "skirt", "t-shirt"]


@pytest.fixture(scope="module")
def taxonomies():
    return Taxonomies.load(model_labels=LABELS, default_review_threshold=0.5)


def prediction(listing_id: str) -> events_pb2.PredictionMade:
    return events_pb2.PredictionMade(
        listing_id=listing_id, marketplace="de-modehaus", locale="de", image_digest=f"digest-{listing_id}",
        predictions=[common_pb2.ModelPrediction(model_name="m", model_version="1", labels=["dress", "hat"],
                                                probabilities=[0.9, 0.1])])


@pytest.fixture
def store(postgres_url):
    store = ClassificationStore(postgres_url)
    store.start()
    yield store
    store.stop()


def test_two_replicas_racing_over_the_same_predictions_publish_each_once(postgres_url, taxonomies):
    published: list[events_pb2.ListingClassified] = []
    lock = threading.Lock()

    def publish(event):
        with lock:
            published.append(event)
        return Sent()

    stores = [ClassificationStore(postgres_url) for _ in range(2)]
    replicas = []
    for index, store in enumerate(stores):
        store.start()
        replicas.append(ClassificationRecorder(store, taxonomies, {}, publish, publisher_id=f"replica-{index}"))
    batch = [prediction(f"race-{i}") for i in range(40)]
    waited = []

    def deliver(recorder):
        for _ in range(50):  # the Kafka path: retried until every row of the batch is out
            try:
                recorder.record_predictions(batch)
                return
            except ClassificationError as error:
                assert error.kind is ErrorKind.UNAVAILABLE and "another replica" in error.reason
                waited.append(error)

    threads = [threading.Thread(target=deliver, args=(r,)) for r in replicas]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    ids = [e.classification.listing_id for e in published]
    assert sorted(ids) == sorted(p.listing_id for p in batch), "each prediction published exactly once"
    for store in stores:
        store.stop()


def test_a_failed_send_republishes_only_what_was_not_acknowledged(store, taxonomies):
    attempts: list[str] = []

    def publish(event):
        attempts.append(event.classification.listing_id)
        fail = event.classification.listing_id == "send-1" and attempts.count("send-1") == 1
        return Sent(RuntimeError("not acknowledged") if fail else None)

    recorder = ClassificationRecorder(store, taxonomies, {}, publish)
    batch = [prediction(f"send-{i}") for i in range(3)]
    with pytest.raises(ClassificationError) as raised:
        recorder.record_predictions(batch)
    assert raised.value.kind is ErrorKind.UNAVAILABLE and "1 of 3" in raised.value.reason
    recorder.record_predictions(batch)  # the batch is retried
    assert sorted(attempts) == ["send-0", "send-1", "send-1", "send-2"]


def test_an_abandoned_claim_is_taken_over_after_its_lease(store, taxonomies):
    stored = store.record(common_pb2.Classification(listing_id="lease", marketplace="de-modehaus", image_digest="d",
                                                    model_versions="m:1"))
    sequence = stored.classification.sequence
    assert store.claim(sequence, "crashed-replica", lease_s=-1.0)  # claimed, and its lease already ran out
    assert store.claim(sequence, "survivor", lease_s=60.0)
    assert not store.claim(sequence, "crashed-replica", lease_s=60.0)
    store.mark_published([sequence])
    assert not store.claim(sequence, "survivor", lease_s=60.0) and store.is_published(sequence)


def test_every_publication_carries_a_stable_event_id(store, taxonomies):
    sent = []
    recorder = ClassificationRecorder(store, taxonomies, {}, lambda event: sent.append(event) or Sent())
    [outcome] = recorder.record_predictions([prediction("stable-id")])
    assert sent[0].event_id == event_id(idempotency_key(outcome.classification)) and len(sent[0].event_id) == 32


def test_a_late_earlier_submission_is_answered_but_not_published_nor_the_listings_classification(store, taxonomies):
    """The gateway's caller sent photo A; a newer submission (B) of the same listing came through Kafka and was
    recorded first. The caller gets A's classification, marked superseded; nothing is published for it, and the
    listing's classification stays B's."""
    sent = []
    recorder = ClassificationRecorder(store, taxonomies, {}, lambda event: sent.append(event) or Sent())
    listing = f"late-{uuid.uuid4().hex[:8]}"
    newer, older = prediction(listing), prediction(listing)
    newer.image_digest, older.image_digest = "digest-b", "digest-a"
    newer.submitted_at.FromSeconds(1_800_000_002)
    older.submitted_at.FromSeconds(1_800_000_001)
    [first] = recorder.record_predictions([newer])
    [late] = recorder.record_predictions([older], wait_for_other_publishers=False)
    assert late.classification.superseded and late.classification.image_digest == "digest-a"
    assert [e.classification.image_digest for e in sent] == ["digest-b"]
    assert store.latest_for_listing(listing).sequence == first.classification.sequence


def test_a_dead_letter_submitted_before_the_listings_classification_does_not_replace_it(store, taxonomies):
    """Photo A cannot be read and is dead-lettered; photo B, submitted after it, was classified first (another
    path, or another partition). Before, A's FAILED row became the listing's classification whatever its time: the
    listing answered FAILED and left the review queue though B is classified. Now a dead letter carries its
    submission time, and one submitted before the listing's current row is stored superseded."""
    from services.results.core import failed_classification
    from services.results.operator_store import OperatorStore

    recorder = ClassificationRecorder(store, taxonomies, {}, lambda event: Sent())
    listing = f"late-failure-{uuid.uuid4().hex[:8]}"
    newer = prediction(listing)
    newer.submitted_at.FromSeconds(1_800_000_002)
    [current] = recorder.record_predictions([newer])

    def failure(submission: str, second: int) -> events_pb2.ProcessingFailed:
        failed = events_pb2.ProcessingFailed(listing_id=listing, marketplace="de-modehaus", submission_id=submission,
                                             error_kind=common_pb2.ERROR_KIND_INVALID_IMAGE, reason="unreadable")
        if second:
            failed.submitted_at.FromSeconds(1_800_000_000 + second)
        return failed

    late = recorder.record_failure(failure("earlier", 1))
    assert late.classification.superseded and late.classification.status == common_pb2.CLASSIFICATION_STATUS_FAILED
    assert store.latest_for_listing(listing).sequence == current.classification.sequence
    assert OperatorStore(store).review_queue("", "", 10, 0, listing_id=listing)[1] == 1
    # a failure submitted after it, or with no time (arrival order decides), is the listing's answer
    untimed = recorder.record_failure(failure("untimed", 0))
    assert not untimed.classification.superseded
    assert store.latest_for_listing(listing).sequence == untimed.classification.sequence
    newest = recorder.record_failure(failure("newer", 3))
    assert store.latest_for_listing(listing).sequence == newest.classification.sequence
    # a time no date can be made of counts as none
    far = failure("far", 0)
    far.submitted_at.seconds = 10 ** 12
    assert not failed_classification(far).HasField("submitted_at")


def fails_once_with(recorder, batch, store, method: str, replacement) -> None:
    """Records the batch with one of the store's methods replaced (the seam: a store failing at that step); the
    batch must fail, as the consume loop would see it, and the store gets its method back."""
    real = getattr(store, method)
    setattr(store, method, replacement)
    try:
        with pytest.raises(ClassificationError):
            recorder.record_predictions(batch)
    finally:
        setattr(store, method, real)


def test_a_store_failure_between_claiming_and_sending_publishes_each_row_once_on_the_retry(store, taxonomies):
    """The batch is stored in one transaction and claimed in one statement before anything is sent: the connection
    dying after the claim leaves the rows claimed by this replica, and the retry publishes each of them once."""
    sent = []
    recorder = ClassificationRecorder(store, taxonomies, {}, lambda event: sent.append(event.event_id) or Sent())
    real_claim = store.claim_many

    def claim_then_fail(sequences, owner, lease_s):
        real_claim(sequences, owner, lease_s)
        raise ClassificationError(ErrorKind.UNAVAILABLE, "result store: the connection was terminated")

    batch = [prediction(f"mid-{i}") for i in range(3)]
    fails_once_with(recorder, batch, store, "claim_many", claim_then_fail)
    assert sent == []
    recorder.record_predictions(batch)  # the retry
    assert len(sent) == 3 and len(set(sent)) == 3, "each row published once"


def test_a_row_the_store_refuses_fails_alone_and_the_rest_of_its_batch_is_stored(store, taxonomies):
    """The batch's one transaction fails on a row the store refuses (its data): recorded one by one, only that
    event fails (it is dead-lettered by the caller), the others are stored and published."""
    sent = []
    recorder = ClassificationRecorder(store, taxonomies, {}, lambda event: sent.append(event) or Sent())
    real_record, real_many = store.record, store.record_many

    def refusing(classification):
        if classification.listing_id == "refused":
            raise ClassificationError(ErrorKind.INVALID_REQUEST, "the result store refuses the row: value too long")
        return real_record(classification)

    def refusing_many(classifications):
        if any(c.listing_id == "refused" for c in classifications):
            raise ClassificationError(ErrorKind.INVALID_REQUEST, "the result store refuses the row: value too long")
        return real_many(classifications)

    store.record, store.record_many = refusing, refusing_many
    try:
        outcomes = recorder.record_predictions([prediction("kept-1"), prediction("refused"), prediction("kept-2")])
    finally:
        store.record, store.record_many = real_record, real_many
    assert isinstance(outcomes[1], ClassificationError) and outcomes[1].kind is ErrorKind.INVALID_REQUEST
    assert [e.classification.listing_id for e in sent] == ["kept-1", "kept-2"]


def test_rows_acknowledged_while_the_store_cannot_mark_them_are_not_published_again_on_the_retry(store, taxonomies):
    """The broker acknowledged the batch, then the store went away before it could mark the rows published: the
    batch is retried once the store is back, and marks them without sending them a second time."""
    sent = []
    recorder = ClassificationRecorder(store, taxonomies, {}, lambda event: sent.append(event.event_id) or Sent())

    def store_away(sequences):
        raise ClassificationError(ErrorKind.UNAVAILABLE, "result store: the database refuses connections")

    batch = [prediction(f"unmarked-{i}") for i in range(3)]
    fails_once_with(recorder, batch, store, "mark_published", store_away)
    assert len(sent) == 3
    outcomes = recorder.record_predictions(batch)  # the retry, the store back
    assert len(sent) == 3, "published again on the retry"
    assert all(store.is_published(o.classification.sequence) for o in outcomes)
    assert recorder.record_predictions(batch) and len(sent) == 3
