"""gRPC edge of the result service: record a synchronous prediction, get, list and watch classifications."""

from __future__ import annotations

import contextlib
import hashlib
import threading

import grpc

from services.common.contracts.product_classification.v1 import common_pb2, results_pb2, results_pb2_grpc
from services.common.errors import ERROR_KIND_METADATA_KEY, ClassificationError, ErrorKind, abort_with
from services.common.validation import MAX_ID_LENGTH, check_text
from services.results.core import ClassificationRecorder
from services.results.review import IMAGE_DIGEST, ReviewDesk
from services.results.store import short_category_id
from services.results.watch import WatchHub

MAX_PAGE_SIZE = 500


class StreamLimits:
    """Watch streams, bounded in total and per caller: one caller cannot take a replica's every stream."""

    def __init__(self, total: int, per_caller: int):
        self.total, self.per_caller = total, per_caller
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def held(self, caller: str):
        with self._lock:
            if sum(self._open.values()) >= self.total:
                raise ClassificationError(ErrorKind.OVERLOADED, f"{self.total} watch streams are open, the most this "
                                          "replica serves; retry later or use another replica")
            if self._open.get(caller, 0) >= self.per_caller:
                raise ClassificationError(ErrorKind.OVERLOADED, f"this caller already has {self.per_caller} watch "
                                          "streams open, the most one caller may hold")
            self._open[caller] = self._open.get(caller, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._open[caller] -= 1
                if not self._open[caller]:
                    del self._open[caller]


def caller_of(context) -> str:
    """Who is calling, as far as streams are counted: their credential (hashed, never kept), else their address."""
    for key, value in context.invocation_metadata() or ():
        if key in ("authorization", "x-api-key"):
            return hashlib.sha256(str(value).encode()).hexdigest()[:16]
    return (context.peer() or "").rsplit(":", 1)[0]


class ClassificationResultsServicer(results_pb2_grpc.ClassificationResultsServicer):
    def __init__(self, recorder: ClassificationRecorder, hub: WatchHub, streams: StreamLimits | None = None,
                 desk: ReviewDesk | None = None):
        self.recorder = recorder
        self.desk = desk
        self.store = recorder.store
        self.hub = hub
        self.streams = streams or StreamLimits(2000, 50)

    def RecordPrediction(self, request, context):
        try:
            [outcome] = self.recorder.record_predictions([request], wait_for_other_publishers=False)
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
            context.abort(grpc.StatusCode.NOT_FOUND, f"no classification for listing {request.listing_id!r}")
        return found

    @staticmethod
    def _page(request, context, read) -> tuple[list, int]:
        """A page newest first by sequence: read(limit) gets one more than the page, to know whether one follows;
        returns the page and the next before_sequence (0 when none)."""
        if request.page_size < 0 or request.before_sequence < 0:
            abort_with(context, ClassificationError(ErrorKind.INVALID_REQUEST, "page_size and before_sequence must "
                                                    "not be negative"))
        page_size = min(request.page_size or 50, MAX_PAGE_SIZE)
        try:
            found = read(page_size + 1)
        except ClassificationError as error:
            abort_with(context, error)
        more = len(found) > page_size
        found = found[:page_size]
        return found, found[-1].sequence if more and found else 0

    def ListClassifications(self, request, context):
        if request.error_kind not in common_pb2.ErrorKind.values():  # a newer client's kind: say so, not "none"
            abort_with(context, ClassificationError(ErrorKind.INVALID_REQUEST,
                                                    f"error_kind {request.error_kind} is not a kind this service knows"))
        found, next_before = self._page(request, context, lambda limit: self.store.recent(
            request.marketplace, limit, request.before_sequence, request.failed_only, request.error_kind))
        return results_pb2.ListClassificationsResponse(classifications=found, next_before_sequence=next_before)

    async def WatchClassifications(self, request, context):
        """Rows as they are stored (asyncio: an open stream holds no thread), fed by the replica's one WatchHub."""
        try:
            check_text("marketplace", request.marketplace, 100)
            if request.after_sequence < 0:
                raise ClassificationError(ErrorKind.INVALID_REQUEST, "after_sequence must not be negative")
            with self.streams.held(caller_of(context)):
                stream = await self.hub.open(request.marketplace, request.after_sequence)
                try:
                    await context.send_initial_metadata(())  # the caller knows the stream is open
                    async for classification in stream:
                        yield classification
                finally:
                    stream.close()
        except ClassificationError as error:
            context.set_trailing_metadata(((ERROR_KIND_METADATA_KEY, error.kind.name),))
            await context.abort(error.kind.grpc_status, error.reason)

    # -- the operators' side (the console)

    def _desk(self, context) -> ReviewDesk:
        if self.desk is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this replica serves no operators' API")
        return self.desk

    def RecordCorrection(self, request, context):
        try:
            return self._desk(context).record_correction(request)
        except ClassificationError as error:
            abort_with(context, error)

    def ListCorrections(self, request, context):
        def read(limit: int) -> list:
            check_text("marketplace", request.marketplace, 100)
            check_text("listing_id", request.listing_id, MAX_ID_LENGTH)
            return self._desk(context).operators.corrections(request.marketplace, request.listing_id, limit,
                                                             request.before_sequence)
        found, next_before = self._page(request, context, read)
        return results_pb2.ListCorrectionsResponse(corrections=found, next_before_sequence=next_before)

    def ListReviewQueue(self, request, context):
        if request.page_size < 0 or request.offset < 0:
            abort_with(context, ClassificationError(ErrorKind.INVALID_REQUEST, "page_size and offset must not be "
                                                    "negative"))
        try:
            check_text("marketplace", request.marketplace, 100)
            check_text("category_id", request.category_id, 200)
            check_text("listing_id", request.listing_id, MAX_ID_LENGTH)
            found, total = self._desk(context).operators.review_queue(
                request.marketplace, short_category_id(request.category_id) if request.category_id else "",
                min(request.page_size or 20, MAX_PAGE_SIZE), request.offset, request.listing_id)
        except ClassificationError as error:
            abort_with(context, error)
        return results_pb2.ListReviewQueueResponse(classifications=found, total=total)

    def SearchCategories(self, request, context):
        try:
            return results_pb2.SearchCategoriesResponse(categories=self._desk(context).search_categories(request))
        except ClassificationError as error:
            abort_with(context, error)

    def GetThumbnail(self, request, context):
        if not IMAGE_DIGEST.fullmatch(request.image_digest):
            abort_with(context, ClassificationError(ErrorKind.INVALID_REQUEST, "image_digest must be 64 lowercase "
                                                    "hex digits (SHA-256)"))
        try:
            jpeg = self._desk(context).operators.thumbnail(request.image_digest)
        except ClassificationError as error:
            abort_with(context, error)
        if jpeg is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no thumbnail kept for this image")
        return results_pb2.Thumbnail(image_digest=request.image_digest, jpeg=jpeg)

    def GetStatistics(self, request, context):
        try:
            check_text("locale", request.locale, 35)
            return self._desk(context).statistics(request)
        except ClassificationError as error:
            abort_with(context, error)

    def ListMarketplaces(self, request, context):
        try:
            return results_pb2.ListMarketplacesResponse(marketplaces=self._desk(context).marketplaces(request.locale))
        except ClassificationError as error:
            abort_with(context, error)
