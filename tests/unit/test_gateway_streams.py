"""ClassifyListingStream's bounds on a real gRPC server: streams open at once are capped (one more is refused at once
and unary calls still find workers), a silent stream is closed after its idle time, a stream with a listing pending
is not, and a closed stream gives its place back. The gateway core is a seam here (a unit test)."""

from __future__ import annotations

import queue
import time
from concurrent import futures

import grpc
import pytest

from services.common.contracts.product_classification.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from services.gateway.grpc_api import ListingClassifierServicer


class Core:
    """Answers each listing with its id, after `delay_s`."""

    def __init__(self):
        self.delay_s = 0.0

    def classify(self, listing, time_remaining_s):
        time.sleep(self.delay_s)
        return common_pb2.Classification(listing_id=listing.listing_id)


class Requests:
    """A client-side request stream that sends what is put, and ends on close()."""

    def __init__(self):
        self._queue: queue.Queue = queue.Queue()

    def send(self, listing_id: str) -> None:
        self._queue.put(gateway_pb2.ClassifyListingRequest(
            listing=common_pb2.Listing(listing_id=listing_id, marketplace="de-modehaus", image_bytes=b"x")))

    def close(self) -> None:
        self._queue.put(None)

    def __iter__(self):
        while (item := self._queue.get()) is not None:
            yield item


@pytest.fixture
def served():
    core = Core()
    server = grpc.server(futures.ThreadPoolExecutor(8))
    gateway_pb2_grpc.add_ListingClassifierServicer_to_server(
        ListingClassifierServicer(core, max_listings_per_call=10, max_streams=2, stream_idle_s=0.6), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield core, gateway_pb2_grpc.ListingClassifierStub(channel)
    channel.close()
    server.stop(0)


def test_streams_past_the_cap_are_refused_at_once_and_unary_calls_still_run(served):
    _, stub = served
    held = [Requests(), Requests()]
    calls = [stub.ClassifyListingStream(iter(r), timeout=20) for r in held]
    for index, (requests, call) in enumerate(zip(held, calls)):  # both open and answering
        requests.send(f"held-{index}")
        assert next(call).listing_id == f"held-{index}"
    began = time.monotonic()
    extra = Requests()
    with pytest.raises(grpc.RpcError) as raised:
        next(stub.ClassifyListingStream(iter(extra), timeout=20))
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "2 streams are open" in raised.value.details()
    assert time.monotonic() - began < 3  # refused, not left to its deadline
    answer = stub.ClassifyListing(gateway_pb2.ClassifyListingRequest(
        listing=common_pb2.Listing(listing_id="unary", marketplace="de-modehaus", image_bytes=b"x")), timeout=5)
    assert answer.listing_id == "unary"
    for requests in held:
        requests.close()
    assert [list(call) for call in calls] == [[], []]  # ended by the client: nothing lost, status OK
    again = Requests()
    again.send("after")
    again.close()
    assert [o.listing_id for o in stub.ClassifyListingStream(iter(again), timeout=5)] == ["after"]  # places given back


def test_a_silent_stream_is_closed_after_its_idle_time_but_not_while_a_listing_is_pending(served):
    core, stub = served
    requests = Requests()
    call = stub.ClassifyListingStream(iter(requests), timeout=20)
    requests.send("first")
    assert next(call).listing_id == "first"
    began = time.monotonic()
    with pytest.raises(grpc.RpcError) as raised:
        next(call)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE and "no listing arrived" in raised.value.details()
    assert 0.5 < time.monotonic() - began < 5
    requests.close()

    core.delay_s = 1.5  # longer than the idle time: the stream waits for the answer
    slow = Requests()
    slow_call = stub.ClassifyListingStream(iter(slow), timeout=20)
    slow.send("slow")
    assert next(slow_call).listing_id == "slow"
    slow.close()
    assert list(slow_call) == []
    # both streams ended, so both places are free again
    core.delay_s = 0.0
    pair = [Requests(), Requests()]
    pair_calls = [stub.ClassifyListingStream(iter(r), timeout=5) for r in pair]
    for index, (requests, call) in enumerate(zip(pair, pair_calls)):
        requests.send(f"pair-{index}")
        assert next(call).listing_id == f"pair-{index}"
        requests.close()
        assert list(call) == []


def test_streams_and_in_flight_calls_together_must_leave_a_worker_for_refusals():
    from services.gateway.settings import GatewaySettings

    base = {"preprocessing_address": "p:1", "results_address": "r:1", "auth_mode": "none", "grpc_workers": 32}
    assert GatewaySettings(**base, max_in_flight=24, max_streams=6).max_streams == 6
    with pytest.raises(ValueError, match="GATEWAY_MAX_STREAMS"):
        GatewaySettings(**base, max_in_flight=24, max_streams=8)
    with pytest.raises(ValueError, match="at least 1"):
        GatewaySettings(**base, max_in_flight=24, max_streams=0)
