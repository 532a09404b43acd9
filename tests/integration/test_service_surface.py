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


@pytest.mark.parametrize("service", ["results", "preprocessing"])
def test_internal_services_refuse_callers_without_their_key(stack, service):
    """Anyone who reaches an internal port could otherwise store and publish a category of their choosing."""
    from services.common.contracts.product_classification.v1 import (events_pb2, preprocessing_pb2,
                                                                     preprocessing_pb2_grpc, results_pb2_grpc)
    from services.localstack.stack import authenticated_channel

    def call(channel):
        if service == "results":
            return results_pb2_grpc.ClassificationResultsStub(channel).RecordPrediction(
                events_pb2.PredictionMade(), timeout=5)
        return preprocessing_pb2_grpc.ImagePredictorStub(channel).PredictListing(
            preprocessing_pb2.PredictListingRequest(), timeout=5)

    address = stack.services[service].address
    for channel in (grpc.insecure_channel(address), authenticated_channel(address, "not-the-key-not-the-key"),
                    authenticated_channel(address, stack.gateway_api_key)):  # the public gateway key is no key here
        with channel, pytest.raises(grpc.RpcError) as raised:
            call(channel)
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with stack.internal_channel(service, "gateway") as channel, pytest.raises(grpc.RpcError) as raised:
        call(channel)  # the gateway's own key gets through to validation
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_record_prediction_is_the_gateways_alone(stack):
    from services.common.contracts.product_classification.v1 import events_pb2, results_pb2, results_pb2_grpc

    with stack.internal_channel("results", "localstack") as channel:
        stub = results_pb2_grpc.ClassificationResultsStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.RecordPrediction(events_pb2.PredictionMade(), timeout=5)
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as raised:  # reading stays open to the caller
            stub.GetClassification(results_pb2.GetClassificationRequest(listing_id="never-seen"), timeout=5)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_record_correction_is_the_consoles_alone(stack):
    """Only the console (which authenticates operators) may store and publish an operator's verdict."""
    from services.common.contracts.product_classification.v1 import results_pb2, results_pb2_grpc

    request = results_pb2.RecordCorrectionRequest(correction_id="not-the-console-1", listing_id="x",
                                                  classification_sequence=1, category_id="aa-1", operator="mallory")
    for caller in ("localstack", "gateway"):
        with stack.internal_channel("results", caller) as channel:
            with pytest.raises(grpc.RpcError) as raised:
                results_pb2_grpc.ClassificationResultsStub(channel).RecordCorrection(request, timeout=5)
            assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with stack.internal_channel("results", "console") as channel:  # the console gets past the door (and is judged)
        with pytest.raises(grpc.RpcError) as raised:
            results_pb2_grpc.ClassificationResultsStub(channel).RecordCorrection(request, timeout=5)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "is not one of listing" in \
            raised.value.details()


def test_two_credentials_on_one_call_are_refused(stack):
    from services.common.contracts.product_classification.v1 import gateway_pb2, gateway_pb2_grpc

    with grpc.insecure_channel(stack.services["gateway"].address) as channel:
        stub = gateway_pb2_grpc.ListingClassifierStub(channel)
        for metadata in ((("authorization", "Bearer wrong-wrong-wrong-wrong"),
                          ("authorization", f"Bearer {stack.gateway_api_key}")),
                         (("x-api-key", "wrong-wrong-wrong-wrong"), ("authorization", f"Bearer {stack.gateway_api_key}"))):
            with pytest.raises(grpc.RpcError) as raised:
                stub.SubmitListing(gateway_pb2.SubmitListingRequest(), timeout=5, metadata=metadata)
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED and "exactly one" in raised.value.details()


def test_api_keys_never_appear_in_the_logs(stack):
    """After authenticated, refused and wrong-key calls (the tests above), no service has logged a key."""
    from services.common.contracts.product_classification.v1 import gateway_pb2, gateway_pb2_grpc
    from services.localstack.stack import authenticated_channel

    with authenticated_channel(stack.services["gateway"].address, stack.gateway_api_key + "x") as channel:
        with pytest.raises(grpc.RpcError):
            gateway_pb2_grpc.ListingClassifierStub(channel).SubmitListing(gateway_pb2.SubmitListingRequest(),
                                                                          timeout=5)
    keys = [stack.gateway_api_key, *(k for callers in stack.internal_keys.values() for k in callers.values())]
    logs = {path.name: path.read_text(errors="replace") for path in stack.options.work_dir.glob("*.log")}
    assert {"gateway.log", "results.log", "preprocessing.log"} <= set(logs)
    assert "rejected a call with an unknown API key" in logs["gateway.log"]  # the refusal is logged, the key is not
    for name, text in logs.items():
        for key in keys:
            assert key[:12] not in text, f"a key appears in {name}"
