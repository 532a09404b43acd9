"""`make bench-scale`: throughput with one and two preprocessing workers in one consumer group, on the local stack.

Both workers share this machine's cores with Triton (CPU), so the ratio is read against Triton's share of the
time: when Triton is busy most of the wall time, a second worker has little left to win here, while on a GPU host
(Triton off the CPU) the workers' own share is what scales. Prints one line of JSON last.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time

from services.drivers.benchmarks.pipeline_runs import EVERY_PHOTO_DECODED
from services.drivers.metrics_reader import scrape, total
from services.localstack.stack import REPOSITORY_ROOT, LocalStack, StackOptions
from services.drivers.traffic import sample_listings, submit_and_collect

ASSIGNED = "product_classification_kafka_assigned_partitions"
PARTITIONS = 4


def triton_busy_s(stack: LocalStack) -> float:
    """Cumulative time Triton spent computing inferences, every model."""
    values = scrape(f"http://127.0.0.1:{stack.triton.metrics_port}/metrics")
    # Triton's cumulative compute time in microseconds (the parser adds _total to counter names).
    return total(values, "nv_inference_compute_infer_duration_us_total") / 1e6


def run_phase(stack: LocalStack, count: int, seed: int, prefix: str) -> tuple[float, float]:
    """Listings per second from Kafka in to classification published, and Triton's busy share of that time."""
    samples = sample_listings(count, seed=seed, prefix=prefix)
    busy_before = triton_busy_s(stack)
    began = time.perf_counter()
    done = len(submit_and_collect(stack.kafka_settings, [s.listing for s in samples], 600))
    elapsed = time.perf_counter() - began
    return done / elapsed, (triton_busy_s(stack) - busy_before) / elapsed


def wait_for_split(stack: LocalStack, workers: list[str], timeout_s: float = 60) -> list[int]:
    """The listing topic's partitions each worker holds, once every partition is held and each worker has one (or
    once timeout_s has passed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        held = [int(total(scrape(stack.services[w].metrics_url), ASSIGNED, "listing-submitted")) for w in workers]
        if sum(held) == stack.options.partitions and min(held) > 0 or time.monotonic() > deadline:
            return held
        time.sleep(0.5)


def main() -> None:
    work_dir = REPOSITORY_ROOT / ".run" / "bench-scale"
    shutil.rmtree(work_dir, ignore_errors=True)
    options = StackOptions(work_dir=work_dir, partitions=PARTITIONS, extra_env=EVERY_PHOTO_DECODED)
    with LocalStack(options) as stack:
        run_phase(stack, 32, 1, "warm1")
        one, triton_share_one = run_phase(stack, 400, 2, "one")
        print(f"1 worker: {one:.2f} listings/s, Triton busy {triton_share_one:.0%} of the time", flush=True)
        stack.add_service("preprocessing-2")
        split = wait_for_split(stack, ["preprocessing", "preprocessing-2"])
        print(f"partitions split between the two workers: {split}", flush=True)
        run_phase(stack, 16, 3, "warm2")
        two, triton_share_two = run_phase(stack, 400, 4, "two")
        print(f"2 workers: {two:.2f} listings/s, Triton busy {triton_share_two:.0%} of the time", flush=True)
        models = ", ".join(stack.triton.model_names)
    print(json.dumps({
        "listings_per_s_1_worker": round(one, 2),
        "listings_per_s_2_workers": round(two, 2),
        "ratio": round(two / one, 3),
        "triton_busy_share_1_worker": round(triton_share_one, 3),
        "triton_busy_share_2_workers": round(triton_share_two, 3),
        "partitions_per_worker": split,
        "models": f"{models} from triton_models/ (the served models)",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores shared by Triton (CPU), broker and services",
    }))


if __name__ == "__main__":
    main()
