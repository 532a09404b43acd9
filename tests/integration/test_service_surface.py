"""Every service speaks grpc.health.v1 and server reflection."""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

EXPECTED_SERVICE = {
    "gateway": "product_classification.v1.ListingClassifier",
    "preprocessing": "product_classification.v1.ImagePredictor",
    "results": "product_classification.v1.ClassificationResults",
}


@pytest.mark.parametrize("name", sorted(EXPECTED_SERVICE))
def test_health_and_reflection(stack, name):
    with grpc.insecure_channel(stack.services[name].address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", EXPECTED_SERVICE[name]):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = {s.name for r in responses for s in r.list_services_response.service}
        assert {EXPECTED_SERVICE[name], "grpc.health.v1.Health"} <= names


def test_gateway_rejects_unauthenticated_and_wrong_key_calls(stack):
    from services.common.contracts.product_classification.v1 import gateway_pb2, gateway_pb2_grpc
    from services.localstack.stack import authenticated_channel

    request = gateway_pb2.SubmitListingRequest()
    with grpc.insecure_channel(stack.services["gateway"].address) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            gateway_pb2_grpc.ListingClassifierStub(channel).SubmitListing(request, timeout=5)
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        stream = gateway_pb2_grpc.ListingClassifierStub(channel).ClassifyListingStream(iter([]), timeout=5)
        with pytest.raises(grpc.RpcError) as raised:
            list(stream)
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with authenticated_channel(stack.services["gateway"].address, "not-the-key-not-the-key") as channel:
        with pytest.raises(grpc.RpcError) as raised:
            gateway_pb2_grpc.ListingClassifierStub(channel).SubmitListing(request, timeout=5)
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with stack.gateway_channel() as channel:  # the right key gets through to validation
        with pytest.raises(grpc.RpcError) as raised:
            gateway_pb2_grpc.ListingClassifierStub(channel).SubmitListing(request, timeout=5)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
