"""gRPC edge of the gateway: the ListingClassifier API. Translates and delegates to ListingGateway."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor

from services.common.contracts.product_classification.v1 import gateway_pb2, gateway_pb2_grpc
from services.common.errors import ClassificationError, ErrorKind, abort_with
from services.gateway.core import ListingGateway


def _outcome(gateway: ListingGateway, listing, time_remaining_s) -> gateway_pb2.ClassificationOutcome:
    try:
        return gateway_pb2.ClassificationOutcome(listing_id=listing.listing_id,
                                                 classification=gateway.classify(listing, time_remaining_s))
    except ClassificationError as error:
        return gateway_pb2.ClassificationOutcome(
            listing_id=listing.listing_id, error=gateway_pb2.ClassificationError(kind=error.kind.proto,
                                                                                 reason=error.reason))


class ListingClassifierServicer(gateway_pb2_grpc.ListingClassifierServicer):
    def __init__(self, gateway: ListingGateway, max_listings_per_call: int, fan_out: int = 8):
        self.gateway = gateway
        self.max_listings_per_call = max_listings_per_call
        self._pool = ThreadPoolExecutor(max_workers=fan_out, thread_name_prefix="classify-many")

    def ClassifyListing(self, request, context):
        try:
            return self.gateway.classify(request.listing, context.time_remaining())
        except ClassificationError as error:
            abort_with(context, error)

    def ClassifyListings(self, request, context):
        if len(request.listings) > self.max_listings_per_call:
            abort_with(context, ClassificationError(ErrorKind.INVALID_REQUEST, f"{len(request.listings)} listings, at "
                                                    f"most {self.max_listings_per_call} per call"))
        remaining = context.time_remaining()
        outcomes = list(self._pool.map(lambda listing: _outcome(self.gateway, listing, remaining), request.listings))
        return gateway_pb2.ClassifyListingsResponse(outcomes=outcomes)

    def ClassifyListingStream(self, request_iterator, context):
        """Reads requests in a thread, classifies them concurrently, yields each outcome when ready."""
        ready: queue.Queue = queue.Queue()
        window = threading.BoundedSemaphore(self.max_listings_per_call)
        finished_reading = object()

        def classify_one(listing):
            try:
                ready.put(_outcome(self.gateway, listing, context.time_remaining()))
            finally:
                window.release()

        def read_requests():
            count = 0
            try:
                for request in request_iterator:
                    window.acquire()  # back-pressure: at most max_listings_per_call pending per stream
                    self._pool.submit(classify_one, request.listing)
                    count += 1
            except Exception:  # noqa: BLE001  (the client went away)
                pass
            ready.put((finished_reading, count))

        threading.Thread(target=read_requests, daemon=True, name="classify-stream-reader").start()
        expected, sent = None, 0
        while context.is_active() and (expected is None or sent < expected):
            try:
                item = ready.get(timeout=0.5)
            except queue.Empty:
                continue
            if isinstance(item, tuple) and item[0] is finished_reading:
                expected = item[1]
                continue
            sent += 1
            yield item

    def SubmitListing(self, request, context):
        try:
            event = self.gateway.submit(request.listing)
        except ClassificationError as error:
            abort_with(context, error)
        return gateway_pb2.SubmitListingResponse(submission_id=event.submission_id, listing_id=event.listing.listing_id)
