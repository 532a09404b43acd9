"""The gateway's core: validate a listing, then route it (synchronously over gRPC, or onto Kafka)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.contracts.product_classification.v1 import (
    common_pb2,
    events_pb2,
    preprocessing_pb2,
    preprocessing_pb2_grpc,
    results_pb2_grpc,
)
from services.common.errors import ClassificationError, ErrorKind, from_rpc_error
from services.common.validation import check_listing

def validate_listing(listing: common_pb2.Listing, max_image_bytes: int) -> None:
    """Refuses what no downstream service could use, before any work is spent on it."""
    check_listing(listing)
    which = listing.WhichOneof("image")
    if which is None:
        raise ClassificationError(ErrorKind.INVALID_REQUEST, "the listing needs image_bytes or image_url")
    if which == "image_bytes" and len(listing.image_bytes) > max_image_bytes:
        raise ClassificationError(ErrorKind.IMAGE_TOO_LARGE, f"the image is {len(listing.image_bytes)} bytes, over the "
                                  f"limit of {max_image_bytes}")
    if which == "image_url" and not listing.image_url.lower().startswith(("http://", "https://")):
        raise ClassificationError(ErrorKind.INVALID_REQUEST, "image_url must be an http(s) URL")


class ListingGateway:
    """Synchronous classification (preprocessing, then results) and asynchronous submission (Kafka)."""

    def __init__(self, preprocessing_channel: grpc.Channel, results_channel: grpc.Channel,
                 send_submission: Callable[[events_pb2.ListingSubmitted], object], *, default_timeout_s: float,
                 max_in_flight: int, max_image_bytes: int):
        self.predictor = preprocessing_pb2_grpc.ImagePredictorStub(preprocessing_channel)
        self.results = results_pb2_grpc.ClassificationResultsStub(results_channel)
        self.send_submission = send_submission
        self.default_timeout_s = default_timeout_s
        self.max_image_bytes = max_image_bytes
        self._in_flight = threading.BoundedSemaphore(max_in_flight)

    def classify(self, listing: common_pb2.Listing, time_remaining_s: float | None) -> common_pb2.Classification:
        """Raises ClassificationError (with its kind) on bad input, overload, or a downstream failure."""
        validate_listing(listing, self.max_image_bytes)
        if not self._in_flight.acquire(blocking=False):
            raise ClassificationError(ErrorKind.OVERLOADED, "too many classifications in flight; retry with backoff")
        try:
            deadline = time.monotonic() + min(time_remaining_s or self.default_timeout_s, self.default_timeout_s)
            request = preprocessing_pb2.PredictListingRequest(submission_id=str(uuid.uuid4()), listing=listing)
            try:
                prediction = self.predictor.PredictListing(request, timeout=max(0.01, deadline - time.monotonic()))
                return self.results.RecordPrediction(prediction, timeout=max(0.01, deadline - time.monotonic()))
            except grpc.RpcError as error:
                raise from_rpc_error(error) from None
        finally:
            self._in_flight.release()

    def submit(self, listing: common_pb2.Listing, timeout_s: float = 10.0) -> events_pb2.ListingSubmitted:
        """Puts the listing on the listing-submitted topic and returns once the broker acknowledged it."""
        validate_listing(listing, self.max_image_bytes)
        submitted_at = Timestamp()
        submitted_at.GetCurrentTime()
        event = events_pb2.ListingSubmitted(submission_id=str(uuid.uuid4()), listing=listing, submitted_at=submitted_at)
        try:
            self.send_submission(event).get(timeout=timeout_s)
        except Exception as error:  # noqa: BLE001
            raise ClassificationError(ErrorKind.UNAVAILABLE, f"the submission was not accepted by Kafka: {error}") from None
        return event
