"""gRPC edge of the gateway: the ListingClassifier API. Translates and delegates to ListingGateway."""

from __future__ import annotations

import queue
import threading
import time
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
    """max_streams: ClassifyListingStream calls open at once (each holds a gRPC worker for as long as it is open), so
    streams never take the workers unary calls need; stream_idle_s: a stream with nothing pending is closed when no
    listing has arrived for that long (a stream opened and left silent would hold its worker for ever)."""

    def __init__(self, gateway: ListingGateway, max_listings_per_call: int, fan_out: int = 8, max_streams: int = 6,
                 stream_idle_s: float = 60.0):
        self.gateway = gateway
        self.max_listings_per_call = max_listings_per_call
        self.max_streams = max_streams
        self.stream_idle_s = stream_idle_s
        self._streams = threading.BoundedSemaphore(max_streams)
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
        if not self._streams.acquire(blocking=False):
            abort_with(context, ClassificationError(ErrorKind.OVERLOADED, f"{self.max_streams} streams are open, the "
                                                    "most this gateway serves at once: retry later, or send "
                                                    "ClassifyListings"))
        try:
            yield from self._stream(request_iterator, context)
        finally:
            self._streams.release()

    def _stream(self, request_iterator, context):
        """Reads requests in a thread, classifies them concurrently, yields each outcome when ready; ends the call
        when the stream has had nothing pending and no new listing for stream_idle_s."""
        ready: queue.Queue = queue.Queue()
        window = threading.BoundedSemaphore(self.max_listings_per_call)
        finished_reading = object()
        reading = {"count": 0, "at": time.monotonic()}  # listings read, and when the last one (or the call) came

        def classify_one(listing):
            try:
                ready.put(_outcome(self.gateway, listing, context.time_remaining()))
            finally:
                window.release()

        def read_requests():
            try:
                for request in request_iterator:
                    reading["at"] = time.monotonic()
                    window.acquire()  # back-pressure: at most max_listings_per_call pending per stream
                    self._pool.submit(classify_one, request.listing)
                    reading["count"] += 1
            except Exception:  # noqa: BLE001  (the client went away, or the call ended)
                pass
            ready.put((finished_reading, reading["count"]))

        threading.Thread(target=read_requests, daemon=True, name="classify-stream-reader").start()
        expected, sent = None, 0
        while context.is_active() and (expected is None or sent < expected):
            try:
                item = ready.get(timeout=min(0.5, self.stream_idle_s))
            except queue.Empty:
                idle = time.monotonic() - reading["at"]
                if expected is None and sent == reading["count"] and idle > self.stream_idle_s:
                    abort_with(context, ClassificationError(
                        ErrorKind.UNAVAILABLE, f"no listing arrived on this stream for {self.stream_idle_s:g} s and "
                        "none is pending: the stream is closed; open a new one to send more"))
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
