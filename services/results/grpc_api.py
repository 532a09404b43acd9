"""gRPC edge of the result service: record a synchronous prediction, get, list and watch classifications."""

from __future__ import annotations

from services.common.contracts.product_classification.v1 import results_pb2, results_pb2_grpc
from services.common.errors import ClassificationError, ErrorKind, abort_with
from services.results.core import ClassificationRecorder

MAX_PAGE_SIZE = 500


class ClassificationResultsServicer(results_pb2_grpc.ClassificationResultsServicer):
    def __init__(self, recorder: ClassificationRecorder, watch_poll_s: float):
        self.recorder = recorder
        self.store = recorder.store
        self.watch_poll_s = watch_poll_s

    def RecordPrediction(self, request, context):
        try:
            [outcome] = self.recorder.record_predictions([request])
        except ClassificationError as error:
            abort_with(context, error)
        if isinstance(outcome, ClassificationError):
            abort_with(context, outcome)
        return outcome.classification

    def GetClassification(self, request, context):
        if not request.listing_id:
            abort_with(context, ClassificationError(ErrorKind.INVALID_REQUEST, "listing_id is required"))
        try:
            found = self.store.latest_for_listing(request.listing_id)
        except ClassificationError as error:
            abort_with(context, error)
        if found is None:
            import grpc

            context.abort(grpc.StatusCode.NOT_FOUND, f"no classification for listing {request.listing_id!r}")
        return found

    def ListClassifications(self, request, context):
        if request.page_size < 0 or request.before_sequence < 0:
            abort_with(context, ClassificationError(ErrorKind.INVALID_REQUEST, "page_size and before_sequence must "
                                                    "not be negative"))
        page_size = min(request.page_size or 50, MAX_PAGE_SIZE)
        try:
            found = self.store.recent(request.marketplace, page_size + 1, request.before_sequence)
        except ClassificationError as error:
            abort_with(context, error)
        more = len(found) > page_size
        found = found[:page_size]
        return results_pb2.ListClassificationsResponse(
            classifications=found, next_before_sequence=found[-1].sequence if more and found else 0)

    def WatchClassifications(self, request, context):
        """Streams rows as they are stored: woken by this replica's writes, and polling for other replicas'."""
        try:
            position = request.after_sequence or self.store.last_sequence()
        except ClassificationError as error:
            abort_with(context, error)
        while context.is_active():
            try:
                batch = self.store.after(position, request.marketplace)
            except ClassificationError:
                batch = []  # the store is down for a moment: keep the stream, try again
            for classification in batch:
                position = classification.sequence
                yield classification
            if not batch:
                with self.recorder.stored:
                    self.recorder.stored.wait(self.watch_poll_s)
