"""The result service's core: prediction -> fused, mapped classification -> stored once -> published once."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Protocol

from services.common.contracts.product_classification.v1 import common_pb2, events_pb2
from services.common.errors import ClassificationError, ErrorKind
from services.common.validation import MAX_ID_LENGTH, check_identifiers, check_text, valid_timestamp
from services.common.metrics import CLASSIFICATIONS, END_TO_END_SECONDS
from services.results.fusion import fuse
from services.results.operator_store import OperatorStore
from services.results.review import IMAGE_DIGEST, usable_thumbnail
from services.results.store import ClassificationStore, StoredClassification, idempotency_key
from services.results.taxonomy import Taxonomies

log = logging.getLogger(__name__)


def model_versions(prediction: events_pb2.PredictionMade) -> str:
    return ",".join(f"{p.model_name}:{p.model_version}" for p in sorted(prediction.predictions,
                                                                        key=lambda p: p.model_name))


def classify(prediction: events_pb2.PredictionMade, taxonomies: Taxonomies, weights: Mapping[str, float],
             candidate_count: int = 3) -> common_pb2.Classification:
    """Pure: fuses the models, picks the most probable label the marketplace maps, and maps it to its category.

    Below the marketplace's review threshold the answer is stored and published as NEEDS_REVIEW, not CLASSIFIED.
    """
    check_identifiers(prediction.listing_id, prediction.marketplace, prediction.locale, prediction.submission_id)
    marketplace = taxonomies.for_marketplace(prediction.marketplace)
    requested_locale = prediction.locale or marketplace.default_locale
    fused = fuse(prediction.predictions, weights)
    ranked = sorted(((p, label) for label, p in fused.items() if label in marketplace.labels), reverse=True)
    if not ranked:
        raise ClassificationError(ErrorKind.INVALID_REQUEST, f"no model label maps to a category of "
                                  f"{prediction.marketplace!r}")
    threshold = taxonomies.review_threshold(marketplace)
    classification = common_pb2.Classification(
        listing_id=prediction.listing_id, submission_id=prediction.submission_id, marketplace=prediction.marketplace,
        image_digest=prediction.image_digest, model_versions=model_versions(prediction), review_threshold=threshold)
    # Each category (about 5 KB with its customs codes) is copied once, straight into the message that carries it.
    for probability, label in ranked[:candidate_count]:
        candidate = classification.candidates.add(label=label, confidence=probability)
        taxonomies.copy_category_into(candidate.category, marketplace, label, requested_locale)
    best = classification.candidates[0]
    classification.category.CopyFrom(best.category)
    classification.label, classification.confidence, classification.locale = \
        best.label, best.confidence, best.category.locale
    classification.status = (common_pb2.CLASSIFICATION_STATUS_CLASSIFIED if best.confidence >= threshold
                              else common_pb2.CLASSIFICATION_STATUS_NEEDS_REVIEW)
    classification.classified_at.GetCurrentTime()
    if prediction.HasField("submitted_at") and valid_timestamp(prediction.submitted_at):
        classification.submitted_at.CopyFrom(prediction.submitted_at)  # (one out of range is not carried on)
    return classification


def failed_classification(failure: events_pb2.ProcessingFailed) -> common_pb2.Classification:
    """What the store keeps of a dead-lettered listing, so a caller asking for it learns why it has no category. Its
    submission time (where the dead letter has one a date can be made of) orders it among the listing's other
    events: one submitted before the listing's current classification is stored superseded."""
    classification = common_pb2.Classification(
        listing_id=failure.listing_id, submission_id=failure.submission_id, marketplace=failure.marketplace,
        status=common_pb2.CLASSIFICATION_STATUS_FAILED, error_kind=failure.error_kind, error_reason=failure.reason)
    classification.classified_at.CopyFrom(failure.failed_at)
    if failure.HasField("submitted_at") and valid_timestamp(failure.submitted_at):
        classification.submitted_at.CopyFrom(failure.submitted_at)
    return classification


def event_id(idempotency_key_: str) -> str:
    """The stable id of a publication: the same classification always gets the same one."""
    return hashlib.sha256(idempotency_key_.encode()).hexdigest()[:32]


# Sends a ListingClassified event; returns a future whose .get(timeout) raises unless the broker acknowledged it.
Publish = Callable[[events_pb2.ListingClassified], object]


class Verdicts(Protocol):
    """Operators' verdicts applied again where a listing went back to a photo they judged (the ReviewDesk)."""

    def carry_verdicts(self, stored: list[StoredClassification]) -> list[common_pb2.Correction]: ...

    def publish_carried(self, corrections: list[common_pb2.Correction]) -> None: ...


def default_publisher_id() -> str:
    """A name for this replica's publication claims, unique to the process."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class ClassificationRecorder:
    """Classifies, stores idempotently and publishes; the Kafka and gRPC edges both go through record_predictions."""

    def __init__(self, store: ClassificationStore, taxonomies: Taxonomies, weights: Mapping[str, float],
                 publish: Publish, candidate_count: int = 3, send_timeout_s: float = 30.0,
                 publisher_id: str | None = None, claim_lease_s: float = 60.0,
                 thumbnails: OperatorStore | None = None, verdicts: Verdicts | None = None):
        self.store = store
        self.thumbnails = thumbnails
        self.taxonomies = taxonomies
        self.weights = weights
        self.publish = publish
        self.candidate_count = candidate_count
        self.send_timeout_s = send_timeout_s
        self.stored = threading.Condition()  # notified after every write
        self.on_stored: list[Callable[[], None]] = []  # called after every write (the watch hub's wake-up)
        self.verdicts = verdicts
        self.publisher_id = publisher_id or default_publisher_id()
        # Longer than a publication takes (send + acknowledgement): a claim older than this was abandoned.
        self.claim_lease_s = max(claim_lease_s, 2 * send_timeout_s)
        # Rows the broker acknowledged whose published mark the store could not take (it was away): the retry marks
        # them without sending them again. Held while this replica's claim on them holds; lost only if it dies.
        self._acknowledged_unmarked: set[int] = set()
        self._unmarked_lock = threading.Lock()

    def record_predictions(self, predictions: list[events_pb2.PredictionMade],
                           span_for: Callable[[int], contextlib.AbstractContextManager] | None = None,
                           wait_for_other_publishers: bool = True
                           ) -> list[StoredClassification | ClassificationError]:
        """Stores each prediction's classification and publishes those not yet published, waiting for the acks.

        Exactly one publisher per row: a row is published only by the replica that claimed it in the store
        (atomically). A row another replica claimed and has not published yet makes the batch retry later when
        wait_for_other_publishers (the Kafka path, so its offset is not committed before the row is out); the gRPC
        path returns the stored answer. Each row is marked published as its own acknowledgement arrives, so a retry
        after one failed send republishes only what was not acknowledged.
        Bad predictions come back as ClassificationError (not retryable); store or broker outages raise.
        """
        outcomes: list = [None] * len(predictions)
        classified: list[tuple[int, common_pb2.Classification]] = []
        for index, prediction in enumerate(predictions):
            try:
                classified.append((index, classify(prediction, self.taxonomies, self.weights, self.candidate_count)))
            except ClassificationError as error:
                if error.kind is ErrorKind.UNAVAILABLE:
                    raise
                outcomes[index] = error  # this event's own fault: dead-lettered, the others go on
        self._keep_thumbnails([predictions[index] for index, _ in classified])
        for (index, _), stored in zip(classified, self._store_batch([c for _, c in classified])):
            outcomes[index] = stored
        # Stored before the classification goes out, published after it (a crash in between: the sweep does it).
        carried = self.verdicts.carry_verdicts(
            [o for o in outcomes if isinstance(o, StoredClassification)]) if self.verdicts else []
        pending, elsewhere, already_out = [], [], []
        interrupted: ClassificationError | None = None
        try:
            candidates, seen = [], set()
            for index, outcome in enumerate(outcomes):
                if isinstance(outcome, StoredClassification) and not outcome.published and \
                        outcome.classification.sequence not in seen:  # the same event twice: published once
                    seen.add(outcome.classification.sequence)
                    candidates.append((index, outcome))
            sequences = [outcome.classification.sequence for _, outcome in candidates]
            claimed = self.store.claim_many(sequences, self.publisher_id, self.claim_lease_s)
            unclaimed = [sequence for sequence in sequences if sequence not in claimed]
            published = self.store.published_among(unclaimed)
            elsewhere = [sequence for sequence in unclaimed if sequence not in published]  # another replica's now
            with self._unmarked_lock:
                sent_before = claimed & self._acknowledged_unmarked  # the broker has them: mark, do not resend
            already_out = [outcome for _, outcome in candidates if outcome.classification.sequence in sent_before]
            for index, outcome in candidates:
                if outcome.classification.sequence not in claimed or outcome.classification.sequence in sent_before:
                    continue
                with span_for(index) if span_for else contextlib.nullcontext():
                    key = outcome.key or idempotency_key(outcome.classification)
                    event = events_pb2.ListingClassified(classification=outcome.classification,
                                                         event_id=event_id(key))
                    pending.append((outcome, self.publish(event)))
        except ClassificationError as error:
            # The store went away mid-batch: what was already sent is still awaited and marked below, so the
            # retry does not publish it again.
            interrupted = error
        acknowledged, failures = [], []
        for outcome, future in pending:
            try:
                future.get(timeout=self.send_timeout_s)
                acknowledged.append(outcome)
            except Exception as error:  # noqa: BLE001
                failures.append(repr(error))
        self._mark_published([o.classification.sequence for o in already_out + acknowledged])
        out = {o.classification.sequence for o in already_out + acknowledged}
        if carried:
            self.verdicts.publish_carried([c for c in carried if c.classification_sequence in out])
        now = time.time()
        for stored in acknowledged:
            outcome = ("needs_review" if stored.classification.status == common_pb2.CLASSIFICATION_STATUS_NEEDS_REVIEW
                       else "classified")
            CLASSIFICATIONS.labels(stored.classification.marketplace, outcome).inc()
            if stored.classification.HasField("submitted_at"):
                END_TO_END_SECONDS.observe(max(0.0, now - stored.classification.submitted_at.ToMicroseconds() / 1e6))
        self._notify_watchers()
        if interrupted is not None:
            raise interrupted
        if failures:
            raise ClassificationError(ErrorKind.UNAVAILABLE, f"publishing failed for {len(failures)} of "
                                      f"{len(pending)} events: {failures[0]}")
        if elsewhere and wait_for_other_publishers:
            raise ClassificationError(ErrorKind.UNAVAILABLE, f"{len(elsewhere)} rows are being published by another "
                                      "replica; waiting until they are out (or its claim runs out)")
        return outcomes

    def _store_batch(self, classifications: list[common_pb2.Classification]) -> list:
        """Stores the batch in one transaction; if the store refuses a row (its data), one by one, so only that
        event fails (its ClassificationError takes its place)."""
        try:
            return self.store.record_many(classifications)
        except ClassificationError as error:
            if error.kind is ErrorKind.UNAVAILABLE:
                raise
        outcomes: list = []
        for classification in classifications:
            try:
                outcomes.append(self.store.record(classification))
            except ClassificationError as error:
                if error.kind is ErrorKind.UNAVAILABLE:
                    raise
                outcomes.append(error)
        return outcomes

    def _keep_thumbnails(self, predictions: list[events_pb2.PredictionMade]) -> None:
        """Keeps the photos' small JPEGs for the console; one that is not a bounded JPEG is dropped, not the
        listing."""
        if self.thumbnails is None:
            return
        kept = []
        for prediction in predictions:
            if not prediction.thumbnail_jpeg:
                continue
            if not usable_thumbnail(prediction.thumbnail_jpeg) or not IMAGE_DIGEST.fullmatch(prediction.image_digest):
                log.warning("thumbnail dropped", extra={"listing_id": prediction.listing_id[:100],
                                                        "bytes": len(prediction.thumbnail_jpeg)})
                continue
            kept.append((prediction.image_digest, prediction.thumbnail_jpeg))
        if kept:
            self.thumbnails.put_thumbnails(kept)

    def _mark_published(self, sequences: list[int], attempts: int = 3) -> None:
        """The broker has these: mark them, trying a few times. If the store stays away, they are remembered as
        acknowledged, so the batch's retry marks them without publishing them again (only a replica that dies
        before the mark republishes, with the same event id)."""
        for attempt in range(attempts):
            try:
                self.store.mark_published(sequences)
                with self._unmarked_lock:
                    self._acknowledged_unmarked.difference_update(sequences)
                return
            except ClassificationError:
                if attempt == attempts - 1:
                    with self._unmarked_lock:
                        self._acknowledged_unmarked.update(sequences)
                    raise
                time.sleep(0.2 * 2 ** attempt)

    def record_failure(self, failure: events_pb2.ProcessingFailed) -> StoredClassification | None:
        """Stores a dead-lettered listing as FAILED with its reason; one whose id no store can hold is only logged."""
        try:
            check_text("listing_id", failure.listing_id, MAX_ID_LENGTH, required=True)
        except ClassificationError as error:
            log.warning("dead letter not stored", extra={"reason": error.reason})
            return None
        stored = self.store.record(failed_classification(failure))
        if stored.newly_stored:
            CLASSIFICATIONS.labels(failure.marketplace or "unknown", "failed").inc()
        self.store.mark_published([stored.classification.sequence])  # failures are not published on the output topic
        self._notify_watchers()
        return stored

    def _notify_watchers(self) -> None:
        with self.stored:
            self.stored.notify_all()
        for listener in self.on_stored:
            listener()
