"""Dead letters: an event that can never succeed goes to the processing-failed topic with its reason and origin."""

from __future__ import annotations

import logging

from google.protobuf.timestamp_pb2 import Timestamp

from services.common.contracts.product_classification.v1 import events_pb2
from services.common.errors import ErrorKind
from services.common.kafka import MAX_REQUEST_BYTES, UnreadableHandler, UnreadableRecord, send_event
from services.common.metrics import KAFKA_DEAD_LETTERED
from services.common.validation import valid_timestamp

log = logging.getLogger(__name__)

# The most of the original payload a dead letter carries: what a produce request holds, less room for the rest of
# the dead letter, whose texts are clipped below (a record larger than that still sits in its topic, where the dead
# letter says).
MAX_DEAD_LETTER_PAYLOAD = MAX_REQUEST_BYTES - 64 * 1024
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
    why (no payload, no listing: nothing of it could be read), published on topic; returns the send future."""
    def dead_letter_unreadable(record: UnreadableRecord):
        failed_at = Timestamp()
        failed_at.GetCurrentTime()
        return publish_dead_letter(producer, topic, events_pb2.ProcessingFailed(
            error_kind=ErrorKind.INVALID_REQUEST.proto, reason=record.reason, stage=stage, source_topic=record.topic,
            source_partition=record.partition, source_offset=record.offset, failed_at=failed_at))
    return dead_letter_unreadable
