"""The ensembles' Triton configuration, written beside the models: every tensor an ensemble step names exists in the
model it names, with the shape and type the next step expects; the DALI pipeline is valid Python that makes one square
per input size; the local CPU Triton serves the same configuration with its Pillow twin. The CPU path's
pixels_ensemble takes one square per input size and feeds every called model."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import sys
import types
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from services.localstack.triton_cpu import build_cpu_repository
from services.common.decode_path import (DECODE_MODEL, ENSEMBLE_MODEL, PHOTO_INPUT, PIXELS_ENSEMBLE,
                                         THUMBNAIL_OUTPUT, THUMBNAIL_SHAPE_OUTPUT, THUMBNAIL_SIDE, image_output,
                                         probabilities_output)
from services.trainer.photo_ensemble import write_ensembles
from services.trainer.triton_export import production_config

MODELS = {"efficientnet_lite0": 224, "resnet50": 80, "inception_v3": 96, "unused": 64}


@pytest.fixture
def repository(tmp_path) -> Path:
    """A repository as the trainer publishes it: three called models (two input sizes... and a third), one at 0."""
    for name, size in MODELS.items():
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "config.pbtxt").write_text(production_config(name, size, 10, 32 if name != "resnet50" else 16))
        (tmp_path / name / "1" / "model.onnx").write_bytes(b"onnx")
    weights = {"efficientnet_lite0": 0.8, "resnet50": 0.1, "inception_v3": 0.1, "unused": 0.0}
    (tmp_path / "fusion.json").write_text(json.dumps({"models": {n: {"weight": w, "version": 1}
                                                                 for n, w in weights.items()}}))
    write_ensembles(tmp_path)
    return tmp_path


def config(repository: Path, name: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse((repository / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def test_every_step_maps_tensors_that_exist_with_matching_shapes(repository):
    ensemble = config(repository, ENSEMBLE_MODEL)
    assert ensemble.platform == "ensemble" and [i.name for i in ensemble.input] == [PHOTO_INPUT]
    assert ensemble.max_batch_size == 16  # the smallest of the models it feeds
    produced = {PHOTO_INPUT: ([-1], model_config_pb2.TYPE_UINT8)}
    for step in ensemble.ensemble_scheduling.step:
        model = config(repository, step.model_name)
        inputs = {i.name: (list(i.dims), i.data_type) for i in model.input}
        outputs = {o.name: (list(o.dims), o.data_type) for o in model.output}
        for model_input, tensor in step.input_map.items():
            assert tensor in produced, f"{step.model_name} reads {tensor}, which no earlier step makes"
            assert produced[tensor] == inputs[model_input], (step.model_name, model_input)
        for model_output, tensor in step.output_map.items():
            produced[tensor] = outputs[model_output]
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [DECODE_MODEL, "efficientnet_lite0",
                                                                          "resnet50", "inception_v3"]  # not 'unused'
    for output in ensemble.output:
        assert produced[output.name] == (list(output.dims), output.data_type)
    assert {o.name for o in ensemble.output} == {probabilities_output(n) for n in ("efficientnet_lite0", "resnet50",
                                                                                    "inception_v3")} | {
        THUMBNAIL_OUTPUT, THUMBNAIL_SHAPE_OUTPUT}  # the console's thumbnail, so the service never decodes


def test_the_pixels_ensemble_feeds_each_called_model_the_square_of_its_size(repository):
    ensemble = config(repository, PIXELS_ENSEMBLE)
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == 16  # the smallest of the models it feeds
    produced = {i.name: (list(i.dims), i.data_type) for i in ensemble.input}
    assert produced == {image_output(s): ([s, s, 3], model_config_pb2.TYPE_UINT8) for s in (80, 96, 224)}
    for step in ensemble.ensemble_scheduling.step:
        model = config(repository, step.model_name)
        [model_input] = model.input
        assert dict(step.input_map) == {model_input.name: image_output(model_input.dims[0])}
        assert produced[step.input_map[model_input.name]] == (list(model_input.dims), model_input.data_type)
        outputs = {o.name: (list(o.dims), o.data_type) for o in model.output}
        for model_output, tensor in step.output_map.items():
            produced[tensor] = outputs[model_output]
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == ["efficientnet_lite0", "resnet50",
                                                                          "inception_v3"]  # not 'unused'
    assert {o.name: list(o.dims) for o in ensemble.output} == {probabilities_output(n): [10] for n in (
        "efficientnet_lite0", "resnet50", "inception_v3")}
    assert all(produced[o.name] == (list(o.dims), o.data_type) for o in ensemble.output)


def test_the_decode_step_is_dali_on_the_gpu_with_one_square_per_input_size(repository):
    decode = config(repository, DECODE_MODEL)
    assert decode.backend == "dali"
    assert decode.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert {o.name: list(o.dims) for o in decode.output} == {
        **{image_output(s): [s, s, 3] for s in (80, 96, 224)},
        THUMBNAIL_OUTPUT: [THUMBNAIL_SIDE, THUMBNAIL_SIDE, 3], THUMBNAIL_SHAPE_OUTPUT: [3]}
    pipeline = (repository / DECODE_MODEL / "1" / "model.dali").read_text()
    tree = ast.parse(pipeline)  # valid Python, as the DALI backend's autoserialisation needs
    sizes = next(node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                 and getattr(node.targets[0], "id", "") == "SIZES")
    assert ast.literal_eval(sizes) == (80, 96, 224)  # in the order of the config's outputs
    # the DALI backend maps the pipeline's outputs to the config's in order: squares, then the thumbnail and its shape
    assert [o.name for o in decode.output] == [image_output(s) for s in (80, 96, 224)] + [THUMBNAIL_OUTPUT,
                                                                                          THUMBNAIL_SHAPE_OUTPUT]
    assert "return tuple(squares) + (thumbnail, shape)" in pipeline and "fn.shapes(thumbnail" in pipeline
    assert '@autoserialize' in pipeline and 'device="mixed"' in pipeline and f'name="{PHOTO_INPUT}"' in pipeline


def test_the_local_cpu_triton_serves_the_same_configuration_with_its_own_dali_pipeline(repository, tmp_path,
                                                                                        monkeypatch):
    classifiers, composed = build_cpu_repository(repository, tmp_path / "cpu")
    assert sorted(classifiers) == sorted(MODELS) and composed == [DECODE_MODEL, ENSEMBLE_MODEL, PIXELS_ENSEMBLE]
    twin = config(tmp_path / "cpu", DECODE_MODEL)
    assert twin.backend == "python" and twin.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert list(twin.output) == list(config(repository, DECODE_MODEL).output)  # same tensors
    served = tmp_path / "cpu" / DECODE_MODEL / "1"
    assert (served / "model.py").read_text().startswith('"""Triton Python-backend model that runs the production')
    production = (repository / DECODE_MODEL / "1" / "model.dali").read_text()
    assert (served / "model.dali").read_text() == production  # the very pipeline, its decoder moved at load
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    spec = importlib.util.spec_from_file_location("photo_decode_dali", served / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    on_cpu = module.cpu_pipeline_text(production)
    assert on_cpu == production.replace('device="mixed"', 'device="cpu"').replace("device_id=0", "device_id=None")
    assert 'device="mixed"' not in on_cpu and on_cpu != production
    with pytest.raises(ValueError, match="expected"):
        module.cpu_pipeline_text(on_cpu)  # a file of another shape is refused, not run half-changed
    assert config(tmp_path / "cpu", ENSEMBLE_MODEL) == config(repository, ENSEMBLE_MODEL)
    assert config(tmp_path / "cpu", PIXELS_ENSEMBLE) == config(repository, PIXELS_ENSEMBLE)
    assert (tmp_path / "cpu" / ENSEMBLE_MODEL / "1").is_dir()


def test_rewritten_in_step_when_the_models_change(repository):
    (repository / "resnet50" / "config.pbtxt").write_text(production_config("resnet50", 128, 10, 32))
    shutil.rmtree(repository / DECODE_MODEL)
    write_ensembles(repository)
    assert image_output(128) in {o.name for o in config(repository, DECODE_MODEL).output}


@pytest.mark.parametrize("kind", ["gpu", "cpu"])
def test_the_gpu_bench_serves_the_same_configuration_with_cuda_twins(repository, tmp_path, kind):
    from services.drivers.benchmarks.gpu import gpu_repository

    classifiers, composed = gpu_repository(repository, tmp_path / "gpu", kind)
    assert sorted(classifiers) == sorted(MODELS) and composed == [DECODE_MODEL, ENSEMBLE_MODEL, PIXELS_ENSEMBLE]
    for name in classifiers + [DECODE_MODEL]:
        served = config(tmp_path / "gpu", name)
        assert served.backend == "python" and not served.platform
        kinds = {"gpu": model_config_pb2.ModelInstanceGroup.KIND_GPU, "cpu": model_config_pb2.ModelInstanceGroup.KIND_CPU}
        assert [g.kind for g in served.instance_group] == [kinds[kind]]
        assert list(served.input) == list(config(repository, name).input)
        assert list(served.output) == list(config(repository, name).output)
    assert "onnx2torch" in (tmp_path / "gpu" / "resnet50" / "1" / "model.py").read_text()
    nvjpeg_twin = (tmp_path / "gpu" / DECODE_MODEL / "1" / "model.py").read_text()
    assert "nvJPEG" in nvjpeg_twin and f'"{THUMBNAIL_OUTPUT}", "{THUMBNAIL_SHAPE_OUTPUT}"' in nvjpeg_twin
    assert config(tmp_path / "gpu", ENSEMBLE_MODEL) == config(repository, ENSEMBLE_MODEL)
    assert config(tmp_path / "gpu", PIXELS_ENSEMBLE) == config(repository, PIXELS_ENSEMBLE)


def test_the_local_triton_shares_the_cores_among_the_models_the_pixels_ensemble_runs_at_once(repository, tmp_path):
    from services.localstack.triton_cpu import ensemble_share_of_cores

    assert ensemble_share_of_cores(repository) == max(1, (os.cpu_count() or 1) // 3)  # three called models
    shutil.rmtree(repository / PIXELS_ENSEMBLE)
    assert ensemble_share_of_cores(repository) == 0  # onnxruntime decides, as before the ensemble existed
