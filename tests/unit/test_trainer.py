"""The trainer: a few real training steps of both networks, export to ONNX, agreement, config, reports, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from services.trainer.ablation import markdown_table, run_ablation
from services.trainer.dataset import DatasetError, load_catalogue
from services.trainer.job import run_training_job
from services.trainer.sample_catalogue import CATEGORIES, write_catalogue
from services.trainer.training import TrainingSettings

SMALL = TrainingSettings(epochs=1, batch_size=8, learning_rate=0.01, momentum=0.9, batch_norm_momentum=0.9)
SIZE = 75  # InceptionV3's smallest input, to keep the steps quick on a CPU
KEPT = sorted(CATEGORIES)[:3]  # three categories are enough for a few steps


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("catalogue")
    write_catalogue(folder, per_category=6, seed=1, size=96)
    for extra in [d for d in folder.iterdir() if d.name not in KEPT]:
        for file in extra.iterdir():
            file.unlink()
        extra.rmdir()
    (folder / KEPT[0] / "broken.jpg").write_bytes(b"\xff\xd8\xff not a whole jpeg")
    return folder


@pytest.fixture(scope="module")
def trained(catalogue, tmp_path_factory):
    repository = tmp_path_factory.mktemp("repository")
    result = run_training_job(catalogue, repository, SMALL, {"resnet50": SIZE, "inception_v3": SIZE},
                              min_per_category=4, description="test", verbose=0)
    return result, repository


def test_unreadable_images_are_skipped_and_counted(trained):
    result, _ = trained
    assert len(result.skipped_images) == 1 and next(iter(result.skipped_images)).endswith("broken.jpg")


def test_both_models_export_and_agree_with_the_framework(trained, catalogue):
    result, repository = trained
    dataset = load_catalogue(catalogue, SIZE, min_per_category=4, progress=False)
    for name in ("resnet50", "inception_v3"):
        exported = result.exported[name]
        assert exported.onnx_path == repository / name / "1" / "model.onnx"
        session = onnxruntime.InferenceSession(str(exported.onnx_path), providers=["CPUExecutionProvider"])
        model_input = session.get_inputs()[0]
        assert model_input.type == "tensor(uint8)" and model_input.shape[1:] == [SIZE, SIZE, 3]
        batch = dataset.images[:5]
        onnx_out = session.run(["probabilities"], {model_input.name: batch})[0]
        framework_out = np.asarray(result.trained[name].model.predict(batch, verbose=0))
        assert np.abs(onnx_out - framework_out).max() < 1e-4
        assert np.allclose(onnx_out.sum(axis=1), 1.0, atol=1e-4)


def test_config_and_labels_are_kept_in_step_and_parse_with_tritons_protobuf(trained):
    _, repository = trained
    for name in ("resnet50", "inception_v3"):
        config = text_format.Parse((repository / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        labels = (repository / name / "labels.txt").read_text().split()
        assert config.name == name and config.platform == "onnxruntime_onnx"
        assert list(config.input[0].dims) == [SIZE, SIZE, 3] and config.input[0].data_type == model_config_pb2.TYPE_UINT8
        assert list(config.output[0].dims) == [len(labels)] and labels == KEPT
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        assert config.dynamic_batching.max_queue_delay_microseconds > 0


def test_reports_are_written_next_to_the_model(trained):
    _, repository = trained
    report = repository / "resnet50" / "1" / "report"
    evaluation = json.loads((report / "resnet50_evaluation.json").read_text())
    assert 0.0 <= evaluation["evaluation"]["top1_accuracy"] <= 1.0
    assert set(evaluation["evaluation"]["per_category"]) == set(KEPT)
    assert len(evaluation["training_curves"]["val_accuracy"]) == SMALL.epochs
    for picture in ("resnet50_confusion_matrix.png", "resnet50_training_curves.png", "fused_confusion_matrix.png"):
        assert (report / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((report / "fused_evaluation.json").read_text())["models"] == ["resnet50", "inception_v3"]


def test_a_second_training_publishes_a_new_version_and_keeps_the_old(trained, catalogue):
    _, repository = trained
    run_training_job(catalogue, repository, SMALL, {"resnet50": SIZE}, min_per_category=4, verbose=0)
    assert (repository / "resnet50" / "1" / "model.onnx").exists()
    assert (repository / "resnet50" / "2" / "model.onnx").exists()


def test_ablation_writes_a_table(catalogue):
    rows = run_ablation(catalogue, SMALL, {"inception_v3": SIZE},
                        {"baseline (research)": {}, "no dropout": {"dropout": 0.0}})
    table = markdown_table(rows)
    assert "| no dropout |" in table and "inception_v3 top-1" in table and "fused top-1" in table


def test_dataset_errors_say_what_to_fix(tmp_path, catalogue):
    with pytest.raises(DatasetError, match="not a folder"):
        load_catalogue(tmp_path / "missing", SIZE)
    with pytest.raises(DatasetError, match="at least 2"):
        load_catalogue(tmp_path, SIZE)
    with pytest.raises(DatasetError, match="fewer than 50 images"):
        load_catalogue(catalogue, SIZE, min_per_category=50, progress=False)
