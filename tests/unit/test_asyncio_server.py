"""The asyncio gRPC server the result service runs on: streams hold no thread, blocking calls are bounded and refused
at once past the bound, and authentication and the malformed-request guard apply to asyncio streams too."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.contracts.product_classification.v1 import common_pb2, results_pb2, results_pb2_grpc
from services.common.grpc_security import ApiKeyInterceptor
from services.common.grpc_server import AsyncioGrpcServer

KEY = "a-key-of-sixteen-or-more"


class Results(results_pb2_grpc.ClassificationResultsServicer):
    def __init__(self):
        self.release = threading.Event()

    def GetClassification(self, request, context):  # blocking: runs in the pool
        if request.listing_id == "slow":
            self.release.wait(10)
        return common_pb2.Classification(listing_id=request.listing_id)

    async def WatchClassifications(self, request, context):  # asyncio: holds no thread while it waits
        await context.send_initial_metadata(())
        for sequence in range(1, 3):
            yield common_pb2.Classification(listing_id="watched", sequence=sequence)
        await asyncio.sleep(3600)


@pytest.fixture
def server():
    servicer = Results()
    server = AsyncioGrpcServer("127.0.0.1:0", [(results_pb2_grpc.add_ClassificationResultsServicer_to_server,
                                                servicer, "product_classification.v1.ClassificationResults")],
                               max_workers=2, max_streams=300, interceptors=[ApiKeyInterceptor({KEY: "tests"})])
    server.set_serving(True)
    server.start()
    yield server, servicer
    servicer.release.set()
    server.stop(1)


def stub(server, key: str | None = KEY):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    return channel, results_pb2_grpc.ClassificationResultsStub(channel), (
        (("authorization", f"Bearer {key}"),) if key else ())


def test_health_answers_and_every_method_but_health_needs_a_key(server):
    channel, results, _ = stub(server[0], key=None)
    with channel:
        assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as unary:
            results.GetClassification(results_pb2.GetClassificationRequest(listing_id="x"), timeout=5)
        with pytest.raises(grpc.RpcError) as stream:
            next(iter(results.WatchClassifications(results_pb2.WatchClassificationsRequest(), timeout=5)))
        assert unary.value.code() == stream.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_garbage_to_an_asyncio_stream_is_invalid_argument(server):
    channel, _, metadata = stub(server[0])
    with channel:
        call = channel.unary_stream("/product_classification.v1.ClassificationResults/WatchClassifications")
        with pytest.raises(grpc.RpcError) as raised:
            list(call(b"\xff\xff\xff\xff garbage", metadata=metadata, timeout=5))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_two_hundred_open_streams_hold_no_thread_and_blocking_calls_past_the_pool_are_refused_at_once(server):
    grpc_server, servicer = server
    channel, results, metadata = stub(grpc_server)
    # four connections of 50 streams (one connection holds at most MAX_STREAMS_PER_CONNECTION at once)
    watchers = [grpc.insecure_channel(f"127.0.0.1:{grpc_server.port}", options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(4)]
    with channel:
        streams = [results_pb2_grpc.ClassificationResultsStub(watchers[index % 4]).WatchClassifications(
            results_pb2.WatchClassificationsRequest(), metadata=metadata, timeout=60) for index in range(200)]
        for stream in streams:
            stream.initial_metadata()
            assert next(stream).sequence == 1
        # Two worker threads, two hundred open streams: a blocking call still gets a thread at once.
        began = time.perf_counter()
        assert results.GetClassification(results_pb2.GetClassificationRequest(listing_id="fast"), metadata=metadata,
                                          timeout=20).listing_id == "fast"
        assert time.perf_counter() - began < 3  # at once, not queued behind the streams (room for a busy machine)
        # Both threads held by slow calls: the third blocking call is refused on the event loop, at once.
        with ThreadPoolExecutor(2) as pool:
            slow = [pool.submit(results.GetClassification, results_pb2.GetClassificationRequest(listing_id="slow"),
                                metadata=metadata, timeout=20) for _ in range(2)]
            deadline = time.monotonic() + 5
            while grpc_server.pool._work_queue.qsize() == 0 and len(grpc_server.pool._threads) < 2 and \
                    time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
            began = time.perf_counter()
            with pytest.raises(grpc.RpcError) as refused:
                results.GetClassification(results_pb2.GetClassificationRequest(listing_id="third"),
                                          metadata=metadata, timeout=20)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert time.perf_counter() - began < 3  # refused, not left to wait for its 20 s deadline
            servicer.release.set()
            assert [f.result().listing_id for f in slow] == ["slow", "slow"]
        for stream in streams:
            stream.cancel()
    for watcher in watchers:
        watcher.close()


def test_blocking_calls_whose_message_never_came_do_not_keep_their_thread_places():
    """Calls opened and then cancelled (or left silent) before their request message: each used to keep a place of
    the thread pool for ever, and after as many as threads every blocking call of the replica was refused."""
    service = "test.Echo"

    def add(_servicer, server):
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {
            "Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request)}),))

    server = AsyncioGrpcServer("127.0.0.1:0", [(add, None, service)], max_workers=4)
    server.start()
    never = threading.Event()

    def silent():
        never.wait()
        yield b"x"
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            cancelled = [channel.stream_unary(f"/{service}/Echo").future(silent()) for _ in range(4)]
            left_silent = [channel.stream_unary(f"/{service}/Echo").future(silent()) for _ in range(8)]
            time.sleep(0.5)
            for call in cancelled:
                call.cancel()
            time.sleep(0.5)
            echo = channel.unary_unary(f"/{service}/Echo")
            assert [echo(b"%d" % i, timeout=10) for i in range(8)] == [b"%d" % i for i in range(8)]
            # past the address's share of waiting calls the server cancels the rest (request_arrival.py)
            assert all(call.exception().code() == grpc.StatusCode.CANCELLED for call in left_silent if call.done())
    finally:
        never.set()
        server.stop(0)
