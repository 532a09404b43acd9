"""The ONNX Runtime twin for a GPU (drivers/benchmarks/gpu_host/ort_cuda_model.py) on the CPU: requests the batcher
grouped run as one call and each gets its own rows back, and its FP16 graph keeps the tensors Triton's config
declares. Triton's stub module is not installed here, so that seam is faked; the CUDA provider runs only on a GPU
machine."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

from tests.unit.triton_backend_fake import backend_utils

ROOT = Path(__file__).resolve().parents[2]


def classifier_graph(path: Path) -> None:
    """uint8 NHWC (N, 4, 4, 3) -> probabilities over 10 classes: mean colour, a 3x10 matrix, softmax."""
    weight = np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32)
    nodes = [helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["pixels"], ["colour"], axes=[1, 2], keepdims=0),
             helper.make_node("Div", ["colour", "scale"], ["unit"]),
             helper.make_node("MatMul", ["unit", "weight"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)]
    graph = helper.make_graph(
        nodes, "classifier", [helper.make_tensor_value_info("image", TensorProto.UINT8, [None, 4, 4, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 10])],
        [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(np.float32(255.0), "scale")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def load_twin(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", backend_utils())
    monkeypatch.delitem(sys.modules, "services.localstack.onnx_python_model", raising=False)
    spec = importlib.util.spec_from_file_location(
        "ort_cuda_twin", ROOT / "services/drivers/benchmarks/gpu_host/ort_cuda_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_grouped_requests_run_once_and_each_gets_its_own_rows(tmp_path, monkeypatch):
    (tmp_path / "1").mkdir()
    classifier_graph(tmp_path / "1" / "model.onnx")
    twin_module = load_twin(monkeypatch)
    twin = twin_module.TritonPythonModel()
    config = {"input": [{"name": "image", "dims": [4, 4, 3]}], "output": [{"name": "probabilities", "dims": [10]}],
              "max_batch_size": 8}
    twin.initialize({"model_config": json.dumps(config), "model_repository": str(tmp_path), "model_version": "1"})
    assert twin.cuda is False and twin.session.get_providers() == ["CPUExecutionProvider"]  # no GPU here
    calls = []
    run = twin.session.run
    monkeypatch.setattr(twin, "session", types.SimpleNamespace(run=lambda *a: calls.append(a) or run(*a)))
    generator = np.random.default_rng(1)
    first, second = (generator.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8) for n in (2, 3))
    responses = twin.execute([{"image": first}, {"image": second}])
    assert len(calls) == 1  # one ONNX Runtime call for the group
    reference = onnxruntime.InferenceSession(str(tmp_path / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    for response, images in zip(responses, (first, second)):
        [(name, values)] = response.tensors.items()
        assert name == "probabilities" and values.dtype == np.float32
        assert np.allclose(values, reference.run(None, {"image": images})[0], atol=1e-6)


def test_the_fp16_graph_keeps_its_input_and_output_types_and_answers_as_the_fp32_one(tmp_path, monkeypatch):
    classifier_graph(tmp_path / "model.onnx")
    twin_module = load_twin(monkeypatch)
    converted = onnx.load_from_string(twin_module.fp16_graph(str(tmp_path / "model.onnx")))
    assert converted.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert converted.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert {t.name: t.data_type for t in converted.graph.initializer}["weight"] == TensorProto.FLOAT16
    images = np.random.default_rng(2).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    half = onnxruntime.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    full = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert np.allclose(half.run(None, {"image": images})[0], full.run(None, {"image": images})[0], atol=2e-3)


def test_the_bench_serves_the_engine_asked_for_and_finds_the_cuda_libraries_pytorch_installed(tmp_path, monkeypatch):
    import shutil

    from services.drivers.benchmarks.gpu import ENGINES, gpu_repository, nvidia_library_dirs

    production = tmp_path / "production"
    for name in ("efficientnet_lite0", "photo_decode"):
        shutil.copytree(ROOT / "triton_models" / name, production / name, ignore=shutil.ignore_patterns("[0-9]*"))
    (production / "efficientnet_lite0" / "1").mkdir()
    classifier_graph(production / "efficientnet_lite0" / "1" / "model.onnx")
    for engine, pillow in (("ort-cuda", True), ("torch", False)):
        gpu_repository(production, tmp_path / engine, engine=engine, pillow_decode=pillow)
        served = (tmp_path / engine / "efficientnet_lite0" / "1" / "model.py").read_text()
        assert served == ENGINES[engine].read_text()
        decode = ROOT / ("services/localstack/photo_decode_python.py" if pillow
                         else "services/drivers/benchmarks/gpu_host/photo_decode_nvjpeg.py")
        assert (tmp_path / engine / "photo_decode" / "1" / "model.py").read_text() == decode.read_text()
    for folder in ("nvidia/cu13/lib", "nvidia/cudnn/lib", "nvidia/cudnn/include"):
        (tmp_path / "site" / folder).mkdir(parents=True)
    monkeypatch.setattr(sys, "path", [str(tmp_path / "site"), str(tmp_path / "site")])
    assert nvidia_library_dirs() == [str(tmp_path / "site" / "nvidia/cu13/lib"),
                                     str(tmp_path / "site" / "nvidia/cudnn/lib")]


def test_on_a_gpu_every_call_runs_at_the_max_batch_size_unless_the_config_says_as_formed(monkeypatch):
    import pytest
    import torch

    twin_module = load_twin(monkeypatch)
    images = torch.arange(2 * 3, dtype=torch.uint8).reshape(2, 3)
    full = twin_module.padded(images, 5)
    assert full.shape == (5, 3) and torch.equal(full[:2], images) and not full[2:].any()
    assert twin_module.padded(images, 2) is images and twin_module.padded(images, 0) is images
    monkeypatch.delenv("GPU_BENCH_ORT_BATCH", raising=False)
    assert twin_module.batch_setting({}) == twin_module.BATCH_FIXED
    monkeypatch.setenv("GPU_BENCH_ORT_BATCH", "as_formed")
    assert twin_module.batch_setting({}) == twin_module.BATCH_AS_FORMED
    assert twin_module.batch_setting({"parameters": {"batch": {"string_value": "fixed"}}}) == twin_module.BATCH_FIXED
    with pytest.raises(ValueError):
        twin_module.batch_setting({"parameters": {"batch": {"string_value": "32"}}})
