"""Dead letters: an event that can never succeed goes to the processing-failed topic with its reason and origin."""

from __future__ import annotations

import logging

from google.protobuf.timestamp_pb2 import Timestamp

from services.common.contracts.product_classification.v1 import events_pb2
from services.common.errors import ErrorKind
from services.common.kafka import send_event
from services.common.metrics import KAFKA_DEAD_LETTERED

log = logging.getLogger(__name__)


def send_dead_letter(producer, topic: str, record, kind: ErrorKind, reason: str, stage: str, *,
                     listing_id: str = "", submission_id: str = "", marketplace: str = ""):
    """Publishes a ProcessingFailed carrying the original payload and offset; returns the send future."""
    failed_at = Timestamp()
    failed_at.GetCurrentTime()
    if not listing_id and record.key:
        listing_id = record.key.decode(errors="replace")
    failure = events_pb2.ProcessingFailed(
        submission_id=submission_id, listing_id=listing_id, marketplace=marketplace, error_kind=kind.proto,
        reason=reason, stage=stage, source_topic=record.topic, source_partition=record.partition,
        source_offset=record.offset, original_payload=record.value or b"", failed_at=failed_at)
    log.warning("dead-lettered", extra={"listing_id": listing_id, "error_kind": kind.name, "reason": reason,
                                        "stage": stage, "source": f"{record.topic}/{record.partition}/{record.offset}"})
    KAFKA_DEAD_LETTERED.labels(stage, kind.name).inc()
    return send_event(producer, topic, listing_id, failure)
