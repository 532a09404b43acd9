"""gRPC edge of preprocessing: the gateway's synchronous path. Translates and delegates to ListingPredictor."""

from __future__ import annotations

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
            [outcome] = self.predictor.predict([ListingRequest(request.submission_id, request.listing, submitted_at)])
        except ClassificationError as error:
            abort_with(context, error)
        if isinstance(outcome, ClassificationError):
            abort_with(context, outcome)
        return outcome
