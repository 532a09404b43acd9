"""The operators' side of the result service: corrections stored and published once, the review queue, the numbers.

The console calls these through the gRPC API (grpc_api.py); nothing here knows about HTTP or browsers.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Callable

from google.protobuf.timestamp_pb2 import Timestamp

from services.common.contracts.product_classification.v1 import common_pb2, events_pb2, results_pb2
from services.common.errors import ClassificationError, ErrorKind
from services.common.validation import MAX_ID_LENGTH, check_text
from services.results.operator_store import OperatorStore
from services.results.store import PHOTO_BACK_SEPARATOR, StoredClassification, short_category_id
from services.results.taxonomy import Taxonomies

log = logging.getLogger(__name__)

CORRECTION_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
MAX_THUMBNAIL_BYTES = 64 * 1024
MAX_WINDOW_S = 30 * 24 * 3600
JPEG_START = b"\xff\xd8\xff"
IMAGE_DIGEST = re.compile(r"[0-9a-f]{64}")  # SHA-256, hex: what preprocessing names an image by

# Sends a ListingCorrected event; returns a future whose .get(timeout) raises unless the broker acknowledged it.
PublishCorrection = Callable[[events_pb2.ListingCorrected], object]


def usable_thumbnail(jpeg: bytes) -> bool:
    """What the console may serve as image/jpeg: a JPEG by its first bytes, within the size bound."""
    return 0 < len(jpeg) <= MAX_THUMBNAIL_BYTES and jpeg.startswith(JPEG_START)


def correction_event_id(correction_id: str) -> str:
    return hashlib.sha256(f"correction|{correction_id}".encode()).hexdigest()[:32]


def carried_correction_id(classification_sequence: int) -> str:
    """The id of the verdict carried to a classification: one per classification, whichever replica (or retry)
    carries it, so it is stored and published once."""
    return "carried-" + hashlib.sha256(f"carried|{classification_sequence}".encode()).hexdigest()[:32]


class ReviewDesk:
    """Records operators' corrections (publishing each once), and answers the console's queries."""

    def __init__(self, operators: OperatorStore, taxonomies: Taxonomies, publish: PublishCorrection,
                 publisher_id: str, send_timeout_s: float = 30.0, claim_lease_s: float = 60.0):
        self.operators = operators
        self.taxonomies = taxonomies
        self.publish = publish
        self.publisher_id = publisher_id
        self.send_timeout_s = send_timeout_s
        self.claim_lease_s = max(claim_lease_s, 2 * send_timeout_s)
        self._stopping = threading.Event()

    # -- corrections

    def record_correction(self, request: results_pb2.RecordCorrectionRequest) -> common_pb2.Correction:
        """Stores the operator's verdict (once per correction id) and publishes it; UNAVAILABLE if the broker did not
        acknowledge (the correction stays stored and is published by a later sweep, or by the caller's retry)."""
        if not CORRECTION_ID.fullmatch(request.correction_id):
            raise ClassificationError(ErrorKind.INVALID_REQUEST, "correction_id must be 8 to 64 characters of "
                                      "letters, digits, '-' and '_'")
        check_text("listing_id", request.listing_id, MAX_ID_LENGTH, required=True)
        check_text("operator", request.operator, 64, required=True)
        check_text("category_id", request.category_id, 200, required=True)
        check_text("locale", request.locale, 35)
        judged = self.operators.classification(request.classification_sequence)
        if judged is None or judged.listing_id != request.listing_id:
            raise ClassificationError(ErrorKind.INVALID_REQUEST, f"classification {request.classification_sequence} "
                                      f"is not one of listing {request.listing_id!r}")
        if judged.status == common_pb2.CLASSIFICATION_STATUS_FAILED:
            raise ClassificationError(ErrorKind.INVALID_REQUEST, "a failed classification has no category to correct")
        marketplace = self.taxonomies.for_marketplace(judged.marketplace)
        short_id = short_category_id(request.category_id)
        if short_id not in self.taxonomies.shopify.paths:
            raise ClassificationError(ErrorKind.INVALID_REQUEST, f"{request.category_id!r} is not a category of "
                                      f"{judged.marketplace!r}'s taxonomy")
        category = self.taxonomies.category_in_locale(marketplace, short_id, request.locale or judged.locale)
        label = next((label for label, mapped in marketplace.labels.items() if mapped == short_id), "")
        now = Timestamp()
        now.GetCurrentTime()
        correction = common_pb2.Correction(
            correction_id=request.correction_id, listing_id=judged.listing_id, marketplace=judged.marketplace,
            classification_sequence=judged.sequence, model_answer=judged, category=category, label=label,
            model_was_right=short_category_id(judged.category.id) == short_id, operator=request.operator,
            corrected_at=now)
        stored = self.operators.record_correction(correction)
        if not stored.newly_stored and (stored.correction.listing_id != correction.listing_id or
                                        stored.correction.category.id != correction.category.id or
                                        stored.correction.classification_sequence != judged.sequence):
            raise ClassificationError(ErrorKind.INVALID_REQUEST, f"correction_id {request.correction_id!r} was "
                                      "already used for another decision; make a new id for each")
        if not stored.published:
            return self._publish(stored.correction) or self._as_it_will_be_settled(stored.correction)
        return stored.correction

    def _as_it_will_be_settled(self, correction: common_pb2.Correction) -> common_pb2.Correction:
        """The answer for a correction another replica holds the claim on (a retried click reaching this replica
        while the first try's replica, or a sweep, publishes it): the same check that replica makes, read only, so
        the operator is told a verdict on a replaced photo is not sent whichever replica answers."""
        replaced_by = self._photo_replaced_by(correction)
        if not replaced_by:
            return correction
        answer = common_pb2.Correction()
        answer.CopyFrom(correction)
        answer.photo_replaced_by_sequence = replaced_by
        return answer

    def _publish(self, correction: common_pb2.Correction) -> common_pb2.Correction | None:
        """Publishes unless another replica holds the claim, or withholds it when the listing no longer shows the
        photo it judged; the correction as it was settled, None when another replica holds it.

        A listing service applies a listing-corrected event to the listing: a verdict on photo A arriving after the
        seller replaced it with B (the operator judged A from a queue loaded before B came, or the verdict waited
        out a broker outage) would give B the category chosen for A. Checked here, after the claim and before the
        send, so a sweep's late publication is checked too; a photo replaced after this check is classified, and
        published, after the verdict."""
        if not self.operators.claim_correction(correction.sequence, self.publisher_id, self.claim_lease_s):
            return None
        replaced_by = self._photo_replaced_by(correction)
        if replaced_by:
            withheld = common_pb2.Correction()
            withheld.CopyFrom(correction)
            withheld.photo_replaced_by_sequence = replaced_by
            if not self.operators.withhold_correction(withheld, self.publisher_id):
                return None
            log.info("verdict on a photo the listing no longer shows: stored, not published",
                     extra={"listing_id": correction.listing_id[:100], "classification":
                            correction.classification_sequence, "replaced_by": replaced_by})
            return withheld
        event = events_pb2.ListingCorrected(correction=correction,
                                            event_id=correction_event_id(correction.correction_id))
        try:
            self.publish(event).get(timeout=self.send_timeout_s)
        except Exception as error:  # noqa: BLE001
            try:
                self.operators.release_correction(correction.sequence, self.publisher_id)
            except ClassificationError:
                pass  # the claim runs out by itself
            raise ClassificationError(ErrorKind.UNAVAILABLE, f"the correction is stored but not yet published "
                                      f"({error!r}); it goes out when the broker is back") from None
        self.operators.mark_correction_published(correction.sequence)
        return correction

    def _photo_replaced_by(self, correction: common_pb2.Correction) -> int:
        """The sequence of the listing's current classification when it is not for the photo the correction judged
        (another photo, or a dead-lettered submission whose photo nobody read); 0 when it is that photo (the same
        row, or a later one of the same photo's bytes: a return to it, other model versions)."""
        current = self.operators.current_classification(correction.listing_id)
        if current is None or current.sequence == correction.classification_sequence:
            return 0
        judged = correction.model_answer.image_digest
        return 0 if judged and current.image_digest == judged else current.sequence

    def carry_verdicts(self, stored: list[StoredClassification]) -> list[common_pb2.Correction]:
        """Applies an operator's verdict again where a listing went back to the photo it was given for.

        A seller undoing an edit (photo A, then B, then A again) gets a classification of its own for A again, the
        models' answer (see the store's record_many). Where an operator had judged A for this listing, that answer
        would take the listing back to what the operator overruled, and put it in the review queue for the same
        decision again. So the latest verdict on A is stored again for the new classification (carried_from_sequence
        names the operator's own), unpublished: call this before the classification is published and
        publish_carried after it, so the listing-corrected event follows it (the sweep publishes a carried verdict
        only once its classification is out). Idempotent: one carried verdict per classification."""
        carried = []
        for outcome in stored:
            classification = outcome.classification
            if (outcome.published or PHOTO_BACK_SEPARATOR not in outcome.key
                    or classification.status == common_pb2.CLASSIFICATION_STATUS_FAILED):
                continue
            verdict = self.operators.verdict_on_photo(classification.listing_id,
                                                      outcome.key.split(PHOTO_BACK_SEPARATOR)[0],
                                                      other_than=classification.sequence)
            if verdict is None:
                continue
            now = Timestamp()
            now.GetCurrentTime()
            correction = common_pb2.Correction(
                correction_id=carried_correction_id(classification.sequence), listing_id=classification.listing_id,
                marketplace=classification.marketplace, classification_sequence=classification.sequence,
                model_answer=classification, category=verdict.category, label=verdict.label,
                model_was_right=short_category_id(classification.category.id) == short_category_id(verdict.category.id),
                operator=verdict.operator, corrected_at=now,
                carried_from_sequence=verdict.carried_from_sequence or verdict.sequence)
            recorded = self.operators.record_correction(correction)
            if not recorded.published:
                carried.append(recorded.correction)
            log.info("verdict carried to a listing back to its photo",
                     extra={"listing_id": classification.listing_id, "classification": classification.sequence,
                            "carried_from": correction.carried_from_sequence})
        return carried

    def publish_carried(self, corrections: list[common_pb2.Correction]) -> None:
        """Publishes carried verdicts whose classifications are out; one the broker does not take now is left to
        the sweep (it is stored)."""
        for correction in corrections:
            try:
                self._publish(correction)
            except ClassificationError as error:
                log.warning("carried verdict not yet published", extra={"reason": error.reason})
                return

    def publish_pending(self, older_than_s: float = 10.0) -> int:
        """Publishes corrections a failed or abandoned publication left behind; returns how many went out."""
        published = 0
        for correction in self.operators.unpublished_corrections(older_than_s):
            try:
                settled = self._publish(correction)
                published += settled is not None and not settled.photo_replaced_by_sequence
            except ClassificationError as error:
                log.warning("correction not yet published", extra={"reason": error.reason})
                break
        return published

    def run_sweeper(self, every_s: float) -> threading.Thread:
        def sweep() -> None:
            while not self._stopping.wait(every_s):
                try:
                    self.publish_pending()
                except ClassificationError as error:
                    log.warning("correction sweep failed", extra={"reason": error.reason})
        thread = threading.Thread(target=sweep, name="correction-sweeper", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stopping.set()

    # -- queries

    def search_categories(self, request: results_pb2.SearchCategoriesRequest) -> list[common_pb2.Category]:
        marketplace = self.taxonomies.for_marketplace(request.marketplace)
        check_text("query", request.query, 100)
        limit = min(request.page_size or 20, 100)
        if request.category_ids:
            if len(request.category_ids) > 500:
                raise ClassificationError(ErrorKind.INVALID_REQUEST, "at most 500 category ids per call")
            ids = [short_category_id(i) for i in request.category_ids]
            return [self.taxonomies.category_in_locale(marketplace, i, request.locale) for i in ids
                    if i in self.taxonomies.shopify.paths]
        return self.taxonomies.search(marketplace, request.query, request.locale, limit, any_locale=True)

    def statistics(self, request: results_pb2.GetStatisticsRequest) -> results_pb2.Statistics:
        if request.window_s < 0:
            raise ClassificationError(ErrorKind.INVALID_REQUEST, "window_s must not be negative")
        window = min(request.window_s or 3600, MAX_WINDOW_S)
        marketplace = self.taxonomies.for_marketplace(request.marketplace) if request.marketplace else None
        counts = self.operators.counts(request.marketplace, window)
        statistics = results_pb2.Statistics(
            window_s=window, classified=counts.classified, needs_review=counts.needs_review, failed=counts.failed,
            per_minute=[results_pb2.ThroughputBucket(start=s, classifications=n) for s, n in counts.per_minute],
            failed_by_kind=[results_pb2.FailureCount(error_kind=kind, count=n)  # most first
                            for kind, n in sorted(counts.failed_by_kind.items(), key=lambda item: (-item[1], item[0]))])
        for label, numbers in counts.per_label.items():
            entry = results_pb2.CategoryStatistics(label=label, classified=numbers.classified,
                                                   needs_review=numbers.needs_review, checked=numbers.checked,
                                                   checked_correct=numbers.checked_correct)
            owner = marketplace or next((m for m in self.taxonomies.marketplaces.values() if label in m.labels), None)
            if owner is not None and label in owner.labels:
                entry.category.CopyFrom(self.taxonomies.category_in_locale(owner, owner.labels[label], request.locale))
            statistics.per_category.append(entry)
            statistics.checked += numbers.checked
            statistics.checked_correct += numbers.checked_correct
        return statistics

    def marketplaces(self, locale: str) -> list[results_pb2.MarketplaceInfo]:
        check_text("locale", locale, 35)
        return [results_pb2.MarketplaceInfo(
            name=m.name, locales=m.locales, default_locale=m.default_locale,
            review_threshold=self.taxonomies.review_threshold(m),
            categories=[self.taxonomies.category_in_locale(m, short_id, locale or m.default_locale)
                        for short_id in dict.fromkeys(m.labels.values())])
            for m in sorted(self.taxonomies.marketplaces.values(), key=lambda m: m.name)]
