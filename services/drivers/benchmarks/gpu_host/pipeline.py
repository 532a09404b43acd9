"""bench-gpu's pipeline part: the whole system through Kafka on the lent GPU machine, against the Triton the bench
already runs there (its models on the GPU).

The broker, the three services and the store (SQLite, the embedded default: PostgreSQL does not travel) run as the
local stack runs them; listing events go in on the listing topic and classifications come out on the output topic.
For each path (the CPU path, the default; the GPU decode path, PREPROCESSING_DECODE_IN_TRITON with the thumbnail made
in Triton), over each transport (the ensembles' tensors in gRPC messages, or through system shared memory,
PREPROCESSING_TRITON_SHARED_MEMORY, which the workers can use here since Triton runs on their host), with 1, 2, ...
preprocessing workers: listings/s, each process's CPU-ms per listing (services_total for
gateway, preprocessing and results; the broker, Triton and the load generator apart) and the cores busy.
"""

from __future__ import annotations

import json
from pathlib import Path

from services.drivers.benchmarks.scale import wait_for_split
from services.drivers.metrics_reader import scrape, total
from services.drivers.benchmarks.pipeline_runs import EVERY_PHOTO_DECODED, StackRuns
from services.localstack.stack import LocalStack, StackOptions
from services.localstack.triton_cpu import LocalTriton

PATHS = {"cpu_path": {},
         "gpu_decode_path": {"PREPROCESSING_DECODE_IN_TRITON": "true", "PREPROCESSING_THUMBNAIL_IN_TRITON": "true"}}
TRANSPORTS = {"grpc": {"PREPROCESSING_TRITON_SHARED_MEMORY": "false"},
              "shared_memory": {"PREPROCESSING_TRITON_SHARED_MEMORY": "true"}}
WARM_LISTINGS = 64


def pipeline_runs(triton: LocalTriton, repository: Path, photos: list[tuple[bytes, str]], work_dir: Path,
                  worker_counts: list[int], paths: list[str] | None = None, report=None,
                  transports: list[str] | None = None) -> dict[str, dict]:
    """photos: (bytes, kind) as listings carry them, every one sent once per run. repository: the production
    repository (with fusion.json) that `triton` serves. report(key, figures), when given, is called after each run
    (the caller saves what it has so far). paths and transports: PATHS' and TRANSPORTS' names (default: every path,
    over gRPC). Returns "<path>, <n> workers" (over gRPC) or "<path>, <transport>, <n> workers" -> the run's
    figures."""
    figures: dict[str, dict] = {}
    for path, transport in [(p, t) for p in paths or list(PATHS) for t in transports or ["grpc"]]:
        options = StackOptions(work_dir=work_dir / f"{path}-{transport}", model_repository=repository,
                               partitions=2 * max(worker_counts), triton=triton,
                               extra_env={"PREPROCESSING_PARALLEL_MODEL_CALLS": "true", **EVERY_PHOTO_DECODED,
                                          **PATHS[path], **TRANSPORTS[transport]})
        with LocalStack(options) as stack, StackRuns(stack) as runs:
            workers = ["preprocessing"]
            for count in sorted(worker_counts):
                while len(workers) < count:
                    workers.append(f"preprocessing-{len(workers) + 1}")
                    stack.add_service(workers[-1])
                split = wait_for_split(stack, workers)
                runs.run(photos[:WARM_LISTINGS], f"warm-{path}-{transport}-{count}")
                before = triton_calls(stack, workers)
                result = runs.run(photos, f"{path}-{transport}-{count}")
                result["partitions_held"] = split
                result["triton_calls"] = calls_between(before, triton_calls(stack, workers))
                result["shared_memory_regions"] = shared_memory_regions(stack.triton.grpc_url)
                key = f"{path}, {count} workers" if transport == "grpc" else f"{path}, {transport}, {count} workers"
                figures[key] = result
                print(f"  pipeline {key}: {json.dumps(result)}", flush=True)
                if report is not None:
                    report(key, result)
    return figures


def shared_memory_regions(url: str) -> int:
    """How many of the workers' shared-memory regions Triton has registered (0 when the run went over gRPC)."""
    import tritonclient.grpc as triton_grpc

    from services.preprocessing.triton_shared_memory import REGION_PREFIX

    client = triton_grpc.InferenceServerClient(url)
    try:
        regions = client.get_system_shared_memory_status(as_json=True).get("regions", {})
    finally:
        client.close()
    names = regions.keys() if isinstance(regions, dict) else [r.get("name", "") for r in regions]
    return sum(1 for name in names if name.startswith(REGION_PREFIX))


# Triton's own per-model counters (its metrics endpoint) and the preprocessing workers' view of their calls.
TRITON_COUNTERS = {"requests": "nv_inference_request_success", "images": "nv_inference_count",
                   "executions": "nv_inference_exec_count", "request_us": "nv_inference_request_duration_us",
                   "queue_us": "nv_inference_queue_duration_us",
                   "compute_us": "nv_inference_compute_infer_duration_us"}
CLIENT_COUNTERS = {"calls": "product_classification_triton_call_seconds_count",
                   "call_s": "product_classification_triton_call_seconds_sum",
                   "images": "product_classification_triton_batch_images_sum"}


def triton_calls(stack: LocalStack, workers: list[str]) -> dict[str, dict[str, float]]:
    """Cumulative counters: per served model, and "preprocessing" for what the workers saw of their calls."""
    counters = triton_model_counters(stack.triton.metrics_port)
    scraped = [scrape(stack.services[worker].metrics_url) for worker in workers]
    counters["preprocessing"] = {field: sum(total(v, metric) for v in scraped) for field, metric in CLIENT_COUNTERS.items()}
    return counters


def triton_model_counters(metrics_port: int) -> dict[str, dict[str, float]]:
    """Triton's cumulative counters per served model (TRITON_COUNTERS), from its metrics endpoint."""
    counters: dict[str, dict[str, float]] = {}
    values = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
    for key, value in values.items():
        name, _, labels = key.partition("{")
        name = name.removesuffix("_total")  # the parser names a counter's samples so; Triton's own names lack it
        field = next((f for f, metric in TRITON_COUNTERS.items() if metric == name), None)
        model = dict(part.split("=", 1) for part in labels.rstrip("}").split(",") if "=" in part).get("model")
        if field and model:
            counters.setdefault(model, {}).setdefault(field, 0.0)
            counters[model][field] += value
    return counters


def calls_between(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, dict]:
    """What the run asked of Triton: per model with requests, images per request and per execution (the dynamic
    batcher's batches), and the mean request, queue and compute milliseconds; for the workers, calls, images per call
    and the mean call milliseconds as they waited for it."""
    summary: dict[str, dict] = {}
    for model, counters in after.items():
        spent = {field: value - before.get(model, {}).get(field, 0.0) for field, value in counters.items()}
        if model == "preprocessing":
            calls = spent["calls"] or 1
            summary[model] = {"calls": int(spent["calls"]), "images_per_call": round(spent["images"] / calls, 1),
                              "call_ms": round(1000 * spent["call_s"] / calls, 1)}
            continue
        requests = spent.get("requests", 0.0)
        if not requests:
            continue
        summary[model] = {"requests": int(requests), "images_per_request": round(spent["images"] / requests, 1),
                          "images_per_execution": round(spent["images"] / (spent["executions"] or 1), 1),
                          **{f"{field[:-3]}_ms": round(spent[field] / requests / 1000, 1)
                             for field in ("request_us", "queue_us", "compute_us")}}
    return summary
