"""An operator's verdict belongs to the photo it judged, on both stores.

Applied again when the listing goes back to that photo (a seller undoing an edit: A, then B, then A again):
published after the classification it judges, once, by one replica; not counted twice in the numbers; not out
before its classification when the broker or a replica fails between them. And never published while the listing
shows another photo (the operator judged A from a queue loaded before B came, or the verdict waited out a broker
outage): stored, answered with what replaced the photo, and applied when the listing goes back to A."""

from __future__ import annotations

import threading
import uuid

import pytest

from services.common.contracts.product_classification.v1 import common_pb2, events_pb2, results_pb2
from services.common.errors import ClassificationError, ErrorKind
from services.results.core import ClassificationRecorder
from services.results.operator_store import OperatorStore
from services.results.review import ReviewDesk
from services.results.store import ClassificationStore
from services.results.taxonomy import Taxonomies
from tests.unit.broker_answer import Sent

LABELS = ["dress", "hat", "longsleeve", "outwear", "pants", "shirt", "shoes", "shorts", "skirt", "t-shirt"]
PHOTO_A, PHOTO_B = "a" * 64, "b" * 64


class Broker:
    """What both topics received, in order; refuses a topic's sends while that topic is in `refusing`."""

    def __init__(self):
        self.events: list = []
        self.refusing: set[str] = set()
        self.lock = threading.Lock()

    def send(self, topic: str, event):
        if topic in self.refusing:
            return Sent(ConnectionError(f"{topic}: broker away"))
        with self.lock:
            self.events.append(event)
        return Sent()

    def corrections(self) -> list[common_pb2.Correction]:
        return [e.correction for e in self.events if isinstance(e, events_pb2.ListingCorrected)]

    def order(self, listing_id: str) -> list[tuple[str, int]]:
        """("classified" | "corrected", classification sequence) for the listing, as published."""
        return [("classified", e.classification.sequence) if isinstance(e, events_pb2.ListingClassified)
                else ("corrected", e.correction.classification_sequence) for e in self.events
                if (e.classification.listing_id if isinstance(e, events_pb2.ListingClassified)
                    else e.correction.listing_id) == listing_id]


@pytest.fixture(scope="module")
def taxonomies():
    return Taxonomies.load(model_labels=LABELS, default_review_threshold=0.6)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path, postgres_url):
    return f"sqlite:///{tmp_path / 'results.sqlite3'}" if request.param == "sqlite" else postgres_url


@pytest.fixture
def store(url):
    store = ClassificationStore(url)
    store.start()
    if url.startswith("postgresql"):  # one database per test session: start each test from empty tables
        with store.transaction() as cursor:
            cursor.execute("TRUNCATE classifications, corrections, thumbnails")
    yield store
    store.stop()


def replica(store, taxonomies, broker: Broker, name: str = "replica-a") -> tuple[ClassificationRecorder, ReviewDesk]:
    desk = ReviewDesk(OperatorStore(store), taxonomies, lambda event: broker.send("corrected", event), name)
    recorder = ClassificationRecorder(store, taxonomies, {"m": 1.0}, lambda event: broker.send("classified", event),
                                      publisher_id=name, thumbnails=OperatorStore(store), verdicts=desk)
    return recorder, desk


def photo(listing_id: str, digest: str, second: int, top: str = "dress") -> events_pb2.PredictionMade:
    event = events_pb2.PredictionMade(
        listing_id=listing_id, marketplace="de-modehaus", locale="de", image_digest=digest,
        predictions=[common_pb2.ModelPrediction(model_name="m", model_version="1", labels=[top, "hat"],
                                                probabilities=[0.55, 0.45])])
    event.submitted_at.FromSeconds(1_800_000_000 + second)
    return event


def judge(desk: ReviewDesk, store, taxonomies, listing_id: str, label: str, operator: str = "ana",
          sequence: int = 0, correction_id: str = ""):
    """The operator's verdict on the listing's classification `sequence` (by default its current one)."""
    sequence = sequence or store.latest_for_listing(listing_id).sequence
    return desk.record_correction(results_pb2.RecordCorrectionRequest(
        correction_id=correction_id or f"c-{uuid.uuid4().hex[:12]}", listing_id=listing_id,
        classification_sequence=sequence,
        category_id=taxonomies.marketplaces["de-modehaus"].labels[label], operator=operator, locale="en"))


def test_a_listing_back_to_a_photo_an_operator_judged_gets_that_verdict_again_after_its_classification(
        store, taxonomies):
    listing, broker = f"undo-{uuid.uuid4().hex[:8]}", Broker()
    recorder, desk = replica(store, taxonomies, broker)
    recorder.record_predictions([photo(listing, PHOTO_A, 1)])
    verdict = judge(desk, store, taxonomies, listing, "shoes")  # the models said dress; the operator: shoes
    recorder.record_predictions([photo(listing, PHOTO_B, 2, top="hat")])
    [back] = recorder.record_predictions([photo(listing, PHOTO_A, 3)])
    assert back.newly_stored
    new = back.classification.sequence
    assert broker.order(listing)[-2:] == [("classified", new), ("corrected", new)]
    carried = broker.corrections()[-1]
    assert carried.carried_from_sequence == verdict.sequence and carried.operator == "ana"
    assert carried.label == "shoes" and carried.category.id == verdict.category.id and not carried.model_was_right
    assert carried.model_answer.sequence == new and carried.correction_id != verdict.correction_id
    assert broker.events[-1].event_id  # a publication id of its own
    operators = OperatorStore(store)
    assert listing not in [c.listing_id for c in operators.review_queue("", "", 100, 0)[0]]
    assert [c.sequence for c in operators.corrections("", listing, 10)] == [carried.sequence, verdict.sequence]
    numbers = desk.statistics(results_pb2.GetStatisticsRequest(window_s=3600))
    assert numbers.checked == 1  # one decision, counted once

    # redelivered (a rebalance, a zombie's late send): nothing more goes out
    published = len(broker.events)
    recorder.record_predictions([photo(listing, PHOTO_A, 3)])
    assert len(broker.events) == published
    # back to B (never judged), then to A a third time: A's verdict again, repeating the operator's own
    recorder.record_predictions([photo(listing, PHOTO_B, 4, top="hat")])
    assert broker.order(listing)[-1][0] == "classified"
    assert listing in [c.listing_id for c in operators.review_queue("", "", 100, 0)[0]]
    [third] = recorder.record_predictions([photo(listing, PHOTO_A, 5)])
    assert broker.order(listing)[-2:] == [("classified", third.classification.sequence),
                                          ("corrected", third.classification.sequence)]
    assert broker.corrections()[-1].carried_from_sequence == verdict.sequence


def test_the_latest_verdict_on_the_photo_is_the_one_carried_and_none_where_nobody_judged_it(store, taxonomies):
    broker = Broker()
    recorder, desk = replica(store, taxonomies, broker)
    judged_twice, unjudged = f"twice-{uuid.uuid4().hex[:8]}", f"unjudged-{uuid.uuid4().hex[:8]}"
    recorder.record_predictions([photo(judged_twice, PHOTO_A, 1), photo(unjudged, PHOTO_A, 1)])
    judge(desk, store, taxonomies, judged_twice, "shoes", "ana")
    second = judge(desk, store, taxonomies, judged_twice, "skirt", "ben")  # ben changed ana's mind
    recorder.record_predictions([photo(judged_twice, PHOTO_B, 2), photo(unjudged, PHOTO_B, 2)])
    judge(desk, store, taxonomies, unjudged, "pants")  # a verdict on B is not one on A
    before = len(broker.corrections())
    recorder.record_predictions([photo(judged_twice, PHOTO_A, 3), photo(unjudged, PHOTO_A, 3)])
    [carried] = broker.corrections()[before:]
    assert carried.listing_id == judged_twice and carried.carried_from_sequence == second.sequence
    assert carried.operator == "ben" and carried.label == "skirt"


def test_a_carried_verdict_never_goes_out_before_its_classification_and_is_not_lost(store, taxonomies):
    """The broker refuses the classification: the carried verdict is stored, the sweep leaves it until the
    classification is out. Then the broker refuses only the verdict: the classification is out, and the sweep
    publishes the verdict after it."""
    listing, broker = f"refused-{uuid.uuid4().hex[:8]}", Broker()
    recorder, desk = replica(store, taxonomies, broker)
    recorder.record_predictions([photo(listing, PHOTO_A, 1)])
    judge(desk, store, taxonomies, listing, "shoes")
    recorder.record_predictions([photo(listing, PHOTO_B, 2)])
    broker.refusing = {"classified"}
    with pytest.raises(ClassificationError) as refused:
        recorder.record_predictions([photo(listing, PHOTO_A, 3)])
    assert refused.value.kind is ErrorKind.UNAVAILABLE
    broker.refusing = set()
    stored = store.latest_for_listing(listing).sequence
    assert desk.publish_pending(older_than_s=0) == 0  # its classification is not out yet
    assert ("classified", stored) not in broker.order(listing) and ("corrected", stored) not in broker.order(listing)
    broker.refusing = {"corrected"}
    [back] = recorder.record_predictions([photo(listing, PHOTO_A, 3)])  # the redelivery
    new = back.classification.sequence
    assert new == stored and broker.order(listing)[-1] == ("classified", new)
    broker.refusing = set()
    assert desk.publish_pending(older_than_s=0) == 1
    assert broker.order(listing)[-2:] == [("classified", new), ("corrected", new)]
    assert desk.publish_pending(older_than_s=0) == 0


@pytest.fixture
def two_replicas(url, taxonomies):
    """Two result replicas on one database, publishing to one broker: (their stores, the broker, the replicas)."""
    stores = [ClassificationStore(url), ClassificationStore(url)]
    for each in stores:
        each.start()
    broker = Broker()
    try:
        yield stores, broker, [replica(each, taxonomies, broker, f"replica-{i}") for i, each in enumerate(stores)]
    finally:
        for each in stores:
            each.stop()


def test_two_replicas_recording_the_same_return_at_once_carry_the_verdict_once(two_replicas, taxonomies):
    """A rebalance hands the event to a second replica while the first still records it: one row, one carried
    verdict, each published once."""
    stores, broker, replicas = two_replicas
    listings = [f"race-{uuid.uuid4().hex[:8]}" for _ in range(8)]
    replicas[0][0].record_predictions([photo(listing, PHOTO_A, 1) for listing in listings])
    for listing in listings:
        judge(replicas[0][1], stores[0], taxonomies, listing, "shoes")
    replicas[0][0].record_predictions([photo(listing, PHOTO_B, 2) for listing in listings])
    start, errors = threading.Barrier(2), []

    def record(which: int) -> None:
        start.wait()
        for _ in range(20):  # the other replica's claim: retried as the Kafka path does
            try:
                replicas[which][0].record_predictions([photo(listing, PHOTO_A, 3) for listing in listings])
                return
            except ClassificationError as error:
                if error.kind is not ErrorKind.UNAVAILABLE:
                    errors.append(error)
                    return
        errors.append("never done")

    threads = [threading.Thread(target=record, args=(which,)) for which in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    for each, (_, desk) in zip(stores, replicas):
        desk.publish_pending(older_than_s=0)  # a verdict whose classification the other replica published
    for listing in listings:
        latest = stores[1].latest_for_listing(listing)
        order = broker.order(listing)
        assert order.count(("classified", latest.sequence)) == 1
        assert order.count(("corrected", latest.sequence)) == 1
        assert order.index(("classified", latest.sequence)) < order.index(("corrected", latest.sequence))


def test_a_verdict_on_a_photo_the_listing_no_longer_shows_is_stored_not_published_and_applied_when_it_is_back(
        store, taxonomies):
    listing, broker = f"replaced-{uuid.uuid4().hex[:8]}", Broker()
    recorder, desk = replica(store, taxonomies, broker)
    [first] = recorder.record_predictions([photo(listing, PHOTO_A, 1)])
    queued = first.classification.sequence  # what the operator's queue showed
    [replaced] = recorder.record_predictions([photo(listing, PHOTO_B, 2, top="hat")])  # the seller's new photo
    published = len(broker.events)
    verdict = judge(desk, store, taxonomies, listing, "shoes", sequence=queued, correction_id="late-click-1")
    assert verdict.photo_replaced_by_sequence == replaced.classification.sequence
    assert verdict.classification_sequence == queued and verdict.label == "shoes"
    assert len(broker.events) == published  # B's listing never gets the category chosen for A
    operators = OperatorStore(store)
    [listed] = operators.corrections("", listing, 10)
    assert listed.sequence == verdict.sequence
    assert listed.photo_replaced_by_sequence == verdict.photo_replaced_by_sequence
    # the click retried, the sweep: still nothing sent, the same answer
    again = judge(desk, store, taxonomies, listing, "shoes", sequence=queued, correction_id="late-click-1")
    assert again == verdict
    assert desk.publish_pending(older_than_s=0) == 0 and len(broker.events) == published
    # B still waits for its own review; the operator's decision on A is counted once
    assert [c.sequence for c in operators.review_queue("", "", 100, 0, listing_id=listing)[0]] == [
        replaced.classification.sequence]
    assert desk.statistics(results_pb2.GetStatisticsRequest(window_s=3600)).checked == 1
    # the seller goes back to A: the verdict given for A is what the listing gets, after A's classification
    [back] = recorder.record_predictions([photo(listing, PHOTO_A, 3)])
    new = back.classification.sequence
    assert broker.order(listing)[-2:] == [("classified", new), ("corrected", new)]
    carried = broker.corrections()[-1]
    assert carried.carried_from_sequence == verdict.sequence and carried.label == "shoes"
    assert not carried.photo_replaced_by_sequence


def test_a_verdict_on_an_earlier_row_of_the_photo_the_listing_shows_is_published(store, taxonomies):
    """A, B, A again: a verdict on A's first row is a verdict on the photo the listing shows."""
    listing, broker = f"same-{uuid.uuid4().hex[:8]}", Broker()
    recorder, desk = replica(store, taxonomies, broker)
    [first] = recorder.record_predictions([photo(listing, PHOTO_A, 1)])
    recorder.record_predictions([photo(listing, PHOTO_B, 2, top="hat")])
    recorder.record_predictions([photo(listing, PHOTO_A, 3)])
    verdict = judge(desk, store, taxonomies, listing, "shoes", sequence=first.classification.sequence)
    assert not verdict.photo_replaced_by_sequence
    assert broker.corrections()[-1].correction_id == verdict.correction_id


def test_a_verdict_held_up_by_the_broker_is_not_published_once_the_photo_was_replaced(store, taxonomies):
    """The broker refuses the verdict; the seller replaces the photo (or the new photo cannot be read and is
    dead-lettered) before the sweep: the sweep settles the verdict without sending it, once."""
    broker = Broker()
    recorder, desk = replica(store, taxonomies, broker)
    replaced, failed, kept = (f"{name}-{uuid.uuid4().hex[:8]}" for name in ("replaced", "failed", "kept"))
    recorder.record_predictions([photo(listing, PHOTO_A, 1) for listing in (replaced, failed, kept)])
    broker.refusing = {"corrected"}
    verdicts = {}
    for listing in (replaced, failed, kept):
        with pytest.raises(ClassificationError) as refused:
            judge(desk, store, taxonomies, listing, "shoes", correction_id=f"held-{listing}")
        assert refused.value.kind is ErrorKind.UNAVAILABLE
        [verdicts[listing]] = OperatorStore(store).corrections("", listing, 10)
    broker.refusing = set()
    [new_photo] = recorder.record_predictions([photo(replaced, PHOTO_B, 2, top="hat")])
    dead = recorder.record_failure(events_pb2.ProcessingFailed(
        listing_id=failed, marketplace="de-modehaus", submission_id="unreadable-photo",
        error_kind=common_pb2.ERROR_KIND_INVALID_IMAGE, reason="the image cannot be decoded"))
    assert desk.publish_pending(older_than_s=0) == 1
    assert [c.listing_id for c in broker.corrections()] == [kept]
    operators = OperatorStore(store)
    [settled_replaced] = operators.corrections("", replaced, 10)
    [settled_failed] = operators.corrections("", failed, 10)
    assert settled_replaced.photo_replaced_by_sequence == new_photo.classification.sequence
    assert settled_failed.photo_replaced_by_sequence == dead.classification.sequence
    assert operators.unpublished_corrections(older_than_s=0) == []
    # the operator retries the click that failed: the answer says why nothing went out
    retried = judge(desk, store, taxonomies, replaced, "shoes", sequence=verdicts[replaced].classification_sequence,
                    correction_id=f"held-{replaced}")
    assert retried.photo_replaced_by_sequence == new_photo.classification.sequence
    assert [c.listing_id for c in broker.corrections()] == [kept]


def test_a_retried_verdict_answered_while_another_replica_holds_it_says_the_photo_was_replaced(store, taxonomies):
    """The click's first try is stored but not sent (the broker away); the seller replaces the photo; the retry
    reaches a replica while another one's sweep holds the verdict's claim. The answer says what replaced the photo,
    as the claim's holder will settle it, and the replica that answered sends nothing."""
    listing, broker = f"held-{uuid.uuid4().hex[:8]}", Broker()
    recorder, desk = replica(store, taxonomies, broker, "replica-a")
    [first] = recorder.record_predictions([photo(listing, PHOTO_A, 1)])
    broker.refusing = {"corrected"}
    with pytest.raises(ClassificationError):
        judge(desk, store, taxonomies, listing, "shoes", correction_id="slow-click-1")
    broker.refusing = set()
    [replaced] = recorder.record_predictions([photo(listing, PHOTO_B, 2, top="hat")])
    operators = OperatorStore(store)
    [stored] = operators.corrections("", listing, 10)
    assert operators.claim_correction(stored.sequence, "replica-b", 60)  # the other replica's sweep, mid-way
    published = len(broker.events)
    answer = judge(desk, store, taxonomies, listing, "shoes", sequence=first.classification.sequence,
                   correction_id="slow-click-1")
    assert answer.photo_replaced_by_sequence == replaced.classification.sequence
    assert answer.sequence == stored.sequence and len(broker.events) == published
    [still] = operators.corrections("", listing, 10)  # the answer changed nothing: the holder settles it
    assert not still.photo_replaced_by_sequence
    # a verdict on the photo the listing shows, held the same way, is answered as it is
    [shown] = recorder.record_predictions([photo(listing, PHOTO_A, 3)])
    broker.refusing = {"corrected"}
    with pytest.raises(ClassificationError):
        judge(desk, store, taxonomies, listing, "hat", correction_id="slow-click-2")
    broker.refusing = set()
    held = next(c for c in operators.corrections("", listing, 10) if c.correction_id == "slow-click-2")
    assert operators.claim_correction(held.sequence, "replica-b", 60)
    assert not judge(desk, store, taxonomies, listing, "hat", sequence=shown.classification.sequence,
                     correction_id="slow-click-2").photo_replaced_by_sequence


def test_two_replicas_sweeping_verdicts_publish_those_on_the_shown_photo_once_and_the_others_never(
        two_replicas, taxonomies):
    stores, broker, replicas = two_replicas
    recorder, desk = replicas[0]
    listings = [f"sweep-{uuid.uuid4().hex[:8]}" for _ in range(16)]
    recorder.record_predictions([photo(listing, PHOTO_A, 1) for listing in listings])
    broker.refusing = {"corrected"}
    for listing in listings:
        with pytest.raises(ClassificationError):
            judge(desk, stores[0], taxonomies, listing, "shoes")
    broker.refusing = set()
    moved = set(listings[::2])
    recorder.record_predictions([photo(listing, PHOTO_B, 2, top="hat") for listing in sorted(moved)])
    start = threading.Barrier(2)

    def sweep(which: int) -> None:
        start.wait()
        for _ in range(3):
            replicas[which][1].publish_pending(older_than_s=0)

    threads = [threading.Thread(target=sweep, args=(which,)) for which in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    sent = [c.listing_id for c in broker.corrections()]
    assert sorted(sent) == sorted(set(listings) - moved)  # each once; none on a replaced photo
    operators = OperatorStore(stores[1])
    for listing in moved:
        [settled] = operators.corrections("", listing, 10)
        assert settled.photo_replaced_by_sequence == stores[1].latest_for_listing(listing).sequence
    assert operators.unpublished_corrections(older_than_s=0) == []
