"""Random and mutated protobuf payloads at every gRPC method and at the input topic: the services answer with
errors and stay up."""

from __future__ import annotations

import uuid

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
from services.drivers.traffic import TopicReader, produce_raw, sample_listings, submit_and_collect

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
# Answers a well-behaved service may give to garbage: a definite client error (or success, when the mutation left
# the message valid). INTERNAL, UNKNOWN or a deadline running out would mean it leaked a bug or hung.
ACCEPTABLE = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
              grpc.StatusCode.RESOURCE_EXHAUSTED}


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
    garbage = {f"fuzz-{index}-{uuid.uuid4().hex[:6]}" for index in range(1, 31)}
    for index, key in enumerate(sorted(garbage), start=1):
        produce_raw(kafka, kafka.topics.listing_submitted, key.encode(), bytes([index]) * index)
    # every piece of garbage is dead-lettered, and after it the consumers still consume
    reader = TopicReader(kafka, kafka.topics.processing_failed)
    try:
        records = reader.read(lambda rs: garbage <= {r.key.decode() for r in rs if r.key}, 60)
    finally:
        reader.close()
    assert garbage <= {r.key.decode() for r in records if r.key}
    after = sample_listings(2, seed=131, prefix="after-fuzz")
    assert len(submit_and_collect(kafka, [s.listing for s in after], 60)) == 2
    for name in ("gateway", "preprocessing", "results"):
        with grpc.insecure_channel(stack.services[name].address) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING, name
        assert stack.services[name].process.running(), name
