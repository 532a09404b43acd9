"""The operators' tables beside the classifications: thumbnails, corrections, the review queue and the numbers.

They share the classification store's connection and transactions (SQLite or PostgreSQL). A correction is stored
once per correction id and carries `published` and a publication claim like a classification, so exactly one
replica publishes it on the listing-corrected topic, and one whose publication failed is picked up again later.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from services.common.contracts.product_classification.v1 import common_pb2
from services.results.store import PHOTO_BACK_SEPARATOR, ClassificationStore

NEEDS_REVIEW = common_pb2.CLASSIFICATION_STATUS_NEEDS_REVIEW
CLASSIFIED = common_pb2.CLASSIFICATION_STATUS_CLASSIFIED
FAILED = common_pb2.CLASSIFICATION_STATUS_FAILED


@dataclass(frozen=True)
class StoredCorrection:
    correction: common_pb2.Correction  # sequence filled in
    newly_stored: bool
    published: bool


@dataclass(frozen=True)
class LabelCounts:
    label: str
    classified: int = 0
    needs_review: int = 0
    checked: int = 0
    checked_correct: int = 0


@dataclass(frozen=True)
class Counts:
    classified: int
    needs_review: int
    failed: int
    per_minute: list[tuple[int, int]]  # (unix minute start, classifications)
    per_label: dict[str, LabelCounts]
    failed_by_kind: dict[int, int]  # ErrorKind value -> failures


# The listing's latest classification (a superseded one is never that) that no operator has judged yet.
_UNJUDGED = ("c.status IN ({classified}, {needs_review}) AND c.sequence = (SELECT MAX(l.sequence) FROM "
             "classifications l WHERE l.listing_id = c.listing_id AND NOT l.superseded) AND NOT EXISTS (SELECT 1 FROM corrections r "
             "WHERE r.classification_sequence = c.sequence)").format(classified=CLASSIFIED, needs_review=NEEDS_REVIEW)


class OperatorStore:
    def __init__(self, store: ClassificationStore):
        self.store = store

    # -- thumbnails

    def put_thumbnail(self, image_digest: str, jpeg: bytes) -> None:
        self.put_thumbnails([(image_digest, jpeg)])

    def put_thumbnails(self, thumbnails: list[tuple[str, bytes]]) -> None:
        """Keeps the first thumbnail of each image (the same photo always gives the same one), in one transaction."""
        now = time.time()
        with self.store.transaction() as cursor:  # executemany: one round trip on PostgreSQL (a pipeline)
            cursor.executemany(self.store.sql("INSERT INTO thumbnails (image_digest, jpeg, stored_at) VALUES "
                                              "(?, ?, ?) ON CONFLICT (image_digest) DO NOTHING"),
                               [(image_digest, jpeg, now) for image_digest, jpeg in thumbnails])

    def thumbnail(self, image_digest: str) -> bytes | None:
        with self.store.transaction() as cursor:
            cursor.execute(self.store.sql("SELECT jpeg FROM thumbnails WHERE image_digest = ?"), (image_digest,))
            row = cursor.fetchone()
        return bytes(row[0]) if row else None

    # -- corrections

    def record_correction(self, correction: common_pb2.Correction) -> StoredCorrection:
        """Stores the correction unless its id is already there; returns what the store holds. Two replicas storing
        one id at once (a retried submission, one verdict carried by both): one row, both get it."""
        select = self.store.sql("SELECT sequence, payload, published FROM corrections WHERE correction_id = ?")
        with self.store.transaction() as cursor:
            cursor.execute(select, (correction.correction_id,))
            row = cursor.fetchone()
            if row is None:
                cursor.execute(self.store.sql(
                    "INSERT INTO corrections (correction_id, listing_id, marketplace, classification_sequence, "
                    "model_label, category_id, model_was_right, operator, payload, corrected_at, published, "
                    "carried_from) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (correction_id) DO NOTHING RETURNING sequence"),
                    (correction.correction_id, correction.listing_id, correction.marketplace,
                     correction.classification_sequence, correction.model_answer.label,
                     correction.category.id.rsplit("/", 1)[-1], correction.model_was_right, correction.operator,
                     correction.SerializeToString(), time.time(), False, correction.carried_from_sequence or None))
                inserted = cursor.fetchone()
                if inserted is not None:
                    stored = common_pb2.Correction()
                    stored.CopyFrom(correction)
                    stored.sequence = inserted[0]
                    return StoredCorrection(stored, newly_stored=True, published=False)
                cursor.execute(select, (correction.correction_id,))  # another replica's, committed in between
                row = cursor.fetchone()
        return StoredCorrection(self._decode(row[0], row[1]), newly_stored=False, published=bool(row[2]))

    def claim_correction(self, sequence: int, owner: str, lease_s: float) -> bool:
        now = time.time()
        with self.store.transaction() as cursor:
            cursor.execute(self.store.sql(
                "UPDATE corrections SET claimed_by = ?, claimed_until = ? WHERE sequence = ? AND NOT published "
                "AND (claimed_by IS NULL OR claimed_by = ? OR claimed_until < ?)"),
                (owner, now + lease_s, sequence, owner, now))
            return cursor.rowcount == 1

    def release_correction(self, sequence: int, owner: str) -> None:
        """The owner's publication failed: any replica's sweep may take the row at once."""
        with self.store.transaction() as cursor:
            cursor.execute(self.store.sql("UPDATE corrections SET claimed_by = NULL, claimed_until = NULL "
                                          "WHERE sequence = ? AND claimed_by = ?"), (sequence, owner))

    def mark_correction_published(self, sequence: int) -> None:
        with self.store.transaction() as cursor:
            cursor.execute(self.store.sql("UPDATE corrections SET published = TRUE WHERE sequence = ?"), (sequence,))

    def withhold_correction(self, correction: common_pb2.Correction, owner: str) -> bool:
        """Settles a claimed correction without publishing it: the listing shows another photo now (the correction's
        photo_replaced_by_sequence). Stored as it is given, and never sent; False when the claim was lost."""
        with self.store.transaction() as cursor:
            cursor.execute(self.store.sql(
                "UPDATE corrections SET payload = ?, published = TRUE, claimed_by = NULL, claimed_until = NULL "
                "WHERE sequence = ? AND claimed_by = ? AND NOT published"),
                (correction.SerializeToString(), correction.sequence, owner))
            return cursor.rowcount == 1

    def current_classification(self, listing_id: str) -> common_pb2.Classification | None:
        """The listing's classification now: its latest row, superseded ones aside (what GetClassification answers)."""
        return self.store.latest_for_listing(listing_id)

    def unpublished_corrections(self, older_than_s: float, limit: int = 100) -> list[common_pb2.Correction]:
        """Corrections whose publication failed or was abandoned (and whose claim, if any, has run out), once the
        classification each one judges is out: a verdict carried to a listing back to its photo is stored before
        that classification is published, and goes out after it."""
        now = time.time()
        with self.store.transaction() as cursor:
            cursor.execute(self.store.sql(
                f"SELECT r.sequence, r.payload FROM corrections r JOIN classifications c ON c.sequence = "
                f"r.classification_sequence WHERE NOT r.published AND c.published AND r.corrected_at < ? AND "
                f"(r.claimed_until IS NULL OR r.claimed_until < ?) ORDER BY r.sequence LIMIT {int(limit)}"),
                (now - older_than_s, now))
            rows = cursor.fetchall()
        return [self._decode(sequence, payload) for sequence, payload in rows]

    def corrections(self, marketplace: str, listing_id: str, limit: int, before_sequence: int = 0
                    ) -> list[common_pb2.Correction]:
        where, parameters = ["sequence < ?"], [before_sequence or 2 ** 62]
        for column, value in (("marketplace", marketplace), ("listing_id", listing_id)):
            if value:
                where.append(f"{column} = ?")
                parameters.append(value)
        with self.store.transaction() as cursor:
            cursor.execute(self.store.sql(f"SELECT sequence, payload FROM corrections WHERE {' AND '.join(where)} "
                                          f"ORDER BY sequence DESC LIMIT {int(limit)}"), tuple(parameters))
            rows = cursor.fetchall()
        return [self._decode(sequence, payload) for sequence, payload in rows]

    def verdict_on_photo(self, listing_id: str, photo_key: str, other_than: int) -> common_pb2.Correction | None:
        """The latest correction of the listing on a classification of the photo photo_key names (its rows' keys
        are that key, or that key and PHOTO_BACK_SEPARATOR for a return to it), other than classification
        other_than's; None when no operator judged the photo for this listing."""
        with self.store.transaction() as cursor:
            cursor.execute(self.store.sql(
                "SELECT r.sequence, r.payload, c.idempotency_key FROM corrections r JOIN classifications c ON "
                "c.sequence = r.classification_sequence WHERE r.listing_id = ? AND r.classification_sequence <> ? "
                "ORDER BY r.sequence DESC"), (listing_id, other_than))
            for sequence, payload, key in cursor:
                if str(key).split(PHOTO_BACK_SEPARATOR)[0] == photo_key:
                    return self._decode(sequence, payload)
        return None

    @staticmethod
    def _decode(sequence: int, payload) -> common_pb2.Correction:
        correction = common_pb2.Correction.FromString(bytes(payload))
        correction.sequence = sequence
        return correction

    # -- the review queue

    def review_queue(self, marketplace: str, category_id: str, limit: int, offset: int, listing_id: str = ""
                     ) -> tuple[list[common_pb2.Classification], int]:
        """Unjudged latest classifications, NEEDS_REVIEW first, least confident first; and how many there are."""
        where, parameters = [_UNJUDGED], []
        for column, value in (("c.marketplace", marketplace), ("c.category_id", category_id),
                              ("c.listing_id", listing_id)):
            if value:
                where.append(f"{column} = ?")
                parameters.append(value)
        condition = " AND ".join(where)
        with self.store.transaction() as cursor:
            cursor.execute(self.store.sql(
                f"SELECT c.sequence, c.payload FROM classifications c WHERE {condition} "
                f"ORDER BY CASE WHEN c.status = {NEEDS_REVIEW} THEN 0 ELSE 1 END, c.confidence ASC, c.sequence ASC "
                f"LIMIT {int(limit)} OFFSET {int(offset)}"), tuple(parameters))
            rows = cursor.fetchall()
            cursor.execute(self.store.sql(f"SELECT COUNT(*) FROM classifications c WHERE {condition}"),
                           tuple(parameters))
            total = int(cursor.fetchone()[0])
        found = []
        for sequence, payload in rows:
            classification = common_pb2.Classification.FromString(bytes(payload))
            classification.sequence = sequence
            found.append(classification)
        return found, total

    def classification(self, sequence: int) -> common_pb2.Classification | None:
        with self.store.transaction() as cursor:
            cursor.execute(self.store.sql("SELECT payload FROM classifications WHERE sequence = ?"), (sequence,))
            row = cursor.fetchone()
        if row is None:
            return None
        classification = common_pb2.Classification.FromString(bytes(row[0]))
        classification.sequence = sequence
        return classification

    # -- the numbers

    def counts(self, marketplace: str, window_s: int) -> Counts:
        """Classifications stored in the window by status, per minute and per label; operators' checks per label
        (each classification counted once, by its latest correction; a verdict carried to a listing back to its
        photo is not counted again)."""
        since = time.time() - window_s
        market = " AND marketplace = ?" if marketplace else ""
        parameters = (since, marketplace) if marketplace else (since,)
        minute = "FLOOR(stored_at / 60)::BIGINT" if self.store.is_postgres else "CAST(stored_at / 60 AS INTEGER)"
        with self.store.transaction() as cursor:
            cursor.execute(self.store.sql(f"SELECT COALESCE(label, ''), status, COUNT(*) FROM classifications "
                                          f"WHERE stored_at >= ?{market} GROUP BY COALESCE(label, ''), status"),
                           parameters)
            by_status = cursor.fetchall()
            cursor.execute(self.store.sql(f"SELECT {minute} AS minute, COUNT(*) FROM classifications WHERE "
                                          f"stored_at >= ? AND status IN ({CLASSIFIED}, {NEEDS_REVIEW}){market} "
                                          "GROUP BY minute ORDER BY minute"), parameters)
            per_minute = [(int(m) * 60, int(n)) for m, n in cursor.fetchall()]
            cursor.execute(self.store.sql(
                f"SELECT r.model_label, COUNT(*), SUM(CASE WHEN r.model_was_right THEN 1 ELSE 0 END) FROM corrections r "
                f"WHERE r.corrected_at >= ?{market.replace('marketplace', 'r.marketplace')} AND r.carried_from IS NULL "
                "AND r.sequence = "
                "(SELECT MAX(r2.sequence) FROM corrections r2 WHERE r2.classification_sequence = "
                "r.classification_sequence) GROUP BY r.model_label"), parameters)
            checks = cursor.fetchall()
            cursor.execute(self.store.sql(f"SELECT error_kind, COUNT(*) FROM classifications WHERE stored_at >= ? "
                                          f"AND status = {FAILED} AND error_kind IS NOT NULL{market} "
                                          "GROUP BY error_kind"), parameters)
            failed_by_kind = {int(kind): int(count) for kind, count in cursor.fetchall()}
            # rows stored before the column: their kind is in the payload (they leave the windows within 30 days)
            cursor.execute(self.store.sql(f"SELECT payload FROM classifications WHERE stored_at >= ? "
                                          f"AND status = {FAILED} AND error_kind IS NULL{market}"), parameters)
            for (payload,) in cursor.fetchall():
                kind = common_pb2.Classification.FromString(bytes(payload)).error_kind
                failed_by_kind[kind] = failed_by_kind.get(kind, 0) + 1
        labels: dict[str, dict[str, int]] = {}
        totals = {CLASSIFIED: 0, NEEDS_REVIEW: 0, FAILED: 0}
        for label, status, count in by_status:
            totals[status] = totals.get(status, 0) + int(count)
            if status in (CLASSIFIED, NEEDS_REVIEW) and label:
                key = "classified" if status == CLASSIFIED else "needs_review"
                labels.setdefault(label, {})[key] = int(count)
        for label, checked, correct in checks:
            labels.setdefault(label, {}).update(checked=int(checked), checked_correct=int(correct or 0))
        return Counts(classified=totals[CLASSIFIED], needs_review=totals[NEEDS_REVIEW], failed=totals[FAILED],
                      per_minute=per_minute,
                      per_label={label: LabelCounts(label, **values) for label, values in sorted(labels.items())},
                      failed_by_kind=failed_by_kind)
