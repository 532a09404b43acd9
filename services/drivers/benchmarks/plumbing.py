"""`make bench-plumbing`: what the system itself costs per listing, with models that cost next to nothing.

The real Triton serves stand-in models with the production models' names, tensors, labels and batching (each
averages the image's colours and maps them to the labels: a fraction of a millisecond), so every other cost is the
system's own. Photos as sellers upload them go in as listing events on Kafka (clothing photos, half as they are and
half re-encoded at about 2 megapixels); classifications come out on the output topic. Each process's CPU time
(/proc: the process and its children) is read before and after every run. The load generator shares the machine's
cores: the measured runs submit their listings while the preprocessing workers are held (SIGSTOP) and are timed from
when the workers go on, the pipeline draining a backlog (the CPU every process spent on the submission still counted
per listing); the first configuration also runs with the load generator producing beside the pipeline
(listings_per_s_while_submitting).

Runs, on PostgreSQL (the production store): one preprocessing worker and one result replica; then a second
preprocessing worker (same consumer group); then a second result replica as well; then the GPU decode path
(PREPROCESSING_DECODE_IN_TRITON) with the thumbnail made by Triton's ensemble, and made by the service
(`--decode-path-only`: only these two), each after 10 s with nothing in flight that measure the processes' idle
floor; then the GPU decode path as a GPU host runs it, its decode step a stand-in too (plumbing_decode_stand_in.py:
the photo's header read, the GPU's decoding and resizing left out, as the CNNs' computation is) with one worker and
one replica, two workers, and two replicas as well (`--stand-in-decode-only`: only these three). Each run also reports
how many cores the machine had busy: a second worker can only add what is left. Prints one line of JSON last.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import uuid
from pathlib import Path

import numpy as np
import psycopg
from PIL import Image

from services.common.fusion_file import FUSION_FILE, FusionConfig
from services.drivers.benchmarks.scale import wait_for_split
from services.drivers.benchmarks.pipeline_runs import EVERY_PHOTO_DECODED, StackRuns, idle_floor, less_idle
from services.localstack.stack import REPOSITORY_ROOT, LocalStack, StackOptions
from services.localstack.triton_cpu import LocalTriton, build_cpu_repository
from services.trainer.fusion_fit import publish_fusion
from services.trainer.photo_ensemble import write_ensembles
from services.trainer.real_models import clothing_dataset
from services.trainer.triton_export import publish_onnx

# Every stack here: the models called at once (as on a GPU host), and every photo's whole cost measured.
STACK_ENV = {"PREPROCESSING_PARALLEL_MODEL_CALLS": "true", **EVERY_PHOTO_DECODED}

WORK = REPOSITORY_ROOT / ".run" / "bench-plumbing"
POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")


# -- stand-in models

def stand_in_weights(input_size: int, labels: int) -> np.ndarray:
    return np.random.default_rng(input_size).normal(0, 0.05, (3, labels)).astype(np.float32)


# The mean colour is taken over every 8th pixel each way: over all of them the two stand-in CNNs took 12 ms of a
# batch of 32 each (casting 4.8 M pixels to float), more than the decode step's stand-in, where a GPU takes about 6.
STAND_IN_STRIDE = 8


def stand_in_reference(batch: np.ndarray, labels: int) -> np.ndarray:
    """What the stand-in computes, in numpy: the check its ONNX export is held to."""
    sampled = batch[:, ::STAND_IN_STRIDE, ::STAND_IN_STRIDE]
    logits = sampled.astype(np.float32).mean(axis=(1, 2)) @ stand_in_weights(batch.shape[1], labels)
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def stand_in_onnx(path: Path, input_size: int, labels: int) -> None:
    """uint8 NHWC image -> mean colour (of a sample of pixels) -> a fixed linear map -> softmax: the production
    tensors, next to no work."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(stand_in_weights(input_size, labels), "weights")
    bias = numpy_helper.from_array(np.zeros(labels, np.float32), "bias")
    axes = numpy_helper.from_array(np.array([1, 2], np.int64), "axes")
    starts = numpy_helper.from_array(np.array([0, 0], np.int64), "starts")
    ends = numpy_helper.from_array(np.array([input_size, input_size], np.int64), "ends")
    steps = numpy_helper.from_array(np.array([STAND_IN_STRIDE, STAND_IN_STRIDE], np.int64), "steps")
    nodes = [helper.make_node("Slice", ["image", "starts", "ends", "axes", "steps"], ["sampled"]),
             helper.make_node("Cast", ["sampled"], ["pixels"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["pixels", "axes"], ["colour"], keepdims=0),
             helper.make_node("MatMul", ["colour", "weights"], ["scores"]),
             helper.make_node("Add", ["scores", "bias"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)]
    graph = helper.make_graph(
        nodes, "stand_in",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", input_size, input_size, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", labels])],
        initializer=[weights, bias, axes, starts, ends, steps])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)


def build_stand_ins(production: Path, destination: Path) -> list[str]:
    """The production repository's models (those fusion calls) as stand-ins, with its fusion weights."""
    fusion = FusionConfig.load(production / FUSION_FILE)
    if destination.exists():
        shutil.rmtree(destination)
    versions = {}
    for name in fusion.called_models:
        config = (production / name / "config.pbtxt").read_text()
        input_size = int(config.split("dims:")[1].split()[0])
        labels = (production / name / "labels.txt").read_text().split()
        batch = np.random.default_rng(0).integers(0, 256, (2, input_size, input_size, 3), dtype=np.uint8)
        exported = publish_onnx(
            model_name=name, input_size=input_size, labels=labels, repository=destination, verification_batch=batch,
            export=lambda path, size=input_size, count=len(labels): stand_in_onnx(path, size, count),
            predict=lambda images, count=len(labels): stand_in_reference(images, count), framework="numpy")
        versions[name] = str(exported.version)
    called = {name: weight for name, weight in fusion.weights.items() if name in versions}  # not the weight-0 ones
    publish_fusion(destination, {"weights": called, "review_threshold": fusion.review_threshold or 0.0,
                                 "figures": {}}, versions, list(fusion.labels), "stand-in models for bench-plumbing")
    return list(versions)


# -- photos as sellers upload them

def seller_photos(count: int) -> list[tuple[bytes, str]]:
    """(bytes, kind): half the clothing photos as they are, half re-encoded at about 2 megapixels."""
    cache = WORK / "photos"
    paths = sorted((clothing_dataset() / "train").glob("*/*.jpg"))
    # Each photo once while there are enough (the train split holds about 3,000); beyond that, some again.
    picked = [paths[i] for i in np.random.default_rng(7).choice(len(paths), count, replace=count > len(paths))]
    photos = []
    cache.mkdir(parents=True, exist_ok=True)
    for index, path in enumerate(picked):
        if index % 2 == 0:
            photos.append((path.read_bytes(), "original"))
            continue
        cached = cache / f"{path.parent.name}-{path.stem}-2mp.jpg"
        if not cached.exists():
            image = Image.open(path).convert("RGB")
            scale = (2_000_000 / (image.width * image.height)) ** 0.5
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90)
            cached.write_bytes(buffer.getvalue())
        photos.append((cached.read_bytes(), "2mp"))
    return photos


# -- where the time goes

class Profiles:
    """py-spy sampling the services during a run (--profile): the top entries by own time, per service."""

    def __init__(self, stack: LocalStack, services: list[str]):
        import subprocess
        import sys

        spy = Path(sys.executable).with_name("py-spy")
        if not spy.exists():
            raise SystemExit("--profile needs py-spy in the virtual environment: .venv/bin/pip install py-spy")
        self.outputs = {name: WORK / f"profile-{name}.txt" for name in services}
        self.processes = [subprocess.Popen([str(spy), "record", "--pid", str(stack.services[name].process.process.pid),
                                            "--format", "raw", "--rate", "200", "--output", str(path), "--nonblocking"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                          for name, path in self.outputs.items()]

    def stop(self) -> dict[str, list[tuple[str, float]]]:
        import signal

        for process in self.processes:
            process.send_signal(signal.SIGINT)
        for process in self.processes:
            process.wait(60)
        return {name: top_entries(path) for name, path in self.outputs.items() if path.exists()}


def print_profiles(profiles: dict[str, list[tuple[str, float]]]) -> None:
    for name, entries in profiles.items():
        print(f"{name}: where its busy time goes (own time, py-spy):", flush=True)
        for frame, share in entries:
            print(f"  {share:6.1%}  {frame}", flush=True)


def top_entries(path: Path, count: int = 8) -> list[tuple[str, float]]:
    """Own-time share of the functions that were busy (idle waits in the event loop and queues left out)."""
    own: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not samples.isdigit():  # a line cut short when py-spy was stopped
            continue
        frame = stack.rsplit(";", 1)[-1]
        if any(idle in frame for idle in ("wait (threading", "select (", "_worker (concurrent", "poll (", "sleep",
                                           "epoll", "get (queue")):
            continue
        own[frame] = own.get(frame, 0) + int(samples)
    busy = sum(own.values()) or 1
    return [(frame, round(samples / busy, 3)) for frame, samples in sorted(own.items(), key=lambda i: -i[1])[:count]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    # 2,000: on a fast 2-core machine 600 went through in under 3 s, too short for a steady figure
    parser.add_argument("--listings", type=int, default=2000)
    parser.add_argument("--profile", action="store_true", help="sample preprocessing and results with py-spy during "
                        "the first run (with --decode-path-only: the decode path's first run); prints their top "
                        "entries (own time)")
    parser.add_argument("--decode-path-only", action="store_true", help="only the GPU decode path's runs (the "
                        "thumbnail made by Triton, then made by the service)")
    parser.add_argument("--cpu-path-only", action="store_true", help="only the CPU path's runs (one worker, two "
                        "workers, two result replicas as well)")
    parser.add_argument("--stand-in-decode-only", action="store_true", help="only the GPU decode path's runs with "
                        "the decode step a stand-in (one worker, two workers, two result replicas as well)")
    parser.add_argument("--seen-before-only", action="store_true", help="only the CPU path with the prediction "
                        "cache on (the default): the photos listed once, then again under new listing ids")
    parser.add_argument("--triton-over-grpc", action="store_true", help="the ensembles' tensors in the gRPC "
                        "messages (PREPROCESSING_TRITON_SHARED_MEMORY=false) instead of system shared memory, as for "
                        "a worker on another host than Triton")
    options = parser.parse_args()
    transport = {"PREPROCESSING_TRITON_SHARED_MEMORY": "false" if options.triton_over_grpc else "true"}
    shutil.rmtree(WORK / "stack", ignore_errors=True)
    models = WORK / "models"
    names = build_stand_ins(REPOSITORY_ROOT / "triton_models", models)
    write_ensembles(models)  # over the stand-ins: the CPU path's pixels_ensemble, the decode path's for the last runs
    print(f"stand-in models: {', '.join(names)} in {models}", flush=True)
    photos = seller_photos(options.listings)
    warm = seller_photos(64)
    database = f"bench_plumbing_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    try:
        url = f"{POSTGRES_ADMIN_URL.rpartition('/')[0]}/{database}"
        one = two_workers = two_results = None
        in_triton, floors, stand_in, seen_before = {}, {}, None, None
        if options.seen_before_only:
            print(json.dumps({**seen_before_figures(seen_before_run(models, url, photos, warm, transport)),
                              "store": "postgresql", "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}))
            return
        if options.stand_in_decode_only:
            stand_in = stand_in_decode_runs(models, url, photos, warm, options.profile, transport)
            print(json.dumps({**stand_in_figures(*stand_in), "store": "postgresql",
                              "triton_transport": "grpc" if options.triton_over_grpc else "shared memory",
                              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}))
            return
        with (contextlib.nullcontext() if options.decode_path_only else LocalStack(
            StackOptions(work_dir=WORK / "stack", model_repository=models, database_url=url,
                         extra_env={**STACK_ENV, **transport}))) as stack:
            if stack is not None:
                one, two_workers, two_results = scale_runs(stack, photos, warm, options.profile)
        # The GPU decode path on this CPU: the bytes go to photo_ensemble, whose decode step is the production DALI
        # pipeline on DALI's CPU backend inside Triton. Decoding moves from preprocessing into Triton's process (on a
        # GPU host, onto the GPU), so the services' own cost is what these runs are about: with the thumbnail made by
        # the ensemble (the default) and made here (PREPROCESSING_THUMBNAIL_IN_TRITON=false).
        profile_decode_path = options.profile and options.decode_path_only
        decode_path_runs = () if options.cpu_path_only else (("true", "decode-in-triton"),
                                                             ("false", "decode-in-triton-thumbnail-here"))
        for thumbnails, label in decode_path_runs:
            with LocalStack(StackOptions(work_dir=WORK / f"stack-{label}", model_repository=models, database_url=url,
                                         extra_env={**STACK_ENV, **transport,
                                                    "PREPROCESSING_DECODE_IN_TRITON": "true",
                                                    "PREPROCESSING_THUMBNAIL_IN_TRITON": thumbnails})) as stack, \
                    StackRuns(stack) as runs:
                runs.run(warm, f"warm-{label}")
                floors[label] = idle_floor(stack)
                profiles = Profiles(stack, ["preprocessing", "results"]) if profile_decode_path else None
                in_triton[label] = runs.run(photos, label, held=True)
                in_triton[label]["services_total_less_idle"] = less_idle(in_triton[label], floors[label])
                if profiles is not None:
                    print_profiles(profiles.stop())
                    profile_decode_path = False  # the first of the two runs only
                maker = "by Triton" if thumbnails == "true" else "here"
                print(f"decode in Triton (photo_ensemble), thumbnail made {maker}, 1 worker, 1 replica: "
                      f"{json.dumps(in_triton[label])}", flush=True)
        if not (options.decode_path_only or options.cpu_path_only):
            stand_in = stand_in_decode_runs(models, url, photos, warm, False, transport)
            seen_before = seen_before_run(models, url, photos, warm, transport)
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    kinds = {kind: sum(1 for _, k in photos if k == kind) for _, kind in photos}
    figures = {}
    if one is not None:
        figures = {
            "listings_per_s": one["listings_per_s"], "cpu_ms_per_listing": one["cpu_ms_per_listing"],
            "listings_per_s_while_submitting": one["listings_per_s_while_submitting"],
            "listings_per_s_2_preprocessing_workers": two_workers["listings_per_s"],
            "preprocessing_scale_ratio": round(two_workers["listings_per_s"] / one["listings_per_s"], 2),
            "preprocessing_scale_ratio_cpu_allows": ratio_cpu_allows(one),
            "cores_busy_1_worker": one["cores_busy"], "cores_busy_2_workers": two_workers["cores_busy"],
            "cpu_ms_per_listing_2_preprocessing_workers": two_workers["cpu_ms_per_listing"],
            "listings_per_s_2_result_replicas": two_results["listings_per_s"],
            "results_scale_ratio": round(two_results["listings_per_s"] / two_workers["listings_per_s"], 2)}
    decode_path = {} if not in_triton else {
        "listings_per_s_decode_in_triton": in_triton["decode-in-triton"]["listings_per_s"],
        "cpu_ms_per_listing_decode_in_triton": in_triton["decode-in-triton"]["cpu_ms_per_listing"],
        "cpu_ms_per_listing_decode_in_triton_thumbnail_here":
            in_triton["decode-in-triton-thumbnail-here"]["cpu_ms_per_listing"],
        # At this CPU twin's rate the services' idle floor is a large share of each listing; a GPU host's rate is not
        "idle_cpu_ms_per_s_decode_in_triton": floors["decode-in-triton"],
        "services_cpu_ms_per_listing_less_idle_decode_in_triton":
            in_triton["decode-in-triton"]["services_total_less_idle"]}
    print(json.dumps({
        **figures,
        **decode_path,
        **(stand_in_figures(*stand_in) if stand_in else {}),
        **(seen_before_figures(seen_before) if seen_before else {}),
        "store": "postgresql", "triton_transport": "grpc" if options.triton_over_grpc else "shared memory",
        "photos": kinds, "models": "stand-ins (" + ", ".join(names) + ")",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}))


STAND_IN_DECODE = Path(__file__).with_name("plumbing_decode_stand_in.py")


def seen_before_run(models: Path, database_url: str, photos, warm, transport: dict[str, str]) -> tuple[dict, dict]:
    """The CPU path as deployed, its prediction cache on: every photo listed once (each decoded and sent to the
    models), then all of them again under new listing ids (an edited listing, or one product listed on another
    marketplace), which the worker answers from memory. One worker, one replica; returns both runs' figures."""
    with LocalStack(StackOptions(work_dir=WORK / "stack-seen-before", model_repository=models,
                                 database_url=database_url,
                                 extra_env={"PREPROCESSING_PARALLEL_MODEL_CALLS": "true", **transport})) as stack, \
            StackRuns(stack) as runs:
        runs.run(warm, "seen-warm")
        first = runs.run(photos, "seen-first", held=True)
        print(f"prediction cache on, photos new to it: {json.dumps(first)}", flush=True)
        again = runs.run(photos, "seen-again", held=True)
        print(f"prediction cache on, the same photos under new listing ids: {json.dumps(again)}", flush=True)
    return first, again


def seen_before_figures(runs: tuple[dict, dict]) -> dict:
    first, again = runs
    return {"listings_per_s_photos_new_cache_on": first["listings_per_s"],
            "cpu_ms_per_listing_photos_new_cache_on": first["cpu_ms_per_listing"],
            "listings_per_s_photos_seen_before": again["listings_per_s"],
            "cpu_ms_per_listing_photos_seen_before": again["cpu_ms_per_listing"]}


def stand_in_decode_runs(models: Path, database_url: str, photos, warm, profile: bool, transport: dict[str, str]
                         ) -> tuple[dict, dict, dict]:
    """The GPU decode path with its decode step a stand-in as well (what a GPU host leaves to the CPU): one worker
    and one replica, two workers, two replicas as well, on a Triton of its own."""
    triton = LocalTriton(models, WORK / "triton-stand-in-decode",
                         build_repository=lambda source, target: build_cpu_repository(source, target, STAND_IN_DECODE))
    triton.start()
    try:
        with LocalStack(StackOptions(work_dir=WORK / "stack-stand-in-decode", model_repository=models,
                                     database_url=database_url, triton=triton,
                                     extra_env={**STACK_ENV, **transport,
                                                "PREPROCESSING_DECODE_IN_TRITON": "true",
                                                "PREPROCESSING_THUMBNAIL_IN_TRITON": "true"})) as stack:
            return scale_runs(stack, photos, warm, profile, "decode stand-in, ", ids="stand-in-")
    finally:
        triton.stop()


def ratio_cpu_allows(one: dict) -> float:
    """The most a second worker could add to one worker's run if it used every core the run left idle: the machine's
    cores over the cores busy (a target ratio above it cannot be met on this machine, whatever the code)."""
    return round((os.cpu_count() or 1) / max(one["cores_busy"], 0.01), 2)


def stand_in_figures(one: dict, two_workers: dict, two_results: dict) -> dict:
    """The stand-in decode path's runs as the JSON line names them."""
    return {"listings_per_s_decode_stand_in": one["listings_per_s"],
            "cpu_ms_per_listing_decode_stand_in": one["cpu_ms_per_listing"],
            "listings_per_s_while_submitting_decode_stand_in": one["listings_per_s_while_submitting"],
            "cores_busy_decode_stand_in": one["cores_busy"],
            "listings_per_s_2_preprocessing_workers_decode_stand_in": two_workers["listings_per_s"],
            "preprocessing_scale_ratio_decode_stand_in":
                round(two_workers["listings_per_s"] / one["listings_per_s"], 2),
            "preprocessing_scale_ratio_cpu_allows_decode_stand_in": ratio_cpu_allows(one),
            "cores_busy_2_workers_decode_stand_in": two_workers["cores_busy"],
            "listings_per_s_2_result_replicas_decode_stand_in": two_results["listings_per_s"],
            "results_scale_ratio_decode_stand_in":
                round(two_results["listings_per_s"] / two_workers["listings_per_s"], 2)}


def scale_runs(stack: LocalStack, photos, warm, profile: bool, label: str = "", ids: str = ""
               ) -> tuple[dict, dict, dict]:
    """One preprocessing worker and one result replica, then two workers, then two result replicas as well, each
    draining the listings submitted while the workers were held (StackRuns.run); the first configuration once more
    with the load generator producing beside it (its figure in `one` as listings_per_s_while_submitting). `ids`
    starts every listing id, so runs on one database never repeat a listing (the store would find it classified
    already, as it does a redelivered one, and publish nothing new)."""
    with StackRuns(stack) as runs:
        runs.run(warm, f"{ids}warm-1")
        profiles = Profiles(stack, ["preprocessing", "results"]) if profile else None
        one = runs.run(photos, f"{ids}one", held=True)
        if profiles is not None:
            print_profiles(profiles.stop())
        live = runs.run(photos, f"{ids}one-while-submitting")
        print(f"{label}1 preprocessing worker, 1 result replica, while submitting: {json.dumps(live)}", flush=True)
        one["listings_per_s_while_submitting"] = live["listings_per_s"]
        print(f"{label}1 preprocessing worker, 1 result replica: {json.dumps(one)}", flush=True)
        stack.add_service("preprocessing-2")
        split = wait_for_split(stack, ["preprocessing", "preprocessing-2"])
        runs.run(warm, f"{ids}warm-2")
        two_workers = runs.run(photos, f"{ids}two-workers", held=True)
        print(f"{label}2 preprocessing workers (partitions {split}): {json.dumps(two_workers)}", flush=True)
        stack.add_service("results-2")
        runs.run(warm, f"{ids}warm-3")
        two_results = runs.run(photos, f"{ids}two-results", held=True)
        print(f"{label}2 preprocessing workers, 2 result replicas: {json.dumps(two_results)}", flush=True)
    return one, two_workers, two_results


if __name__ == "__main__":
    main()
