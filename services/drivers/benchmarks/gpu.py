"""`make bench-gpu`: on a machine with an NVIDIA GPU, the model repository served by the real tritonserver on the GPU,
and the two ways a listing's photo can reach it, side by side on the same machine.

- **CPU path** (the default deployment): worker processes do what the preprocessing service does per photo (decode,
  find the product, one uint8 tensor per input size, the operators' thumbnail; services/preprocessing/images.py) and
  send one request per batch to `pixels_ensemble`, which runs every called model.
- **GPU decode path** (PREPROCESSING_DECODE_IN_TRITON=true): worker processes check the header only and send the
  photo's bytes to `photo_ensemble`, which decodes (nvJPEG) and resizes on the GPU before every CNN and makes the
  thumbnail, which the workers encode.

Both paths run with the same worker counts over the same photos (real validation photos, half of them re-encoded at
about 2 megapixels as phones upload them), first at Triton's door (worker processes running the service's own code),
then through the whole pipeline (gpu_host/pipeline.py: the broker, the three services and the store as
the local stack runs them, listing events in on Kafka, classifications out, on the Triton already running); each
reports listings/s and CPU-ms per listing of each process. Also: each CNN and pixels_ensemble straight through Triton,
the CNNs on the GPU without Triton (PyTorch FP16: what the card itself does), nvJPEG against Pillow, and the accuracy
of the real fine-tuned model on both paths (the GPU decode path skips the product crop). Prints progress, then one
line of JSON; the JSON is also written to --out after every part, with the logs in one archive.

What can run on a lent GPU machine is bounded by what can be carried there (64 MiB a call, no network): no TensorRT
or DALI. The CNNs therefore run in Python-backend models executing the published ONNX graphs with PyTorch on CUDA
(gpu_host/torch_onnx_model.py) or, with --engine ort-cuda, with ONNX Runtime's CUDA provider in FP16
(gpu_host/ort_cuda_model.py; onnxruntime-gpu travels first in parts: gpu_host/ort_gpu.py), and `photo_decode`
is its nvJPEG twin (gpu_host/photo_decode_nvjpeg.py). `python -m services.drivers.benchmarks.gpu_host.carry` packs what
travels into .gpu/; `--cpu-twins` runs this command with what it packed on a machine without a GPU (the local stack's
onnxruntime twins).
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from services.common.decode_path import THUMBNAIL_SIDE

REPOSITORY_ROOT = Path(__file__).resolve().parents[3]
GPU_MODELS = Path(__file__).with_name("gpu_host")
BATCH = 32
PIPELINE_PATHS = ("gpu_decode_path", "cpu_path")  # gpu_host/pipeline.py's PATHS (imported only there)
PIPELINE_TRANSPORTS = ("grpc", "shared_memory")  # and its TRANSPORTS
THUMBNAIL_SIZE = THUMBNAIL_SIDE  # the preprocessing service's default


# ---- photos ---------------------------------------------------------------------------------------------------------

def load_photos(folder: Path, two_megapixel_share: float = 0.5) -> list[tuple[str, bytes]]:
    """(label, bytes) of every photo under folder/<label>/; every other one re-encoded at about 2 megapixels."""
    from PIL import Image

    photos = []
    for path in sorted(folder.glob("*/*")):
        if path.is_file():
            photos.append((path.parent.name, path.read_bytes()))
    step = max(1, round(1 / two_megapixel_share)) if two_megapixel_share else 0
    for index in range(0, len(photos), step or len(photos) + 1):
        label, data = photos[index]
        image = Image.open(io.BytesIO(data)).convert("RGB")
        scale = (2_000_000 / (image.width * image.height)) ** 0.5
        buffer = io.BytesIO()
        image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC).save(
            buffer, "JPEG", quality=90)
        photos[index] = (label, buffer.getvalue())
    return photos


# ---- the model repository -------------------------------------------------------------------------------------------

def filled_onnx(source: Path, destination: Path, seed: int = 0) -> bool:
    """Copies an ONNX file as it was before the trip (carry.py): a graph whose weights were stripped gets random ones
    of the same shapes, one whose weights were halved gets them back as float32. Returns True when the weights are
    real."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    metadata = {p.key: p.value for p in model.metadata_props}
    stripped = "weights_stripped" in metadata
    halved = set(metadata.get("weights_halved", "").split("\n")) - {""}
    generator = np.random.default_rng(seed)
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.name in halved and tensor.data_type == onnx.TensorProto.FLOAT16:
            values = numpy_helper.to_array(tensor).astype(np.float32)
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(values, tensor.name))
        elif stripped and tensor.data_type == onnx.TensorProto.FLOAT and not tensor.raw_data and not tensor.float_data:
            shape = list(tensor.dims)
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            values = (generator.standard_normal(shape) * (1.0 / max(fan_in, 1)) ** 0.5).astype(np.float32)
            if len(shape) == 1:
                values = np.ones(shape, np.float32) if "var" in tensor.name or "gamma" in tensor.name \
                    or "scale" in tensor.name else np.zeros(shape, np.float32)
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(values, tensor.name))
    for key in ("weights_stripped", "weights_halved"):
        kept = [p for p in model.metadata_props if p.key != key]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
    destination.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(destination))
    return not stripped


def production_repository(models: Path, destination: Path) -> dict[str, bool]:
    """triton_models/'s configs with the carried ONNX files, each as the version the carried fusion.json names (1
    without one), and that fusion.json beside them (what the services read); returns model -> real weights."""
    from services.common.fusion_file import FUSION_FILE, FusionConfig

    shutil.rmtree(destination, ignore_errors=True)
    destination.mkdir(parents=True)
    versions = {}
    if (models / FUSION_FILE).exists():
        shutil.copy(models / FUSION_FILE, destination / FUSION_FILE)
        versions = FusionConfig.load(models / FUSION_FILE).versions
    real = {}
    for config in sorted((REPOSITORY_ROOT / "triton_models").glob("*/config.pbtxt")):
        name = config.parent.name
        target = destination / name
        target.mkdir(parents=True)
        for extra in config.parent.iterdir():
            if extra.is_file():
                shutil.copy(extra, target / extra.name)
        if (models / f"{name}.onnx").exists():
            real[name] = filled_onnx(models / f"{name}.onnx", target / str(versions.get(name, 1)) / "model.onnx")
    return real


# What runs the CNNs in their Python-backend models: PyTorch on the graphs converted by onnx2torch, FP16 autocast; or
# ONNX Runtime's CUDA provider on the graphs converted to FP16 (onnxruntime-gpu carried in parts: gpu_host/ort_gpu.py).
ENGINES = {"torch": GPU_MODELS / "torch_onnx_model.py", "ort-cuda": GPU_MODELS / "ort_cuda_model.py"}


def gpu_repository(production: Path, destination: Path, kind: str = "cpu", instances: int = 0,
                   engine: str = "torch", pillow_decode: bool = False,
                   as_formed_copies: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """The CUDA twins of every model, on Triton instances of `kind`. They run on the GPU whenever CUDA is there,
    whatever the kind (and on the CPU without one: a rehearsal). KIND_CPU instances that use the GPU themselves are
    what was measured on the H200 (2026-11-26); KIND_GPU was tried only before the DLPack fix (both kinds then
    answered empty outputs). pillow_decode: photo_decode is the local stack's Pillow twin instead of nvJPEG's.
    as_formed_copies: classifiers also served as `<name>_as_formed`, running each batch at the size the batcher
    formed (ort_cuda_model.py's BATCH_AS_FORMED), for the mixed-batch measurement beside the served ones."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from services.localstack.triton_cpu import build_python_repository

    kinds = {"gpu": model_config_pb2.ModelInstanceGroup.KIND_GPU, "cpu": model_config_pb2.ModelInstanceGroup.KIND_CPU}
    decode = (REPOSITORY_ROOT / "services" / "localstack" / "photo_decode_python.py" if pillow_decode
              else GPU_MODELS / "photo_decode_nvjpeg.py")
    classifiers, composed = build_python_repository(production, destination, ENGINES[engine], decode, kinds[kind],
                                                    instances)
    for name in as_formed_copies:
        copy = destination / f"{name}{AS_FORMED_SUFFIX}"
        shutil.copytree(destination / name, copy, symlinks=True)
        config = text_format.Parse((copy / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        config.name = copy.name
        config.parameters["batch"].string_value = "as_formed"
        (copy / "config.pbtxt").write_text(text_format.MessageToString(config))
        classifiers.append(copy.name)
    return classifiers, composed


AS_FORMED_SUFFIX = "_as_formed"
# Batch sizes as the dynamic batcher forms them when listings arrive one by one from several workers (the pipeline's
# requests of 31 photos fell to 1 to 32 per execution): the mixed-batch measurement cycles through them.
MIXED_BATCHES = (32, 31, 7, 24, 1, 16, 29, 12, 32, 5, 20, 27)


# ---- measuring ------------------------------------------------------------------------------------------------------

def _cpu_path_worker(job: tuple[str, list[str], list[bytes]]) -> tuple[int, float, dict[str, list[int]]]:
    """The preprocessing service's CPU path: its own image code and its own Triton client (one request per batch to
    pixels_ensemble, the service's default, which runs every called model)."""
    from services.common.decode_path import PIXELS_ENSEMBLE
    from services.preprocessing.images import ImageLimits, prepare_image
    from services.preprocessing.triton_models import TritonClassifier

    url, names, photos = job
    classifier = TritonClassifier(url, names, pixels_ensemble=PIXELS_ENSEMBLE)
    classifier.start()
    sizes = sorted(set(classifier.input_sizes()))
    limits = ImageLimits()
    began = time.process_time()
    top1: dict[str, list[int]] = {name: [] for name in names}
    for start in range(0, len(photos), BATCH):
        prepared = [prepare_image(data, sizes, limits, THUMBNAIL_SIZE) for data in photos[start:start + BATCH]]
        answers = classifier.classify({size: np.stack([p.tensors[size] for p in prepared]) for size in sizes})
        for name in names:
            top1[name] += answers[name].argmax(axis=1).tolist()
    elapsed = time.process_time() - began
    classifier.stop()
    return len(photos), elapsed, top1


def _gpu_path_worker(job: tuple[str, list[str], list[bytes]]) -> tuple[int, float, dict[str, list[int]]]:
    """The preprocessing service's GPU decode path: the header check and digest, then its own client sending the
    bytes to photo_ensemble, which also makes the thumbnail; the worker encodes it as the service does."""
    from services.common.decode_path import ENSEMBLE_MODEL, THUMBNAIL_OUTPUT, THUMBNAIL_SHAPE_OUTPUT
    from services.preprocessing.images import ImageLimits, prepare_encoded, thumbnail_from_pixels
    from services.preprocessing.triton_models import TritonClassifier

    url, names, photos = job
    classifier = TritonClassifier(url, names, ensemble=ENSEMBLE_MODEL)
    classifier.start()
    limits = ImageLimits()
    began = time.process_time()
    top1: dict[str, list[int]] = {name: [] for name in names}
    for start in range(0, len(photos), BATCH):
        prepared = [prepare_encoded(data, limits, THUMBNAIL_SIZE, thumbnail_in_triton=True)
                    for data in photos[start:start + BATCH]]
        answers, failed = classifier.classify_photos([p.encoded for p in prepared], thumbnails=True)
        if failed:
            raise RuntimeError(f"photo_ensemble refused {len(failed)} photos: {next(iter(failed.values()))}")
        for row in range(len(prepared)):
            thumbnail_from_pixels(answers[THUMBNAIL_OUTPUT][row], answers[THUMBNAIL_SHAPE_OUTPUT][row], THUMBNAIL_SIZE)
        for name in names:
            top1[name] += answers[name].argmax(axis=1).tolist()
    elapsed = time.process_time() - began
    classifier.stop()
    return len(photos), elapsed, top1


def run_path(worker, url: str, names: list[str], photos: list[bytes], workers: int, triton_pid: int,
             metrics_port: int) -> dict:
    """Every photo through `workers` processes, each handed a contiguous share (batches of BATCH); with what the run
    asked of each model (Triton's counters: requests, batch sizes, queue and compute milliseconds)."""
    # after the carried packages are on the path
    from services.drivers.benchmarks.gpu_host.pipeline import calls_between, triton_model_counters
    from services.drivers.benchmarks.pipeline_runs import process_tree_cpu_s
    share = -(-len(photos) // workers)
    jobs = [(url, names, photos[i:i + share]) for i in range(0, len(photos), share)]
    with get_context("spawn").Pool(len(jobs)) as pool:
        pool.map(worker, [(url, names, photos[:BATCH])] * len(jobs))  # warm: imports, connections, Triton's kernels
        triton_before = process_tree_cpu_s(triton_pid)
        counters_before = triton_model_counters(metrics_port)
        started = time.perf_counter()
        results = pool.map(worker, jobs)
        elapsed = time.perf_counter() - started
        triton_cpu = process_tree_cpu_s(triton_pid) - triton_before
        calls = calls_between(counters_before, triton_model_counters(metrics_port))
    count = sum(r[0] for r in results)
    top1 = {name: sum((r[2][name] for r in results), []) for name in results[0][2]}
    return {"workers": len(jobs), "listings": count, "listings_per_s": round(count / elapsed, 1),
            "workers_cpu_ms_per_listing": round(1000 * sum(r[1] for r in results) / count, 3),
            "triton_cpu_ms_per_listing": round(1000 * triton_cpu / count, 3), "triton_calls": calls, "top1": top1}


def triton_direct_mixed(url: str, model: str, input_name: str, images: np.ndarray, output: str, rounds: int,
                        concurrency: int = 4) -> dict[str, float]:
    """Images/s through one model when each request's batch size differs from the last (MIXED_BATCHES, cycled), and
    Triton's mean compute milliseconds per execution (its statistics API, exact where the metrics endpoint may lag);
    `images` holds at least max(MIXED_BATCHES) rows."""
    import tritonclient.grpc as triton_grpc

    client = triton_grpc.InferenceServerClient(url)

    def statistics() -> tuple[int, int, int]:  # executions, images, compute nanoseconds
        stats = client.get_inference_statistics(model_name=model).model_stats[0]
        return stats.execution_count, stats.inference_count, stats.inference_stats.compute_infer.ns

    requests = []
    for size in MIXED_BATCHES:
        request = triton_grpc.InferInput(input_name, [size, *images.shape[1:]], "UINT8")
        request.set_data_from_numpy(np.ascontiguousarray(images[:size]))
        requests.append((size, request))
    wanted = [triton_grpc.InferRequestedOutput(output)]

    def call(index: int) -> int:
        size, request = requests[index % len(requests)]
        answer = client.infer(model, [request], outputs=wanted).as_numpy(output)
        if answer is None or answer.shape[0] != size:
            raise RuntimeError(f"{model} answered {None if answer is None else answer.shape} for {size} images")
        return size

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(call, range(len(requests))))  # every size once before the clock starts
        before = statistics()
        started = time.perf_counter()
        sent = sum(pool.map(call, range(rounds)))
        elapsed = time.perf_counter() - started
        executions, count, compute_ns = (b - a for a, b in zip(before, statistics()))
    client.close()
    return {"images_per_s": round(sent / elapsed, 1), "executions": executions,
            "compute_ms_per_execution": round(compute_ns / max(executions, 1) / 1e6, 2),
            "images_per_execution": round(count / max(executions, 1), 1)}


def triton_direct(url: str, model: str, inputs: dict[str, np.ndarray], outputs: list[str], concurrency: int,
                  rounds: int) -> float:
    """Images/s through one model or ensemble for `rounds` requests of `inputs` (name -> uint8 batch), `concurrency`
    in flight; every output is checked to be probabilities first."""
    import tritonclient.grpc as triton_grpc

    client = triton_grpc.InferenceServerClient(url)
    request = []
    for name, tensors in inputs.items():
        request.append(triton_grpc.InferInput(name, list(tensors.shape), "UINT8"))
        request[-1].set_data_from_numpy(tensors)
    wanted = [triton_grpc.InferRequestedOutput(name) for name in outputs]
    images = len(next(iter(inputs.values())))

    def call(_):
        client.infer(model, request, outputs=wanted)

    answer = client.infer(model, request, outputs=wanted)
    for name in outputs:
        values = answer.as_numpy(name)
        if values is None or values.shape[0] != images or not np.allclose(values.sum(axis=1), 1, atol=1e-2):
            raise RuntimeError(f"{model} answered {name} {None if values is None else values.shape}, not probabilities")

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(call, range(concurrency)))
        started = time.perf_counter()
        list(pool.map(call, range(rounds)))
        elapsed = time.perf_counter() - started
    client.close()
    return images * rounds / elapsed


def torch_direct(models: Path, batch: int) -> dict[str, float]:
    """Images/s of each CNN on the GPU without Triton: the published graphs (onnx2torch) and, at the research's input
    sizes, torchvision's ResNet50 (224) and InceptionV3 (299), FP16 autocast, uint8 in."""
    import onnx
    import torch

    from services.drivers.benchmarks.gpu_host.onnx_torch import to_torch

    figures = {}
    candidates = {}
    for path in sorted(models.glob("*.onnx")):
        filled = models.parent / "filled" / path.name
        filled_onnx(path, filled)
        graph = onnx.load(str(filled))
        dims = [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim[1:]]
        candidates[f"{path.stem} ({dims[0]} px, published graph)"] = (lambda f=filled: to_torch(f), dims, "nhwc")
    try:
        import torchvision

        candidates["resnet50 (224 px, torchvision)"] = (lambda: torchvision.models.resnet50(num_classes=10),
                                                       [3, 224, 224], "nchw")
        candidates["inception_v3 (299 px, torchvision)"] = (
            lambda: torchvision.models.inception_v3(num_classes=10, aux_logits=False, init_weights=False),
            [3, 299, 299], "nchw")
    except ImportError:
        pass
    for label, (build, dims, layout) in candidates.items():
        model = build().eval().cuda()
        if layout == "nhwc":
            images = torch.randint(0, 256, [batch] + dims, dtype=torch.uint8, device="cuda")
        else:
            model = model.to(memory_format=torch.channels_last)
            images = torch.rand([batch] + dims, device="cuda").to(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
            for _ in range(3):
                model(images)
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            times = []
            for _ in range(5):
                start.record()
                for _ in range(10):
                    model(images)
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 10)
        figures[label] = round(batch / (float(np.median(times)) / 1000), 1)
        print(f"  torch direct {label}: {figures[label]:.0f} images/s (batch {batch}, FP16)", flush=True)
        del model
        torch.cuda.empty_cache()
    return figures


def called_models(repository: Path) -> list[str]:
    """The models the published fusion calls, as photo_ensemble's steps name them (fusion.json itself is not
    committed, so it does not travel to the lent machine; the ensemble's configuration, written with it, does)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from services.common.decode_path import DECODE_MODEL, ENSEMBLE_MODEL

    config = text_format.Parse((repository / ENSEMBLE_MODEL / "config.pbtxt").read_text(),
                               model_config_pb2.ModelConfig())
    return sorted(step.model_name for step in config.ensemble_scheduling.step if step.model_name != DECODE_MODEL)


def decode_direct(photos: list[bytes], sizes: list[int]) -> dict[str, float]:
    """Decode and resize to each size the called models take: nvJPEG batches on the GPU against the preprocessing
    service's Pillow path on one CPU core. Images/s and CPU-ms per image."""
    import torch
    import torch.nn.functional as F
    from torchvision.io import ImageReadMode, decode_jpeg

    from services.preprocessing.images import ImageLimits, prepare_image

    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in photos]

    def gpu_round():
        for start in range(0, len(tensors), BATCH):
            for image in decode_jpeg(tensors[start:start + BATCH], mode=ImageReadMode.RGB, device="cuda"):
                for size in sizes:
                    _, h, w = image.shape
                    scale = size / max(h, w)
                    F.interpolate(image[None].float(), size=(max(1, round(h * scale)), max(1, round(w * scale))),
                                  mode="bilinear", antialias=True)
        torch.cuda.synchronize()

    gpu_round()
    cpu_began, began = time.process_time(), time.perf_counter()
    gpu_round()
    gpu_s, gpu_cpu_s = time.perf_counter() - began, time.process_time() - cpu_began
    limits = ImageLimits()
    sample = photos[:min(len(photos), 120)]
    cpu_began, began = time.process_time(), time.perf_counter()
    for data in sample:
        prepare_image(data, sizes, limits)
    pillow_s = time.perf_counter() - began
    return {"nvjpeg_images_per_s": round(len(photos) / gpu_s, 1),
            "nvjpeg_cpu_ms_per_image": round(1000 * gpu_cpu_s / len(photos), 3),
            "pillow_one_core_images_per_s": round(len(sample) / pillow_s, 1),
            "pillow_cpu_ms_per_image": round(1000 * (time.process_time() - cpu_began) / len(sample), 3)}


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # a rehearsal with --cpu-twins on a machine without PyTorch
        return False
    return torch.cuda.is_available()


def environment() -> dict:
    try:
        import torch
    except ImportError:
        torch = None
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    except OSError:
        smi = ""
    try:  # whether this machine's ONNX Runtime could run the published graphs on the GPU itself
        import onnxruntime

        providers = onnxruntime.get_available_providers()
    except ImportError:
        providers = []
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "absent"

    cuda = torch is not None and torch.cuda.is_available()
    return {"gpu": smi or (torch.cuda.get_device_name(0) if cuda else "none"),
            "torch": torch.__version__ if torch else "absent", "cpu_cores": os.cpu_count(), "python": platform.python_version(),
            "onnxruntime_providers": providers,
            "packages": {name: installed(name) for name in ("numpy", "pillow", "grpcio", "protobuf", "onnxruntime",
                                                            "onnxruntime-gpu", "tensorrt", "nvidia-dali-cuda120")},
            "cpu": next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("model name")), platform.processor())}


def python_library_dirs(bundle: Path) -> list[str]:
    """The Python backend's stub for this interpreter links libpython; finds it (a Python built without the shared
    library has none, and the stub cannot start) or raises with what is missing."""
    import glob
    import sysconfig

    stub = bundle / "pytriton" / "tritonserver" / "python_backend_stubs" / \
        f"{sys.version_info.major}.{sys.version_info.minor}" / "triton_python_backend_stub"
    name = f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0"
    candidates = (sysconfig.get_config_var("LIBDIR"), f"{sys.base_prefix}/lib", "/usr/lib/x86_64-linux-gnu",
                  "/usr/local/lib")
    dirs = [d for d in candidates if d and glob.glob(f"{d}/{name}")] or [sysconfig.get_config_var("LIBDIR") or ""]
    env = {**os.environ, "LD_LIBRARY_PATH": ":".join(dirs + [str(bundle / "nvidia_pytriton.libs")])}
    missing = [line.strip() for line in subprocess.run(["ldd", str(stub)], capture_output=True, text=True,
                                                       env=env).stdout.splitlines() if "not found" in line]
    if missing:
        raise RuntimeError(f"the Python backend stub cannot start here: {'; '.join(missing)}")
    return dirs


def accuracy(top1: list[int], labels: list[str], categories: list[str]) -> float:
    return round(float(np.mean([categories[p] == label for p, label in zip(top1, labels)])), 4)


def nvidia_library_dirs() -> list[str]:
    """The CUDA libraries the GPU image's PyTorch installed as packages (nvidia/<name>/lib, nvidia/cu13/lib), which
    onnxruntime-gpu's CUDA provider links by name."""
    found = []
    for entry in sys.path:
        for lib in sorted(Path(entry or ".").glob("nvidia/*/lib")):
            if lib.is_dir() and str(lib) not in found:
                found.append(str(lib))
    return found


def unpack_carried(carried: Path, work_dir: Path, first: tuple[Path, ...] = ()) -> None:
    """What the carried folder holds beside the models and photos, made usable here: the tritonserver bundle, the
    services' packages for this Python (wheels, installed into work_dir/site) and the broker's binary. Sets the
    variables the stack's processes find them by (PYTHONPATH, TRITONSERVER_BUNDLE, TANSU_BINARY). `first`: folders
    of packages that go before everything else (onnxruntime-gpu before the machine's own onnxruntime)."""
    from services.drivers.benchmarks.gpu_host.carry import STUB_PYTHON

    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if running != STUB_PYTHON:
        raise SystemExit(f"the carried wheels and Triton's Python stub are for Python {STUB_PYTHON} (the GPU machines'): "
                         f"run this with a Python {STUB_PYTHON}, not {running}")
    bundle = work_dir / "tritonserver"
    if not bundle.exists():
        bundle.mkdir()
        subprocess.run(["tar", "-xJf", str(carried / "tritonserver.tar.xz"), "-C", str(bundle)], check=True)
    os.environ["TRITONSERVER_BUNDLE"] = str(bundle)
    site = work_dir / "site"
    if not site.exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--target", str(site), *map(str, sorted((carried / "wheels").glob("*.whl")))], check=True)
    paths = [*map(str, first), str(site), str(REPOSITORY_ROOT)]
    for path in reversed(paths):
        sys.path.insert(0, path)
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(":") if p]
    # the services run as `python -m services.<name>` and see these; the Python backend's stubs embed this
    # interpreter but ignore PYTHONPATH: the models put what was carried on their path from GPU_BENCH_PYTHONPATH
    os.environ["PYTHONPATH"] = os.environ["GPU_BENCH_PYTHONPATH"] = ":".join(paths + inherited)
    packed_broker = carried / "tansu.xz"
    if packed_broker.exists():
        broker = work_dir / "tansu"
        if not broker.exists():
            with lzma.open(packed_broker) as source, broker.open("wb") as target:
                shutil.copyfileobj(source, target)
            broker.chmod(0o755)
        os.environ["TANSU_BINARY"] = str(broker)


def efficiency(pipeline: dict[str, dict], direct_listings_per_s: float | None) -> dict[str, float]:
    """Each pipeline run's listings/s over what Triton alone allows (pixels_ensemble straight, batch 32)."""
    if not direct_listings_per_s:
        return {}
    return {key: round(run["listings_per_s"] / direct_listings_per_s, 3) for key, run in pipeline.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--carried", type=Path, default=REPOSITORY_ROOT / ".gpu", help="what carry.py packed")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/bench-gpu"))
    parser.add_argument("--workers", default="4,14", help="worker processes per path at Triton's door, comma-separated "
                        "(empty: skip that part)")
    parser.add_argument("--pipeline-workers", default="1,2,4", help="preprocessing workers per path for the whole "
                        "pipeline through Kafka, comma-separated (empty: skip it)")
    parser.add_argument("--pipeline-paths", default="gpu_decode_path,cpu_path", help="which paths the pipeline runs "
                        "take, in this order (comma-separated: gpu_decode_path, cpu_path)")
    parser.add_argument("--pipeline-transports", default="grpc", help="how the pipeline's workers send the "
                        "ensembles' tensors, each in turn (comma-separated: grpc, shared_memory: "
                        "PREPROCESSING_TRITON_SHARED_MEMORY, Triton being on the workers' host)")
    parser.add_argument("--pipeline-repeat", type=int, default=6, help="each pipeline run sends every photo this "
                        "many times (as listings of their own)")
    parser.add_argument("--instance-kind", choices=("gpu", "cpu"), default="cpu",
                        help="Triton's instance kind for the models (they use the GPU themselves either way)")
    parser.add_argument("--instances", type=int, default=0, help="Triton instances of each Python-backend twin (0: "
                        "the production config's count; each twin spends a Python round per request)")
    parser.add_argument("--torch-threads", type=int, default=0, help="PyTorch's CPU threads in each GPU model's "
                        "stub process (0: PyTorch's default, one per core in every stub)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N photos (0: all)")
    parser.add_argument("--repeat", type=int, default=4, help="each path at Triton's door sends every photo this "
                        "many times")
    parser.add_argument("--direct-rounds", type=int, default=160, help="requests per model straight to Triton")
    parser.add_argument("--mixed-rounds", type=int, default=48, help="requests per called model straight to Triton "
                        "with the batch size changing between them")
    parser.add_argument("--engine", choices=sorted(ENGINES), default="torch", help="what runs the CNNs: PyTorch "
                        "(FP16 autocast) or ONNX Runtime's CUDA provider (FP16 graph; onnxruntime-gpu must have "
                        "arrived in parts first: python -m services.drivers.benchmarks.gpu_host.ort_gpu)")
    parser.add_argument("--ort-batch", choices=("fixed", "as_formed", "both"), default="fixed",
                        help="--engine ort-cuda: run every call at the max batch size (fixed) or at the size the "
                        "batcher formed; both: fixed, with as_formed copies of the called models measured beside "
                        "them with mixed batch sizes")
    parser.add_argument("--cpu-twins", action="store_true", help="serve the models as the local stack does "
                        "(onnxruntime on the CPU, no PyTorch needed): a rehearsal of this command on a machine "
                        "without a GPU, with what `make gpu-carry` packed; with --engine ort-cuda, that engine's "
                        "model on the CPU provider, photo_decode the Pillow twin")
    parser.add_argument("--ort-parts", type=Path, default=REPOSITORY_ROOT / ".gpu-ort",
                        help="where the parts of onnxruntime-gpu arrived (--engine ort-cuda)")
    parser.add_argument("--skip-direct", action="store_true", help="skip nvJPEG against Pillow and the CNNs in "
                        "PyTorch without Triton (measured before: README)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/bench-gpu-out")))
    options = parser.parse_args()
    pipeline_paths = [p for p in options.pipeline_paths.split(",") if p]
    if unknown := sorted(set(pipeline_paths) - set(PIPELINE_PATHS)):
        parser.error(f"--pipeline-paths: unknown {', '.join(unknown)} (known: {', '.join(PIPELINE_PATHS)})")
    pipeline_transports = [t for t in options.pipeline_transports.split(",") if t]
    if unknown := sorted(set(pipeline_transports) - set(PIPELINE_TRANSPORTS)):
        parser.error(f"--pipeline-transports: unknown {', '.join(unknown)} (known: {', '.join(PIPELINE_TRANSPORTS)})")
    os.environ["GPU_BENCH_TORCH_THREADS"] = str(options.torch_threads)  # read by the stubs (gpu_host/torch_threads.py)
    # read by gpu_host/ort_cuda_model.py
    os.environ["GPU_BENCH_ORT_BATCH"] = "as_formed" if options.ort_batch == "as_formed" else "fixed"
    as_formed_copies = options.ort_batch == "both" and options.engine == "ort-cuda"
    missing = [name for name in ("photos", "models", "wheels", "tritonserver.tar.xz")
               if not (options.carried / name).exists()]
    if missing:
        print(f"{options.carried} lacks {', '.join(missing)}: run `make gpu-carry` first (on a machine with the "
              "models and the project's .venv)", file=sys.stderr)
        return 2
    options.out.mkdir(parents=True, exist_ok=True)
    options.work_dir.mkdir(parents=True, exist_ok=True)
    first = ()
    if options.engine == "ort-cuda":
        from services.drivers.benchmarks.gpu_host.ort_gpu import PackError, assemble

        try:
            first = (assemble(options.ort_parts, options.work_dir / "ort-site"),)
        except PackError as error:
            print(f"--engine ort-cuda: {error}", file=sys.stderr)
            return 2
    unpack_carried(options.carried, options.work_dir, first)

    def save(report: dict) -> None:  # after every part: a run cut short still leaves what it measured
        (options.out / "bench_gpu.json").write_text(json.dumps(report, indent=2))

    report: dict = {"environment": environment(), "options": {k: str(v) for k, v in vars(options).items()}}
    print(json.dumps(report["environment"]), flush=True)
    photos = load_photos(options.carried / "photos")
    photos = photos[:options.limit] if options.limit else photos
    labels, encoded = [p[0] for p in photos], [p[1] for p in photos]
    print(f"{len(photos)} validation photos, every other one re-encoded at about 2 MP", flush=True)

    from services.common.decode_path import PIXELS_ENSEMBLE
    from services.localstack.triton_cpu import PILLOW_DECODE_MODEL, LocalTriton, build_cpu_repository

    production = options.work_dir / "production"
    real = production_repository(options.carried / "models", production)
    report["real_weights"] = real
    triton = LocalTriton(production, options.work_dir / "triton",
                         # the GPU machines' Python has no DALI: photo_decode is its Pillow twin there
                         build_repository=(lambda source, target: build_cpu_repository(source, target,
                                                                                       PILLOW_DECODE_MODEL))
                         if options.cpu_twins and options.engine == "torch" else
                         lambda source, target: gpu_repository(source, target, options.instance_kind,
                                                               options.instances, options.engine, options.cpu_twins,
                                                               tuple(called_models(REPOSITORY_ROOT / "triton_models"))
                                                               if as_formed_copies else ()),
                         restricted=False)  # the measured rig, reachable from the lent machine only
    names, specs = [], []
    try:
        bundle = Path(os.environ["TRITONSERVER_BUNDLE"])
        os.environ["LD_LIBRARY_PATH"] = ":".join(python_library_dirs(bundle) + nvidia_library_dirs()
                                                 + [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p])
        began = time.perf_counter()
        triton.start(timeout_s=240)
        print(f"tritonserver ready in {time.perf_counter() - began:.0f} s", flush=True)
        names = called_models(REPOSITORY_ROOT / "triton_models")  # what preprocessing calls, on either path
        categories = (REPOSITORY_ROOT / "triton_models" / "efficientnet_lite0" / "labels.txt").read_text().split()
        pid = triton._process.process.pid

        import tritonclient.grpc as triton_grpc

        from services.preprocessing.images import ImageLimits, prepare_image
        from services.preprocessing.triton_models import read_model_spec

        client = triton_grpc.InferenceServerClient(triton.grpc_url)
        specs = [read_model_spec(client, name) for name in sorted(triton.model_names)]  # every served model
        client.close()
        prepared = [prepare_image(d, [s.input_size for s in specs], ImageLimits()) for d in encoded[:BATCH]]
        report["triton_direct_images_per_s"] = {}
        for spec in specs:
            tensors = np.stack([p.tensors[spec.input_size] for p in prepared])
            rate = triton_direct(triton.grpc_url, spec.name, {spec.input_name: tensors}, [spec.output_name],
                                 concurrency=8, rounds=options.direct_rounds)
            report["triton_direct_images_per_s"][f"{spec.name} ({spec.input_size} px)"] = round(rate, 1)
            print(f"  triton direct {spec.name} at {spec.input_size} px: {rate:.0f} images/s "
                  f"(batch {BATCH}, 8 in flight)", flush=True)
        # What the CPU path asks of Triton per batch: every called model at once through pixels_ensemble; a listing
        # needs each of them, so this is the most listings/s the models allow (the pipeline's efficiency is over it)
        called_sizes = sorted({spec.input_size for spec in specs if spec.name in names})
        rate = triton_direct(triton.grpc_url, PIXELS_ENSEMBLE,
                             {f"image_{size}": np.stack([p.tensors[size] for p in prepared]) for size in called_sizes},
                             [f"{name}_probabilities" for name in names], concurrency=8, rounds=options.direct_rounds)
        report["triton_direct_listings_per_s"] = round(rate, 1)
        print(f"  triton direct {PIXELS_ENSEMBLE} ({', '.join(names)}): {rate:.0f} listings/s", flush=True)
        # The same models with the batch size changing from one request to the next, as in the pipeline
        report["triton_direct_mixed_batches"] = {}
        for spec in specs:
            if spec.name not in names and spec.name.removesuffix(AS_FORMED_SUFFIX) not in names:
                continue
            figures = triton_direct_mixed(triton.grpc_url, spec.name, spec.input_name,
                                          np.stack([p.tensors[spec.input_size] for p in prepared]), spec.output_name,
                                          rounds=options.mixed_rounds)
            report["triton_direct_mixed_batches"][spec.name] = figures
            print(f"  triton direct {spec.name}, batch sizes {MIXED_BATCHES} in turn: {json.dumps(figures)}",
                  flush=True)
        save(report)

        report["paths"] = {}
        for workers in [int(w) for w in options.workers.split(",") if w]:
            for path_name, worker in (("cpu_path", _cpu_path_worker), ("gpu_decode_path", _gpu_path_worker)):
                figures = run_path(worker, triton.grpc_url, names, encoded * options.repeat, workers, pid,
                                   triton.metrics_port)
                top1 = figures.pop("top1")
                figures["efficientnet_lite0_top1"] = accuracy(top1["efficientnet_lite0"][:len(labels)], labels,
                                                              categories) if real.get("efficientnet_lite0") else None
                report["paths"][f"{path_name}, {workers} workers"] = figures
                print(f"  {path_name}, {workers} workers: {json.dumps(figures)}", flush=True)
                save(report)

        pipeline_workers = [int(w) for w in options.pipeline_workers.split(",") if w]
        if pipeline_workers:
            from services.drivers.benchmarks.gpu_host.pipeline import pipeline_runs

            report["pipeline"] = {}

            def pipeline_run_done(key: str, figures: dict) -> None:
                report["pipeline"][key] = figures
                report["pipeline_efficiency"] = efficiency(report["pipeline"], report["triton_direct_listings_per_s"])
                save(report)

            kinds = ["2mp" if index % 2 == 0 else "original" for index in range(len(encoded))]  # as load_photos made
            pipeline_runs(triton, production, list(zip(encoded, kinds)) * options.pipeline_repeat,
                          options.work_dir / "pipeline", pipeline_workers, pipeline_paths, report=pipeline_run_done,
                          transports=pipeline_transports)
    except Exception as error:  # noqa: BLE001  (what was measured, and the torch figures below, still come back)
        report["triton_error"] = f"{type(error).__name__}: {error}"
        print(f"Triton part failed: {report['triton_error']}", flush=True)
    finally:
        triton.stop()
        # one archive: a lent machine sends back at most 8 files
        with tarfile.open(options.out / "logs.tar.gz", "w:gz") as logs:
            for log in [options.work_dir / "triton" / "tritonserver.log",
                        *sorted((options.work_dir / "pipeline").glob("*/*.log"))]:
                if log.exists():
                    logs.add(log, str(log.relative_to(options.work_dir)))
        save(report)

    if not (options.skip_direct or options.cpu_twins) and cuda_available():  # without a GPU they say nothing
        sizes = sorted({spec.input_size for spec in specs if spec.name in names})
        report["decode_direct"] = decode_direct(encoded, sizes)
        print(f"  decode direct: {json.dumps(report['decode_direct'])}", flush=True)
        save(report)
        report["torch_direct_images_per_s"] = torch_direct(options.carried / "models", batch=256)
    save(report)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
