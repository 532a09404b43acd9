"""Dead letters: an event that can never succeed goes to the processing-failed topic with its reason and origin."""

from __future__ import annotations

import logging

from google.protobuf.timestamp_pb2 import Timestamp

from services.common.contracts.product_classification.v1 import events_pb2
from services.common.errors import ErrorKind
from services.common.kafka import MAX_DEAD_LETTER_PAYLOAD, UnreadableHandler, UnreadableRecord, send_event
from services.common.metrics import KAFKA_DEAD_LETTERED
from services.common.validation import valid_timestamp

log = logging.getLogger(__name__)

# A dead letter carries the original payload up to MAX_DEAD_LETTER_PAYLOAD (services.common.kafka); a record larger
# than that still sits in its topic, where the dead letter says.
# Ids (and a record's key standing in for one) longer than any valid id (256) stay longer than that once clipped, so
# the result service still refuses to store them, rather than under another listing's id.
MAX_DEAD_LETTER_ID = 1024
MAX_DEAD_LETTER_REASON = 2000


def send_dead_letter(producer, topic: str, record, kind: ErrorKind, reason: str, stage: str, *,
                     listing_id: str = "", submission_id: str = "", marketplace: str = "",
                     submitted_at: Timestamp | None = None):
    """Publishes a ProcessingFailed carrying the original payload and offset; returns the send future."""
    failure = dead_letter(record, kind, reason, stage, listing_id=listing_id, submission_id=submission_id,
                          marketplace=marketplace, submitted_at=submitted_at)
    return publish_dead_letter(producer, topic, failure)


def publish_dead_letter(producer, topic: str, failure: events_pb2.ProcessingFailed):
    log.warning("dead-lettered", extra={"listing_id": failure.listing_id,
                                        "error_kind": ErrorKind.from_proto(failure.error_kind).name,
                                        "reason": failure.reason, "stage": failure.stage,
                                        "source": f"{failure.source_topic}/{failure.source_partition}/"
                                                  f"{failure.source_offset}"})
    KAFKA_DEAD_LETTERED.labels(failure.stage, ErrorKind.from_proto(failure.error_kind).name).inc()
    return send_event(producer, topic, failure.listing_id, failure)


def dead_letter(record, kind: ErrorKind, reason: str, stage: str, *, listing_id: str = "", submission_id: str = "",
                marketplace: str = "", submitted_at: Timestamp | None = None) -> events_pb2.ProcessingFailed:
    """The ProcessingFailed for one record: its reason, where it came from, when the listing was submitted (where
    known), and the original payload when a dead letter can carry it (MAX_DEAD_LETTER_PAYLOAD; a larger one is left
    out and the reason says so). Before, a payload near or past the produce limit (a record unfolded from a
    compressed batch can be 64 MiB) made a dead letter the producer refused, and the batch was retried for ever, its
    partition stopped."""
    failed_at = Timestamp()
    failed_at.GetCurrentTime()
    if not listing_id and record.key:
        listing_id = record.key[:4 * MAX_DEAD_LETTER_ID].decode(errors="replace")
    payload, reason = record.value or b"", reason[:MAX_DEAD_LETTER_REASON]
    if len(payload) > MAX_DEAD_LETTER_PAYLOAD:
        reason = (f"{reason} (the payload, {len(payload)} bytes, is not copied into this dead letter, which carries "
                  f"at most {MAX_DEAD_LETTER_PAYLOAD}: it stays at its source offset)")
        payload = b""
    failure = events_pb2.ProcessingFailed(
        submission_id=submission_id[:MAX_DEAD_LETTER_ID], listing_id=listing_id[:MAX_DEAD_LETTER_ID],
        marketplace=marketplace[:MAX_DEAD_LETTER_ID], error_kind=kind.proto, reason=reason,
        stage=stage, source_topic=record.topic, source_partition=record.partition, source_offset=record.offset,
        original_payload=payload, failed_at=failed_at)
    if submitted_at is not None and valid_timestamp(submitted_at):
        failure.submitted_at.CopyFrom(submitted_at)
    return failure


def unreadable_dead_letterer(producer, topic: str, stage: str) -> UnreadableHandler:
    """What a consume loop calls for a record the Kafka client cannot read: a ProcessingFailed with where it sits and
    why, published on topic; returns the send future. No payload or listing (nothing of it could be read): the bytes
    of its record batch instead, as fetched, where they fit (MAX_DEAD_LETTER_PAYLOAD) and no earlier dead letter
    carries them (the reason says where they are otherwise)."""
    def dead_letter_unreadable(record: UnreadableRecord):
        return publish_dead_letter(producer, topic, unreadable_dead_letter(record, stage))
    return dead_letter_unreadable


def unreadable_dead_letter(record: UnreadableRecord, stage: str) -> events_pb2.ProcessingFailed:
    failed_at = Timestamp()
    failed_at.GetCurrentTime()
    reason = record.reason[:MAX_DEAD_LETTER_REASON]
    if record.batch_offset < 0:
        reason += " (its record batch could not be found in the fetch: it stays at its source offset)"
    elif record.carried_by >= 0:
        reason += (f" (its record batch, from offset {record.batch_offset}, is in the dead letter of offset "
                   f"{record.carried_by})")
    elif not record.batch:
        reason += (f" (its record batch, {record.batch_size} bytes from offset {record.batch_offset}, is not copied "
                   f"into this dead letter, which carries at most {MAX_DEAD_LETTER_PAYLOAD}: it stays at its source "
                   "offset)")
    return events_pb2.ProcessingFailed(
        error_kind=ErrorKind.INVALID_REQUEST.proto, reason=reason, stage=stage, source_topic=record.topic,
        source_partition=record.partition, source_offset=record.offset, failed_at=failed_at,
        source_batch=record.batch, source_batch_offset=record.batch_offset if record.batch else 0)
