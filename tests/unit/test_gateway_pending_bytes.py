"""What the gateway's calls hold at once (max_pending_bytes) on a real gRPC server, the gateway core a seam: a
stream of large listings is read only as fast as room is made (its listings wait, none is lost), a unary call that
finds no room is refused at once with the reason, and everything held is given back."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest

from services.common.contracts.product_classification.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from services.gateway.grpc_api import MB, ListingClassifierServicer, listing_bytes

PHOTO = bytes(5 * MB)  # a large phone photo: held three times over while it is handled (listing_bytes)
OPTIONS = [("grpc.max_receive_message_length", 32 * MB), ("grpc.max_send_message_length", 32 * MB)]


class Core:
    """Answers each listing with its id once `release` is set; counts the listings it holds at once."""

    def __init__(self):
        self.release = threading.Event()
        self.release.set()
        self.delay_s = 0.0
        self.now = self.most = 0
        self._lock = threading.Lock()

    def _answer(self, listing):
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(self.delay_s)
            self.release.wait(10)
            return common_pb2.Classification(listing_id=listing.listing_id)
        finally:
            with self._lock:
                self.now -= 1

    def classify(self, listing, time_remaining_s):
        return self._answer(listing)

    def submit(self, listing):
        self._answer(listing)
        return Submitted("s-" + listing.listing_id, listing)


class Submitted:  # what ListingGateway.submit returns, as far as the servicer reads it
    def __init__(self, submission_id, listing):
        self.submission_id = submission_id
        self.listing = listing


def listing(number: int) -> common_pb2.Listing:
    return common_pb2.Listing(listing_id=f"l{number}", marketplace="de-modehaus", image_bytes=PHOTO)


ROOM_FOR_THREE = 3 * listing_bytes(listing(0)) + MB


@pytest.fixture
def served():
    core = Core()
    servicer = ListingClassifierServicer(core, max_listings_per_call=50, fan_out=8, max_streams=2,
                                         max_pending_bytes=ROOM_FOR_THREE)
    server = grpc.server(futures.ThreadPoolExecutor(16), options=OPTIONS)
    gateway_pb2_grpc.add_ListingClassifierServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS)
    yield core, servicer, gateway_pb2_grpc.ListingClassifierStub(channel)
    channel.close()
    server.stop(0)


def test_a_stream_of_large_listings_is_read_as_room_is_made_and_every_one_is_answered(served):
    """Unbounded, the stream's 20 listings were all held at once (8 classified at a time, the others queued with
    their photos); now at most three, the room there is, and the stream waits for the rest."""
    core, servicer, stub = served
    core.delay_s = 0.1
    requests = (gateway_pb2.ClassifyListingRequest(listing=listing(i)) for i in range(20))
    answered = [outcome.listing_id for outcome in stub.ClassifyListingStream(requests, timeout=60)]
    assert sorted(answered) == sorted(f"l{i}" for i in range(20))
    assert core.most == 3, core.most
    assert servicer.pending.held == 0


def test_a_unary_call_finding_no_room_is_refused_at_once_and_passes_once_room_is_made(served):
    core, servicer, stub = served
    core.release.clear()
    held = [stub.ClassifyListing.future(gateway_pb2.ClassifyListingRequest(listing=listing(i)), timeout=30)
            for i in range(3)]
    deadline = time.monotonic() + 10
    while core.now < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert core.now == 3
    for call in (lambda: stub.ClassifyListing(gateway_pb2.ClassifyListingRequest(listing=listing(3)), timeout=5),
                 lambda: stub.SubmitListing(gateway_pb2.SubmitListingRequest(listing=listing(4)), timeout=5),
                 lambda: stub.ClassifyListings(gateway_pb2.ClassifyListingsRequest(listings=[listing(5)]), timeout=5)):
        began = time.monotonic()
        with pytest.raises(grpc.RpcError) as refused:
            call()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "retry with backoff" in refused.value.details()
        assert time.monotonic() - began < 2  # at once, not after waiting
    core.release.set()
    assert [call.result().listing_id for call in held] == ["l0", "l1", "l2"]
    assert stub.ClassifyListing(gateway_pb2.ClassifyListingRequest(listing=listing(3)), timeout=5).listing_id == "l3"
    assert servicer.pending.held == 0


def test_small_listings_are_not_held_back(served):
    """A photo of a few hundred KB takes a small share: the 8 classifying threads are what bounds them."""
    core, servicer, stub = served
    core.delay_s = 0.2
    small = [common_pb2.Listing(listing_id=f"s{i}", marketplace="de-modehaus", image_bytes=bytes(300_000))
             for i in range(16)]
    outcomes = stub.ClassifyListings(gateway_pb2.ClassifyListingsRequest(listings=small), timeout=30).outcomes
    assert [o.classification.listing_id for o in outcomes] == [f"s{i}" for i in range(16)]
    assert core.most == 8
