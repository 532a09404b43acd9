"""The result service's core: prediction -> fused, mapped classification -> stored once -> published once."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping

from google.protobuf.timestamp_pb2 import Timestamp

from services.common.contracts.product_classification.v1 import common_pb2, events_pb2
from services.common.errors import ClassificationError, ErrorKind
from services.common.validation import MAX_ID_LENGTH, check_identifiers, check_text
from services.common.metrics import CLASSIFICATIONS, END_TO_END_SECONDS
from services.results.fusion import fuse
from services.results.store import ClassificationStore, StoredClassification
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
    candidates = [common_pb2.CategoryCandidate(category=taxonomies.category(marketplace, label, requested_locale),
                                               label=label, confidence=probability)
                  for probability, label in ranked[:candidate_count]]
    best = candidates[0]
    threshold = taxonomies.review_threshold(marketplace)
    status = (common_pb2.CLASSIFICATION_STATUS_CLASSIFIED if best.confidence >= threshold
              else common_pb2.CLASSIFICATION_STATUS_NEEDS_REVIEW)
    classified_at = Timestamp()
    classified_at.GetCurrentTime()
    classification = common_pb2.Classification(
        listing_id=prediction.listing_id, submission_id=prediction.submission_id, marketplace=prediction.marketplace,
        locale=best.category.locale, status=status, category=best.category, label=best.label,
        confidence=best.confidence, candidates=candidates, image_digest=prediction.image_digest,
        model_versions=model_versions(prediction), classified_at=classified_at, review_threshold=threshold)
    if prediction.HasField("submitted_at"):
        classification.submitted_at.CopyFrom(prediction.submitted_at)
    return classification


def failed_classification(failure: events_pb2.ProcessingFailed) -> common_pb2.Classification:
    """What the store keeps of a dead-lettered listing, so a caller asking for it learns why it has no category."""
    classification = common_pb2.Classification(
        listing_id=failure.listing_id, submission_id=failure.submission_id, marketplace=failure.marketplace,
        status=common_pb2.CLASSIFICATION_STATUS_FAILED, error_kind=failure.error_kind, error_reason=failure.reason)
    classification.classified_at.CopyFrom(failure.failed_at)
    return classification


# Sends a ListingClassified event; returns a future whose .get(timeout) raises unless the broker acknowledged it.
Publish = Callable[[events_pb2.ListingClassified], object]


class ClassificationRecorder:
    """Classifies, stores idempotently and publishes; the Kafka and gRPC edges both go through record_predictions."""

    def __init__(self, store: ClassificationStore, taxonomies: Taxonomies, weights: Mapping[str, float],
                 publish: Publish, candidate_count: int = 3, send_timeout_s: float = 30.0):
        self.store = store
        self.taxonomies = taxonomies
        self.weights = weights
        self.publish = publish
        self.candidate_count = candidate_count
        self.send_timeout_s = send_timeout_s
        self.stored = threading.Condition()  # notified after every write, wakes the watch streams

    def record_predictions(self, predictions: list[events_pb2.PredictionMade],
                           span_for: Callable[[int], contextlib.AbstractContextManager] | None = None
                           ) -> list[StoredClassification | ClassificationError]:
        """Stores each prediction's classification and publishes those not yet published, waiting for the acks.

        Bad predictions come back as ClassificationError (not retryable); store or broker outages raise.
        """
        outcomes: list = []
        for prediction in predictions:
            try:
                classification = classify(prediction, self.taxonomies, self.weights, self.candidate_count)
                outcomes.append(self.store.record(classification))
            except ClassificationError as error:
                if error.kind is ErrorKind.UNAVAILABLE:
                    raise
                outcomes.append(error)  # this event's own fault: dead-lettered, the others go on
        pending, in_this_batch = [], set()
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, StoredClassification) and not outcome.published:
                if outcome.classification.sequence in in_this_batch:
                    continue  # the same event twice in one batch: its row is published once
                in_this_batch.add(outcome.classification.sequence)
                with span_for(index) if span_for else contextlib.nullcontext():
                    event = events_pb2.ListingClassified(classification=outcome.classification)
                    pending.append((outcome, self.publish(event)))
        for _, future in pending:
            try:
                future.get(timeout=self.send_timeout_s)
            except Exception as error:  # noqa: BLE001
                raise ClassificationError(ErrorKind.UNAVAILABLE, f"publishing failed: {error!r}") from None
        self.store.mark_published([o.classification.sequence for o, _ in pending])
        now = time.time()
        for stored, _ in pending:
            outcome = ("needs_review" if stored.classification.status == common_pb2.CLASSIFICATION_STATUS_NEEDS_REVIEW
                       else "classified")
            CLASSIFICATIONS.labels(stored.classification.marketplace, outcome).inc()
            if stored.classification.HasField("submitted_at"):
                END_TO_END_SECONDS.observe(max(0.0, now - stored.classification.submitted_at.ToMicroseconds() / 1e6))
        self._notify_watchers()
        return outcomes

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
