"""`make bench-watch`: many watch streams against one result replica, and what GetClassification costs meanwhile.

Opens `--streams` WatchClassifications streams at once from `--callers` distinct callers (each its own API key),
keeps them open, measures GetClassification latency while they are open, then classifies one more listing and counts
the streams it reaches. The replica serves streams on grpc.aio (a stream is a queue, not a thread) and bounds them
(RESULTS_MAX_WATCH_STREAMS in all, RESULTS_MAX_WATCH_STREAMS_PER_CALLER each; past them RESOURCE_EXHAUSTED at once).
Target: 1,000 open streams with GetClassification p99 under 50 ms. Prints one line of JSON last.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import threading
import time

import grpc
import numpy as np

from services.common.contracts.product_classification.v1 import gateway_pb2, results_pb2, results_pb2_grpc
from services.common.grpc_security import new_api_key
from services.localstack.stack import REPOSITORY_ROOT, LocalStack, StackOptions, authenticated_channel
from services.drivers.traffic import sample_listings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--callers", type=int, default=250)
    parser.add_argument("--gets", type=int, default=300)
    options = parser.parse_args()
    work_dir = REPOSITORY_ROOT / ".run" / "bench-watch"
    shutil.rmtree(work_dir, ignore_errors=True)
    stack = LocalStack(StackOptions(work_dir=work_dir))
    callers = {f"watcher-{i}": new_api_key(18) for i in range(options.callers)}
    stack.internal_keys["results"].update(callers)
    with stack:
        address = stack.services["results"].address
        with stack.gateway_channel() as channel:
            listing = sample_listings(1, seed=151, prefix="watch-bench")[0].listing
            from services.common.contracts.product_classification.v1 import gateway_pb2_grpc

            gateway_pb2_grpc.ListingClassifierStub(channel).ClassifyListing(
                gateway_pb2.ClassifyListingRequest(listing=listing), timeout=60)
        keys = list(callers.values())
        opened, refused, refusal_ms, other = [], [], [], []
        received: dict[int, int] = {}
        # The watchers are one asyncio client in a thread of their own (a thousand blocking client threads would
        # measure this process's scheduler, not the replica).
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()

        async def open_streams():
            # a connection per caller, as distinct callers have (channels to one address otherwise share one, and a
            # connection holds at most MAX_STREAMS_PER_CONNECTION streams at once)
            channels = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
                        for _ in keys]

            async def watch(index: int) -> None:
                key = keys[index % len(keys)]
                stub = results_pb2_grpc.ClassificationResultsStub(channels[index % len(keys)])
                began = time.perf_counter()
                stream = stub.WatchClassifications(results_pb2.WatchClassificationsRequest(), timeout=300,
                                                   metadata=(("authorization", f"Bearer {key}"),))
                try:
                    await stream.initial_metadata()  # the replica sends it once the stream is accepted
                    opened.append(index)
                    async for _ in stream:
                        received[index] = received.get(index, 0) + 1
                except grpc.aio.AioRpcError as error:
                    if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        refused.append(index)
                        refusal_ms.append((time.perf_counter() - began) * 1000)
                    elif error.code() not in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
                        other.append(error.code().name)
            tasks = [asyncio.create_task(watch(index)) for index in range(options.streams)]
            return channels, tasks

        channels, tasks = asyncio.run_coroutine_threadsafe(open_streams(), loop).result(60)
        deadline = time.monotonic() + 120
        while len(set(opened) | set(refused)) + len(other) < options.streams and time.monotonic() < deadline:
            time.sleep(0.1)
        open_now = len(set(opened) - set(refused))
        get_ms = []
        with authenticated_channel(address, stack.internal_keys["results"]["localstack"]) as channel:
            stub = results_pb2_grpc.ClassificationResultsStub(channel)
            for _ in range(options.gets):
                began = time.perf_counter()
                stub.GetClassification(results_pb2.GetClassificationRequest(listing_id=listing.listing_id),
                                       timeout=10)
                get_ms.append((time.perf_counter() - began) * 1000)
        # One more classification: every open stream should see it.
        with stack.gateway_channel() as channel:
            from services.common.contracts.product_classification.v1 import gateway_pb2_grpc

            another = sample_listings(1, seed=152, prefix="watch-bench-new")[0].listing
            gateway_pb2_grpc.ListingClassifierStub(channel).ClassifyListing(
                gateway_pb2.ClassifyListingRequest(listing=another), timeout=60)
        deadline = time.monotonic() + 30
        while len(received) < open_now and time.monotonic() < deadline:
            time.sleep(0.1)
        reached = len(received)

        async def close():
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for channel in channels:
                await channel.close()
        asyncio.run_coroutine_threadsafe(close(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
    print(json.dumps({
        "streams_asked": options.streams, "callers": options.callers, "streams_open": open_now,
        "streams_refused_resource_exhausted": len(refused), "other_errors": sorted(set(other)),
        "streams_reached_by_a_new_classification": reached,
        "refusal_p99_ms": round(float(np.percentile(refusal_ms, 99)), 1) if refusal_ms else None,
        "get_classification_p50_ms": round(float(np.percentile(get_ms, 50)), 2),
        "get_classification_p99_ms": round(float(np.percentile(get_ms, 99)), 2),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs"}))


if __name__ == "__main__":
    main()
