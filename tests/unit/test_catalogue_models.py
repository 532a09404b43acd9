"""make models end to end on a few real photos: fine-tune, distil, export, verify, publish, fit the fusion."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime
import pytest

from services.common.fusion_file import FusionConfig
from services.trainer.catalogue_models import CatalogueBuild, build_catalogue_models
from services.trainer.dataset import load_catalogue_sizes
from services.trainer.fusion_fit import expected_calibration_error, fit_fusion, review_threshold
from services.trainer.real_models import clothing_dataset, published

CATEGORIES = ["hat", "pants", "shoes"]


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    """8 training and 4 validation photos of 3 categories, copied from the real clothing photos."""
    folder = tmp_path_factory.mktemp("photos")
    for split, count in (("train", 8), ("validation", 4)):
        for category in CATEGORIES:
            target = folder / split / category
            target.mkdir(parents=True)
            for photo in sorted((clothing_dataset() / split / category).iterdir())[:count]:
                shutil.copy(photo, target / photo.name)
    (folder / "train" / "hat" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole jpeg")
    return folder


@pytest.fixture(scope="module")
def built(catalogue, tmp_path_factory):
    repository = tmp_path_factory.mktemp("repository")
    tiny = {"epochs": 1, "views": 2, "batch_size": 8}
    defaults = CatalogueBuild()
    build = CatalogueBuild(fine_tune={name: defaults.fine_tune_for(name).model_copy(update=tiny)
                                      for name in defaults.pretrained},
                           research_epochs=1, research_input_size=75, min_per_category=4)
    build = build.model_copy(update={"research": build.research.model_copy(update={"batch_size": 8})})
    return build_catalogue_models(catalogue, repository, build, description="test", progress=False), repository


def test_every_model_is_published_and_agrees_with_its_framework(built, catalogue):
    result, repository = built
    assert set(result.exported) == {"efficientnet_lite0", "efficientnet_lite1", "resnet50", "inception_v3"}
    validation = load_catalogue_sizes(catalogue / "validation", [224], 1, categories=CATEGORIES, progress=False)[224]
    session = onnxruntime.InferenceSession(str(repository / "efficientnet_lite0" / "1" / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    model_input = session.get_inputs()[0]
    assert model_input.type == "tensor(uint8)" and model_input.shape[1:] == [224, 224, 3]
    out = session.run(["probabilities"], {model_input.name: validation.images})[0]
    assert np.allclose(out.sum(axis=1), 1.0, atol=1e-4) and result.exported["efficientnet_lite0"].max_abs_difference < 1e-4
    assert (repository / "efficientnet_lite0" / "labels.txt").read_text().split() == CATEGORIES
    assert "dims: 224" in (repository / "efficientnet_lite0" / "config.pbtxt").read_text()
    assert result.skipped_images and next(iter(result.skipped_images)).endswith("truncated.jpg")


def test_the_fitted_fusion_is_published_beside_the_versions(built):
    result, repository = built
    document = json.loads((repository / "fusion.json").read_text())
    assert set(document["models"]) == {"efficientnet_lite0", "efficientnet_lite1", "resnet50", "inception_v3"}
    assert "dims: 224" in (repository / "efficientnet_lite1" / "config.pbtxt").read_text()  # not its own 240
    chosen = document["figures"]["selection"]["chosen"]
    assert chosen == [name for name, entry in document["models"].items() if entry["weight"] > 0]
    assert {str(e["version"]) for e in document["models"].values()} == {"1"}
    assert document["labels"] == CATEGORIES and 0.0 <= document["review_threshold"] <= 1.0
    config = FusionConfig.load(repository / "fusion.json")
    assert config.called_models and all(w >= 0 for w in config.weights.values())
    assert published(repository, "test") and not published(repository, "another build")
    for name in result.exported:
        assert (result.exported[name].onnx_path.parent / "report" / f"{name}_evaluation.json").exists()


def test_fitting_prefers_the_model_that_is_right():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    good = np.full((400, 4), 0.1)
    good[np.arange(400), labels] = 0.7
    noise = rng.dirichlet(np.ones(4), 400)
    fitted = fit_fusion({"good": good, "noise": noise}, labels)
    assert fitted["weights"]["good"] > 1.0 and fitted["weights"]["noise"] < 0.2
    # 0.7 confidence on answers that are always right is under-confident; the fit sharpens it.
    assert fitted["figures"]["fitted_cross_validated"]["ece"] < expected_calibration_error(good, labels)


def test_selection_calls_the_models_that_help_and_scores_every_set():
    """Two good models that err on different photos, and one that is noise: the noise model gets weight zero (not
    called), the two good ones fused beat either alone, and every set of models was scored."""
    rng = np.random.default_rng(1)
    count, classes = 400, 5
    labels = rng.integers(0, classes, count)

    def model(wrong_share: float) -> np.ndarray:
        answer = np.where(rng.random(count) < wrong_share, rng.integers(0, classes, count), labels)
        logits = rng.normal(0.0, 1.0, (count, classes))
        logits[np.arange(count), answer] += 2.5
        logits[np.arange(count), labels] += 1.0
        return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)

    first, second, noise = model(0.15), model(0.15), rng.dirichlet(np.ones(classes), count)
    fitted = fit_fusion({"first": first, "noise": noise, "second": second}, labels)
    selection = fitted["figures"]["selection"]
    assert selection["chosen"] == ["first", "second"] and fitted["weights"]["noise"] == 0.0
    assert fitted["weights"]["first"] > 0 and fitted["weights"]["second"] > 0
    single = max(fitted["figures"]["per_model"][n]["top1"] for n in ("first", "second"))
    assert fitted["figures"]["fitted_cross_validated"]["top1"] > single
    scores = {tuple(row["models"]): row["log_loss"] for row in selection["candidates"]}
    assert len(scores) == 7 and scores[("first", "second")] == min(scores.values())


def test_review_threshold_meets_the_precision_target():
    confidence = np.array([0.95, 0.9, 0.8, 0.7, 0.6])
    probabilities = np.stack([confidence, 1 - confidence], axis=1)
    labels = np.array([0, 0, 0, 1, 0])  # the 0.7 answer is wrong
    threshold, share = review_threshold(probabilities, labels, precision=0.98)
    assert threshold == pytest.approx(0.8) and share == pytest.approx(0.4)


def test_make_models_rebuilds_a_cached_build_of_other_default_models_and_keeps_a_custom_one(tmp_path):
    from services.trainer.real_models import BUILD_DESCRIPTION, CUSTOM_BUILD, build_description

    (tmp_path / "efficientnet_lite0" / "1").mkdir(parents=True)
    (tmp_path / "efficientnet_lite0" / "1" / "model.onnx").write_bytes(b"onnx")

    def cached(description: str) -> bool:
        (tmp_path / "fusion.json").write_text(json.dumps({"description": description, "models": {
            "efficientnet_lite0": {"version": 1, "weight": 1.0}}}))
        return published(tmp_path)

    today = build_description(CatalogueBuild())
    assert cached(today) and cached(f"{BUILD_DESCRIPTION} efficientnet_lite0 at 260 px{CUSTOM_BUILD}")
    assert not cached(f"{BUILD_DESCRIPTION} efficientnet_lite0 at 224 px, resnet50 at 80 px")  # an older default
    assert not cached("real-photo models (clothing-dataset-small), make models")  # before builds named their models
    (tmp_path / "efficientnet_lite0" / "1" / "model.onnx").write_bytes(b"")
    assert not cached(today)  # a version it names is missing
