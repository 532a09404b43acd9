"""`make bench`: the pipeline against Triton alone, on the same models and images, on this machine.

Prints human-readable progress, then last one line of JSON:
  pipeline_listings_per_s     Kafka in to classification published, through the whole local stack
  triton_direct_images_per_s  the same images through both models straight via tritonclient, best concurrency
  efficiency                  the first over the second (target >= 0.85)
  sync_p50_ms / sync_p99_ms   the gateway's synchronous ClassifyListing, one call at a time
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tritonclient.grpc as triton_grpc

from services.common.contracts.product_classification.v1 import gateway_pb2, gateway_pb2_grpc
from services.drivers.benchmarks.pipeline_runs import EVERY_PHOTO_DECODED
from services.localstack.stack import REPOSITORY_ROOT, LocalStack, StackOptions
from services.drivers.traffic import AllClassified, TopicReader, classified_by_listing, sample_listings, submit_listings
from services.preprocessing.images import ImageLimits, prepare_image
from services.preprocessing.triton_models import read_model_spec
from services.trainer.build_untrained import build_untrained_models


def triton_direct(triton, images: list[bytes], concurrency: int, batch: int) -> float:
    """Images per second through every model of the LocalTriton, requests of `batch` images, `concurrency` requests
    in flight."""
    client = triton.client()
    specs = [read_model_spec(client, name) for name in ("resnet50", "inception_v3")]
    sizes = sorted({s.input_size for s in specs})
    prepared = [prepare_image(data, sizes, ImageLimits()) for data in images]
    chunks = [prepared[i:i + batch] for i in range(0, len(prepared), batch)]

    def infer(chunk) -> None:
        for spec in specs:
            tensor = np.stack([p.tensors[spec.input_size] for p in chunk])
            model_input = triton_grpc.InferInput(spec.input_name, list(tensor.shape), "UINT8")
            model_input.set_data_from_numpy(tensor)
            client.infer(spec.name, [model_input], outputs=[triton_grpc.InferRequestedOutput(spec.output_name)])

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(infer, chunks))
    elapsed = time.perf_counter() - started
    client.close()
    return len(images) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listings", type=int, default=160)
    parser.add_argument("--sync-calls", type=int, default=60)
    options = parser.parse_args()
    work_dir = REPOSITORY_ROOT / ".run" / "bench"
    shutil.rmtree(work_dir, ignore_errors=True)
    # Production input sizes (224 / 299), whatever the demo trained: the figure is about serving at those sizes.
    models = REPOSITORY_ROOT / ".run" / "bench_models"
    for name in ("resnet50", "inception_v3"):
        (models / name).mkdir(parents=True, exist_ok=True)
    build_untrained_models(models, {})
    stack_options = StackOptions(work_dir=work_dir, model_repository=models, extra_env=EVERY_PHOTO_DECODED)
    with LocalStack(stack_options) as stack:
        kafka = stack.kafka_settings
        samples = sample_listings(options.listings, seed=101, prefix="bench")
        warm = sample_listings(64, seed=5, prefix="warm")
        reader = TopicReader(kafka, kafka.topics.listing_classified)
        submit_listings(kafka, [s.listing for s in warm])  # warm every path: group joins, full batches
        reader.read(lambda rs: len(classified_by_listing(rs)) >= len(warm), 120)

        wanted = {s.listing.listing_id for s in samples}
        started = time.perf_counter()
        submit_listings(kafka, [s.listing for s in samples])
        classified = AllClassified(wanted)
        reader.read(classified, 600)
        pipeline_s = time.perf_counter() - started
        done = len(wanted & classified.seen)
        reader.close()
        pipeline_rate = done / pipeline_s
        print(f"pipeline: {done}/{len(wanted)} listings in {pipeline_s:.2f} s = {pipeline_rate:.2f} listings/s",
              flush=True)

        images = [s.listing.image_bytes for s in samples]
        direct = {}
        for concurrency, batch in ((1, 1), (2, 1), (4, 1), (8, 1), (1, 16), (2, 16), (1, 32), (2, 32)):
            direct[f"concurrency {concurrency}, batch {batch}"] = rate = triton_direct(
                stack.triton, images, concurrency, batch)
            print(f"triton direct, concurrency {concurrency}, batch {batch}: {rate:.2f} images/s", flush=True)
        best = max(direct, key=direct.get)

        latencies = []
        with stack.gateway_channel() as channel:
            gateway = gateway_pb2_grpc.ListingClassifierStub(channel)
            for sample in sample_listings(options.sync_calls, seed=202, prefix="sync"):
                began = time.perf_counter()
                gateway.ClassifyListing(gateway_pb2.ClassifyListingRequest(listing=sample.listing), timeout=60)
                latencies.append((time.perf_counter() - began) * 1000)
        print(f"sync ClassifyListing: p50 {np.percentile(latencies, 50):.1f} ms, "
              f"p99 {np.percentile(latencies, 99):.1f} ms over {len(latencies)} calls", flush=True)

    print(json.dumps({
        "pipeline_listings_per_s": round(pipeline_rate, 3),
        "triton_direct_images_per_s": round(direct[best], 3),
        "triton_direct_best": best,
        "efficiency": round(pipeline_rate / direct[best], 3),
        "sync_p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "sync_p99_ms": round(float(np.percentile(latencies, 99)), 1),
        "listings": len(wanted), "classified": done,
        "models": "untrained resnet50 at 224 px + inception_v3 at 299 px (production sizes)",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU Triton (onnxruntime)",
    }))


if __name__ == "__main__":
    main()
