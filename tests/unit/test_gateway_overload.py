"""The gateway refuses work past its in-flight limit instead of queueing it, and passes deadlines on."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest

from services.common.contracts.product_classification.v1 import (
    common_pb2,
    events_pb2,
    preprocessing_pb2_grpc,
    results_pb2_grpc,
)
from services.common.errors import ClassificationError, ErrorKind
from services.gateway.core import ListingGateway


class SlowPredictor(preprocessing_pb2_grpc.ImagePredictorServicer):
    """A stand-in for preprocessing (a unit-test seam): answers after a pause, or when released."""

    def __init__(self):
        self.release = threading.Event()
        self.deadlines: list[float | None] = []

    def PredictListing(self, request, context):
        self.deadlines.append(context.time_remaining())
        self.release.wait(10)
        return events_pb2.PredictionMade(listing_id=request.listing.listing_id)


class EchoResults(results_pb2_grpc.ClassificationResultsServicer):
    def __init__(self):
        self.deadlines: list[float | None] = []

    def RecordPrediction(self, request, context):
        self.deadlines.append(context.time_remaining())
        return common_pb2.Classification(listing_id=request.listing_id)


@pytest.fixture
def gateway():
    predictor = SlowPredictor()
    predictor.results = EchoResults()
    server = grpc.server(futures.ThreadPoolExecutor(8))
    preprocessing_pb2_grpc.add_ImagePredictorServicer_to_server(predictor, server)
    results_pb2_grpc.add_ClassificationResultsServicer_to_server(predictor.results, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield ListingGateway(channel, channel, lambda event: None, default_timeout_s=5, max_in_flight=2,
                         max_image_bytes=1000), predictor
    predictor.release.set()
    channel.close()
    server.stop(0)


def listing(index: int) -> common_pb2.Listing:
    return common_pb2.Listing(listing_id=f"l-{index}", marketplace="de-modehaus", image_bytes=b"x")


def test_past_the_in_flight_limit_calls_are_refused_not_queued(gateway):
    core, predictor = gateway
    with futures.ThreadPoolExecutor(2) as pool:
        held = [pool.submit(core.classify, listing(i), None) for i in range(2)]
        deadline = time.monotonic() + 5
        while len(predictor.deadlines) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(ClassificationError) as raised:
            core.classify(listing(3), None)
        assert raised.value.kind is ErrorKind.OVERLOADED
        assert raised.value.kind.grpc_status == grpc.StatusCode.RESOURCE_EXHAUSTED
        predictor.release.set()
        assert [f.result(5).listing_id for f in held] == ["l-0", "l-1"]
    assert core.classify(listing(4), None).listing_id == "l-4"  # capacity is back


def test_the_callers_deadline_is_passed_on(gateway):
    core, predictor = gateway
    predictor.release.set()
    core.classify(listing(1), time_remaining_s=4.0)  # below the 5 s default: the caller's deadline must win
    # (gRPC carries a deadline with some milliseconds of rounding; the 5 s default would show as about 5)
    assert predictor.deadlines[-1] is not None and predictor.deadlines[-1] <= 4.1
    # and what is left of it reaches the result service's call after the prediction
    assert predictor.results.deadlines[-1] is not None and predictor.results.deadlines[-1] <= 4.1


def test_past_the_servers_capacity_a_call_is_refused_in_milliseconds_not_queued():
    """More concurrent calls than worker threads: the excess gets RESOURCE_EXHAUSTED at once."""
    from services.common.grpc_server import GrpcServer

    predictor = SlowPredictor()
    server = GrpcServer("127.0.0.1:0", [(preprocessing_pb2_grpc.add_ImagePredictorServicer_to_server, predictor,
                                         "product_classification.v1.ImagePredictor")], max_workers=2)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel, futures.ThreadPoolExecutor(2) as pool:
            stub = preprocessing_pb2_grpc.ImagePredictorStub(channel)
            from services.common.contracts.product_classification.v1 import preprocessing_pb2

            held = [pool.submit(stub.PredictListing, preprocessing_pb2.PredictListingRequest(listing=listing(i)),
                                timeout=30) for i in range(2)]
            deadline = time.monotonic() + 15
            while len(predictor.deadlines) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(predictor.deadlines) == 2
            began = time.monotonic()
            with pytest.raises(grpc.RpcError) as raised:
                stub.PredictListing(preprocessing_pb2.PredictListingRequest(listing=listing(9)), timeout=20)
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # refused, not left to wait for its 20 s deadline (milliseconds on an idle machine; the bound leaves room
            # for a busy one)
            assert time.monotonic() - began < 3
            predictor.release.set()
            assert all(f.result(5).listing_id for f in held)
    finally:
        server.stop(1)


def test_the_in_flight_bound_must_fit_the_worker_threads():
    from services.gateway.settings import GatewaySettings

    with pytest.raises(ValueError, match="must be below GATEWAY_GRPC_WORKERS"):
        GatewaySettings(preprocessing_address="p:1", results_address="r:1", auth_mode="none", max_in_flight=32,
                        grpc_workers=32)
