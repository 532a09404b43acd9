"""gRPC edge of preprocessing: the gateway's synchronous path. Translates and delegates to ListingPredictor."""

from __future__ import annotations

import time

from google.protobuf.timestamp_pb2 import Timestamp

from services.common.contracts.product_classification.v1 import preprocessing_pb2_grpc
from services.common.errors import ClassificationError, abort_with
from services.preprocessing.core import ListingPredictor, ListingRequest


class ImagePredictorServicer(preprocessing_pb2_grpc.ImagePredictorServicer):
    def __init__(self, predictor: ListingPredictor):
        self.predictor = predictor

    def PredictListing(self, request, context):
        submitted_at = Timestamp()
        submitted_at.GetCurrentTime()
        try:
            remaining = context.time_remaining()  # None without a client deadline
            deadline = time.monotonic() + remaining if remaining is not None else None
            [outcome] = self.predictor.predict([ListingRequest(request.submission_id, request.listing, submitted_at)],
                                               deadline)
        except ClassificationError as error:
            abort_with(context, error)
        if isinstance(outcome, ClassificationError):
            abort_with(context, outcome)
        return outcome
