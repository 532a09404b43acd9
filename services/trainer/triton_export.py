"""Exports a Keras classifier to ONNX as a new numbered version of a Triton model, and keeps config.pbtxt in step.

The ONNX file is checked against the framework on a batch before the version directory is published, so a broken
export never reaches Triton; older versions stay until the new one is verified.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"


class ExportVerificationError(RuntimeError):
    """The exported ONNX graph disagrees with the framework's outputs."""


@dataclass(frozen=True)
class ExportedVersion:
    model_name: str
    version: int
    onnx_path: Path
    max_abs_difference: float


# Where the ONNX Runtime backend keeps the TensorRT engines it builds (a writable volume beside the read-only model
# repository: docker-compose.yml and deploy/base/triton.yaml mount one), so a restart loads them instead of rebuilding.
TRT_ENGINE_CACHE = "/trt-cache"


def tensorrt_fp16(input_size: int, max_batch_size: int) -> model_config_pb2.ModelOptimizationPolicy:
    """ONNX Runtime's TensorRT provider in FP16 (the CUDA provider runs whatever TensorRT cannot), with one
    optimisation profile covering every batch the dynamic batcher can form, so no engine is rebuilt at run time."""
    shape = f"{input_size}x{input_size}x3"
    parameters = {"precision_mode": "FP16", "max_workspace_size_bytes": str(2 << 30),
                  "trt_engine_cache_enable": "1", "trt_engine_cache_path": TRT_ENGINE_CACHE,
                  "trt_timing_cache_enable": "1", "trt_timing_cache_path": TRT_ENGINE_CACHE,
                  "trt_profile_min_shapes": f"{INPUT_NAME}:1x{shape}",
                  "trt_profile_opt_shapes": f"{INPUT_NAME}:{max(1, max_batch_size // 2)}x{shape}",
                  "trt_profile_max_shapes": f"{INPUT_NAME}:{max_batch_size}x{shape}"}
    Accelerator = model_config_pb2.ModelOptimizationPolicy.ExecutionAccelerators.Accelerator
    return model_config_pb2.ModelOptimizationPolicy(
        execution_accelerators=model_config_pb2.ModelOptimizationPolicy.ExecutionAccelerators(
            gpu_execution_accelerator=[Accelerator(name="tensorrt", parameters=parameters)]))


def production_config(model_name: str, input_size: int, class_count: int, max_batch_size: int = 32) -> str:
    """The GPU serving config.pbtxt: ONNX Runtime on the GPU through TensorRT in FP16, uint8 NHWC input, dynamic
    batching."""
    config = model_config_pb2.ModelConfig(
        name=model_name,
        platform="onnxruntime_onnx",
        max_batch_size=max_batch_size,
        input=[model_config_pb2.ModelInput(
            name=INPUT_NAME, data_type=model_config_pb2.TYPE_UINT8, format=model_config_pb2.ModelInput.FORMAT_NHWC,
            dims=[input_size, input_size, 3])],
        output=[model_config_pb2.ModelOutput(
            name=OUTPUT_NAME, data_type=model_config_pb2.TYPE_FP32, dims=[class_count], label_filename="labels.txt")],
        instance_group=[model_config_pb2.ModelInstanceGroup(count=1, kind=model_config_pb2.ModelInstanceGroup.KIND_GPU)],
        dynamic_batching=model_config_pb2.ModelDynamicBatching(
            preferred_batch_size=[8, 16, max_batch_size], max_queue_delay_microseconds=2000),
        version_policy=model_config_pb2.ModelVersionPolicy(
            latest=model_config_pb2.ModelVersionPolicy.Latest(num_versions=1)),
        optimization=tensorrt_fp16(input_size, max_batch_size),
        # Run once at load at the smallest and largest batch, so the first real requests don't pay for allocation.
        model_warmup=[model_config_pb2.ModelWarmup(
            name=f"zeros_batch_{batch}", batch_size=batch, count=1,
            inputs={INPUT_NAME: model_config_pb2.ModelWarmup.Input(
                data_type=model_config_pb2.TYPE_UINT8, dims=[input_size, input_size, 3], zero_data=True)})
            for batch in (1, max_batch_size)],
    )
    return text_format.MessageToString(config)


def _next_version(model_dir: Path) -> int:
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()] if model_dir.exists() else []
    return max(versions, default=0) + 1


def _export_onnx(model, input_size: int, destination: Path) -> None:
    import torch  # the torch backend's model is a torch.nn.Module

    sample = np.zeros((1, input_size, input_size, 3), np.uint8)
    model(sample)  # Keras builds the torch graph on first call
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings are about Python constants Keras uses on purpose
        model.export(str(destination), format="onnx", verbose=False)
    graph = onnx.load(str(destination))
    # Keras names the output after an internal node; Triton clients address it by a stable name.
    old_name = graph.graph.output[0].name
    for node in graph.graph.node:
        node.output[:] = [OUTPUT_NAME if name == old_name else name for name in node.output]
    graph.graph.output[0].name = OUTPUT_NAME
    graph.graph.input[0].name = INPUT_NAME if graph.graph.input[0].name == INPUT_NAME else graph.graph.input[0].name
    onnx.checker.check_model(graph)
    onnx.save(graph, str(destination))
    del torch


def verify_against_framework(predict, onnx_path: Path, batch: np.ndarray, tolerance: float = 1e-4,
                             framework: str = "the framework") -> float:
    """Runs the batch through the framework and ONNX Runtime; returns the largest difference or raises past tolerance.

    predict: a Keras model, or a callable from a uint8 batch to probabilities.
    """
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_out = session.run([OUTPUT_NAME], {session.get_inputs()[0].name: batch})[0]
    framework_out = np.asarray(predict.predict(batch, verbose=0) if hasattr(predict, "predict") else predict(batch))
    difference = float(np.abs(onnx_out - framework_out).max())
    if difference > tolerance:
        raise ExportVerificationError(f"ONNX and {framework} outputs differ by {difference:.2e} "
                                      f"(tolerance {tolerance:.0e})")
    return difference


def publish_version(model, *, model_name: str, input_size: int, labels: list[str], repository: Path,
                    verification_batch: np.ndarray, max_batch_size: int = 32) -> ExportedVersion:
    """A Keras model: exports, verifies against Keras, publishes (see publish_onnx)."""
    return publish_onnx(model_name=model_name, input_size=input_size, labels=labels, repository=repository,
                        verification_batch=verification_batch, export=lambda path: _export_onnx(model, input_size, path),
                        predict=model, framework="Keras", max_batch_size=max_batch_size)


def publish_onnx(*, model_name: str, input_size: int, labels: list[str], repository: Path,
                 verification_batch: np.ndarray, export, predict, framework: str,
                 max_batch_size: int = 32) -> ExportedVersion:
    """Exports (export(path) writes the ONNX file), verifies against the framework, then moves a new version directory
    into repository/model_name with labels and config."""
    model_dir = repository / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = _next_version(model_dir)
    with tempfile.TemporaryDirectory(dir=model_dir) as scratch:
        staged = Path(scratch) / "model.onnx"
        export(staged)
        difference = verify_against_framework(predict, staged, verification_batch, framework=framework)
        version_dir = model_dir / str(version)
        version_dir.mkdir()
        shutil.move(staged, version_dir / "model.onnx")
    (model_dir / "labels.txt").write_text("\n".join(labels) + "\n")
    (model_dir / "config.pbtxt").write_text(production_config(model_name, input_size, len(labels), max_batch_size))
    return ExportedVersion(model_name, version, version_dir / "model.onnx", difference)
