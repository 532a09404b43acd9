"""Kafka edge of the result service: prediction-made and processing-failed events in, listing-classified out."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import DecodeError

from services.common.contracts.product_classification.v1 import events_pb2
from services.common.errors import ClassificationError, ErrorKind
from services.common.dead_letters import dead_letter, publish_dead_letter
from services.common.settings import Topics
from services.common.tracing import consuming_span
from services.results.core import ClassificationRecorder


class PredictionHandler:
    """Records a batch's predictions (publishing them, acks awaited) and failures; dead-letters what cannot be used."""

    def __init__(self, recorder: ClassificationRecorder, producer, topics: Topics):
        self.recorder = recorder
        self.producer = producer
        self.topics = topics

    def _dead_letter(self, record, kind: ErrorKind, reason: str, prediction: events_pb2.PredictionMade | None = None):
        """Stores the listing as FAILED with its reason (so GetClassification tells why), then dead-letters it."""
        failure = dead_letter(record, kind, reason, "results",
                              listing_id=prediction.listing_id if prediction else "",
                              submission_id=prediction.submission_id if prediction else "",
                              marketplace=prediction.marketplace if prediction else "",
                              submitted_at=prediction.submitted_at if prediction and prediction.HasField(
                                  "submitted_at") else None)
        if failure.listing_id:
            self.recorder.record_failure(failure)
        return publish_dead_letter(self.producer, self.topics.processing_failed, failure)

    def __call__(self, records: Sequence) -> list:
        futures, predictions, prediction_records = [], [], []
        for record in records:
            try:
                if record.topic == self.topics.processing_failed:
                    failure = events_pb2.ProcessingFailed.FromString(record.value or b"")
                    if failure.stage != "results":  # our own dead letters are not a listing's outcome to store
                        self.recorder.record_failure(failure)
                    continue
                predictions.append(events_pb2.PredictionMade.FromString(record.value or b""))
                prediction_records.append(record)
            except DecodeError as error:
                with consuming_span(record, "record classification"):
                    futures.append(self._dead_letter(record, ErrorKind.INVALID_REQUEST,
                                                     f"undecodable payload: {error}"))
        # Each classification is published inside its prediction's trace.
        outcomes = self.recorder.record_predictions(
            predictions, span_for=lambda index: consuming_span(prediction_records[index], "record classification"))
        for record, prediction, outcome in zip(prediction_records, predictions, outcomes):
            if isinstance(outcome, ClassificationError):
                with consuming_span(record, "record classification"):
                    futures.append(self._dead_letter(record, outcome.kind, outcome.reason, prediction))
        return futures
