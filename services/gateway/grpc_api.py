"""gRPC edge of the gateway: the ListingClassifier API. Translates and delegates to ListingGateway."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from services.common.byte_budget import ByteBudget
from services.common.contracts.product_classification.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from services.common.errors import ClassificationError, ErrorKind, abort_with
from services.gateway.core import ListingGateway

MB = 1024 * 1024
# A listing's photo is in memory several times while it is handled: the listing parsed from the call's message, the
# request built for preprocessing, and that request serialised as it is sent (the call's own message is gRPC's, and
# gone once parsed).
PHOTO_COPIES = 3
# What a listing holds besides its photo's bytes (ids, locale, URL, the message's own structure), at most.
LISTING_OVERHEAD_BYTES = 16 * 1024


def listing_bytes(listing: common_pb2.Listing) -> int:
    """What a listing holds in memory while it is handled: its photo's bytes (the URL's, for a photo fetched later),
    as many times as the gateway copies them, and the rest."""
    return PHOTO_COPIES * (len(listing.image_bytes) + len(listing.image_url)) + LISTING_OVERHEAD_BYTES


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
    listing has arrived for that long (a stream opened and left silent would hold its worker for ever);
    max_pending_bytes: the listings every call holds at once, from when they are read until their outcome is known.
    A stream's listings wait for room (it stops reading, and HTTP/2's flow control stops its sender); a unary call
    that finds none is refused at once as OVERLOADED. Before, one stream held up to max_listings_per_call listings
    of 20 MB each (2 GB), six streams 12 GB, in a gateway whose pods may take 512 MiB."""

    def __init__(self, gateway: ListingGateway, max_listings_per_call: int, fan_out: int = 8, max_streams: int = 6,
                 stream_idle_s: float = 60.0, max_pending_bytes: int = 256 * MB):
        self.gateway = gateway
        self.pending = ByteBudget(max_pending_bytes)
        self.max_listings_per_call = max_listings_per_call
        self.max_streams = max_streams
        self.stream_idle_s = stream_idle_s
        self._streams = threading.BoundedSemaphore(max_streams)
        self._pool = ThreadPoolExecutor(max_workers=fan_out, thread_name_prefix="classify-many")

    @contextlib.contextmanager
    def _holding(self, share: int):
        """Holds the share of max_pending_bytes for the block, or raises OVERLOADED when there is no room now."""
        if not self.pending.try_take(share):
            raise ClassificationError(ErrorKind.OVERLOADED, f"the gateway holds {self.pending.held / MB:.0f} MB of "
                                      f"listings in progress, with room for {self.pending.total / MB:.0f} MB: retry "
                                      "with backoff")
        try:
            yield
        finally:
            self.pending.give_back(share)

    def ClassifyListing(self, request, context):
        try:
            with self._holding(listing_bytes(request.listing)):
                return self.gateway.classify(request.listing, context.time_remaining())
        except ClassificationError as error:
            abort_with(context, error)

    def ClassifyListings(self, request, context):
        if len(request.listings) > self.max_listings_per_call:
            abort_with(context, ClassificationError(ErrorKind.INVALID_REQUEST, f"{len(request.listings)} listings, at "
                                                    f"most {self.max_listings_per_call} per call"))
        remaining = context.time_remaining()
        try:
            with self._holding(sum(listing_bytes(listing) for listing in request.listings)):
                outcomes = list(self._pool.map(lambda listing: _outcome(self.gateway, listing, remaining),
                                               request.listings))
        except ClassificationError as error:
            abort_with(context, error)
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

        def classify_one(listing, share):
            try:
                ready.put(_outcome(self.gateway, listing, context.time_remaining()))
            finally:
                self.pending.give_back(share)
                window.release()

        def read_requests():
            try:
                for request in request_iterator:
                    reading["at"] = time.monotonic()
                    window.acquire()  # back-pressure: at most max_listings_per_call pending per stream
                    share = listing_bytes(request.listing)
                    while not self.pending.take(share, time.monotonic() + 0.5):  # and what all calls hold
                        if not context.is_active():
                            window.release()
                            raise ConnectionError("the call ended")
                    self._pool.submit(classify_one, request.listing, share)
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
            with self._holding(listing_bytes(request.listing)):
                event = self.gateway.submit(request.listing)
        except ClassificationError as error:
            abort_with(context, error)
        return gateway_pb2.SubmitListingResponse(submission_id=event.submission_id, listing_id=event.listing.listing_id)
