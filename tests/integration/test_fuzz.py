"""Random and mutated protobuf payloads at every gRPC method and at the input topic: the services answer with
errors and stay up."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.contracts.product_classification.v1 import (
    events_pb2,
    gateway_pb2,
    preprocessing_pb2,
    results_pb2,
)
from services.localstack.traffic import produce_raw, sample_listings

VALID = {
    "/product_classification.v1.ListingClassifier/ClassifyListing":
        gateway_pb2.ClassifyListingRequest(listing=sample_listings(1, seed=89)[0].listing),
    "/product_classification.v1.ListingClassifier/SubmitListing":
        gateway_pb2.SubmitListingRequest(listing=sample_listings(1, seed=97)[0].listing),
    "/product_classification.v1.ImagePredictor/PredictListing":
        preprocessing_pb2.PredictListingRequest(listing=sample_listings(1, seed=101)[0].listing),
    "/product_classification.v1.ClassificationResults/RecordPrediction": events_pb2.PredictionMade(
        listing_id="fuzz", marketplace="de-modehaus"),
    "/product_classification.v1.ClassificationResults/GetClassification":
        results_pb2.GetClassificationRequest(listing_id="fuzz"),
    "/product_classification.v1.ClassificationResults/ListClassifications":
        results_pb2.ListClassificationsRequest(page_size=3),
}
SERVICE_OF = {"ListingClassifier": "gateway", "ImagePredictor": "preprocessing", "ClassificationResults": "results"}
# Answers a well-behaved service may give to garbage; UNAVAILABLE or UNKNOWN would mean it fell over or leaked a bug.
ACCEPTABLE = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
              grpc.StatusCode.INTERNAL, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAUTHENTICATED,
              grpc.StatusCode.DEADLINE_EXCEEDED}


def mutate(data: bytes, position: int, patch: bytes) -> bytes:
    if not data:
        return patch
    position %= len(data)
    return data[:position] + patch + data[position + len(patch):]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(sorted(VALID)), random=st.binary(max_size=512), position=st.integers(0, 10_000),
       patch=st.binary(min_size=1, max_size=16), use_random=st.booleans())
def test_garbage_at_every_method_gets_an_error_not_a_crash(stack, method, random, position, patch, use_random):
    payload = random if use_random else mutate(VALID[method].SerializeToString(), position, patch)
    service = SERVICE_OF[method.split("/")[1].split(".")[-1]]
    channel = stack.gateway_channel() if service == "gateway" else stack.internal_channel(service, "gateway")
    with channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            call(payload, timeout=20)
        except grpc.RpcError as error:
            assert error.code() in ACCEPTABLE, (method, error.code(), error.details())


def test_services_are_still_up_after_the_fuzzing(stack, kafka):
    for index in range(30):
        produce_raw(kafka, kafka.topics.listing_submitted, f"fuzz-{index}".encode(), bytes([index]) * index)
    for name in ("gateway", "preprocessing", "results"):
        with grpc.insecure_channel(stack.services[name].address) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING, name
        assert stack.services[name].process.running(), name
