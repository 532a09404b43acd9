"""Trains every served model on a real catalogue, fits their fusion, and publishes all of it to the model repository.

The catalogue holds `train/` and `validation/` (one folder per category in each; a catalogue without them is split
per category). Steps, each with its own progress bar:
1. ImageNet-pretrained EfficientNet-Lites (Lite0 and Lite1 by default) fine-tuned the research's way
   (`pretrained.py`);
2. ResNet50 and InceptionV3: from their ImageNet weights when files are given, otherwise from random initialisation,
   distilled from the pretrained model's soft labels (the best this machine can do without ImageNet weights);
3. every model exported to ONNX, checked against its framework, published as a new version;
4. which models to call and their fusion weights fitted on the validation split (calibrating the fused confidence)
   and published as `fusion.json` beside the versions, with the figures the report cites.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from services.trainer.dataset import Dataset, DatasetError, load_catalogue_sizes
from services.trainer.evaluation import metrics, write_report
from services.trainer.fusion_fit import fit_fusion, publish_fusion
from services.trainer.pretrained import LITE_VARIANTS, FineTuneSettings, export_onnx, fine_tune, onnx_session, run_onnx
from services.trainer.photo_ensemble import write_ensembles
from services.trainer.triton_export import ExportedVersion, publish_onnx, publish_version
from services.trainer.training import DISTILLATION_FROM_SCRATCH, TrainingSettings, train_model

RESEARCH_PAIR = ("resnet50", "inception_v3")


def _default_fine_tunes() -> dict[str, FineTuneSettings]:
    # Lite1 trains the same depth as Lite0 (its last 5 of 21 blocks) on 2 views for 4 epochs, at Lite0's 224 px (its
    # weights were trained at 240): chosen on the validation split to fit the first `make demo`'s 20 minutes (about
    # 3.5 minutes here), and one tensor then feeds both models. At 240 px it was slower and no better (0.897 alone).
    return {"efficientnet_lite0": FineTuneSettings(),
            "efficientnet_lite1": FineTuneSettings(views=2, epochs=4, frozen_blocks=16, input_size=224)}


class CatalogueBuild(BaseModel):
    """Which models, at which sizes, for how long. Defaults fit a first `make demo` on a 2-core CPU."""

    pretrained: list[str] = Field(["efficientnet_lite0", "efficientnet_lite1"],
                                  description="ImageNet-pretrained models to fine-tune (the first teaches the pair)")
    research_models: list[str] = Field(list(RESEARCH_PAIR), description="the research's pair")
    research_input_size: int = Field(80, description="input size of the pair when trained without ImageNet weights "
                                     "(224/299 with them)")
    research_epochs: int = Field(1, description="epochs of the pair's distillation from random initialisation (a "
                                 "second one gained nothing measurable on the validation split: ResNet50 0.287 to "
                                 "0.290, InceptionV3 0.238 to 0.211)")
    distillation_share: float = Field(0.7, description="weight of the teacher's soft labels against the true label")
    fine_tune: dict[str, FineTuneSettings] = Field(default_factory=_default_fine_tunes,
                                                   description="the recipe's settings per pretrained model")
    research: TrainingSettings = DISTILLATION_FROM_SCRATCH
    min_per_category: int = 5

    def fine_tune_for(self, model_name: str) -> FineTuneSettings:
        return self.fine_tune.get(model_name) or FineTuneSettings()

    def with_fine_tune_epochs(self, epochs: int) -> "CatalogueBuild":
        """Every pretrained model fine-tuned for `epochs` (the command line's --epochs)."""
        return self.model_copy(update={"fine_tune": {
            name: self.fine_tune_for(name).model_copy(update={"epochs": epochs}) for name in self.pretrained}})


@dataclass
class CatalogueResult:
    evaluations: dict[str, dict]
    exported: dict[str, ExportedVersion]
    fusion: dict
    fusion_path: Path | None
    seconds: dict[str, float] = field(default_factory=dict)
    skipped_images: dict[str, str] = field(default_factory=dict)


def split_catalogue(catalogue: Path, sizes: list[int], min_per_category: int, progress: bool = True
                    ) -> tuple[dict[int, Dataset], dict[int, Dataset]]:
    """train/ and validation/ when the catalogue has them; otherwise a stratified 20% of each category."""
    if (catalogue / "train").is_dir() and (catalogue / "validation").is_dir():
        train = load_catalogue_sizes(catalogue / "train", sizes, min_per_category, progress=progress)
        categories = train[sizes[0]].categories
        validation = load_catalogue_sizes(catalogue / "validation", sizes, 1, progress=progress, categories=categories)
        return train, validation
    full = load_catalogue_sizes(catalogue, sizes, min_per_category, progress=progress)
    pairs = {size: data.split(0.2, 0) for size, data in full.items()}
    return {s: p[0] for s, p in pairs.items()}, {s: p[1] for s, p in pairs.items()}


def build_catalogue_models(catalogue: Path, repository: Path, build: CatalogueBuild,
                           weights_files: dict[str, Path | None] | None = None, description: str = "",
                           progress: bool = True) -> CatalogueResult:
    weights_files = weights_files or {}
    began = time.perf_counter()
    sizes: dict[str, int] = {name: build.fine_tune_for(name).input_size or LITE_VARIANTS[name].input_size
                             for name in build.pretrained}
    for name in build.research_models:
        sizes[name] = ({"resnet50": 224, "inception_v3": 299}[name] if weights_files.get(name)
                       else build.research_input_size)
    train, validation = split_catalogue(catalogue, sorted(set(sizes.values())), build.min_per_category, progress)
    some = next(iter(train.values()))
    categories, skipped = some.categories, {**some.skipped, **next(iter(validation.values())).skipped}
    if skipped:
        print(f"skipped {len(skipped)} unreadable images, e.g. {next(iter(skipped.items()))}")
    labels = next(iter(validation.values())).labels
    seconds = {"loading": time.perf_counter() - began}
    exported: dict[str, ExportedVersion] = {}
    probabilities: dict[str, np.ndarray] = {}
    histories: dict[str, dict] = {}

    teacher_train: np.ndarray | None = None
    for name in build.pretrained:
        started = time.perf_counter()
        size = sizes[name]
        tuned = fine_tune(name, train[size].images, train[size].labels, validation[size].images, labels,
                          len(categories), build.fine_tune_for(name), weights_files.get(name), progress)
        exported[name] = publish_onnx(
            model_name=name, input_size=size, labels=categories, repository=repository,
            verification_batch=validation[size].images[:8], framework="PyTorch",
            export=lambda path, model=tuned.model, s=size: export_onnx(model, s, path), predict=tuned.predict)
        session = onnx_session(exported[name].onnx_path)
        probabilities[name] = run_onnx(session, validation[size].images)
        if teacher_train is None:
            teacher_train = run_onnx(session, train[size].images, desc=f"{name}: soft labels for distillation"
                                     if progress else None)
        histories[name] = tuned.history
        seconds[name] = time.perf_counter() - started

    for name in build.research_models:
        started = time.perf_counter()
        size = sizes[name]
        targets = None
        if teacher_train is not None and not weights_files.get(name):
            one_hot = np.eye(len(categories), dtype=np.float32)[train[size].labels]
            targets = (build.distillation_share * teacher_train + (1 - build.distillation_share) * one_hot
                       ).astype(np.float32)
        settings = build.research.model_copy(update={"epochs": build.research_epochs}) if not weights_files.get(
            name) else TrainingSettings()
        trained = train_model(name, size, train[size], validation[size], settings, weights_files.get(name),
                              verbose=2, soft_targets=targets)
        exported[name] = publish_version(trained.model, model_name=name, input_size=size, labels=categories,
                                         repository=repository, verification_batch=validation[size].images[:8])
        probabilities[name] = run_onnx(onnx_session(exported[name].onnx_path), validation[size].images)
        histories[name] = trained.history
        seconds[name] = time.perf_counter() - started

    fusion = fit_fusion(probabilities, labels)
    versions = {name: str(e.version) for name, e in exported.items()}
    fusion_path = publish_fusion(repository, fusion, versions, categories, description)
    write_ensembles(repository)  # the ensembles (both paths), in step with the models just published
    weights = fusion["weights"]
    from services.results.fusion import fuse_arrays

    fused = fuse_arrays([probabilities[n] for n in weights], [weights[n] for n in weights])
    evaluations = {name: metrics(p, labels, categories) for name, p in probabilities.items()}
    evaluations["fused"] = metrics(fused, labels, categories)
    seconds["total"] = time.perf_counter() - began
    for name, version in exported.items():
        report_dir = version.onnx_path.parent / "report"
        common = {"model": name, "version": version.version, "input_size": sizes[name], "trained_on": str(catalogue),
                  "description": description, "fusion": fusion, "training_seconds": round(seconds[name], 1),
                  "onnx_max_abs_difference": version.max_abs_difference, "skipped_images": len(skipped),
                  "imagenet_weights": bool(weights_files.get(name)) or name in build.pretrained,
                  "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_report(report_dir, name, evaluations[name], histories[name], common)
        write_report(report_dir, "fused", evaluations["fused"], None, {**common, "model": "fused"})
    return CatalogueResult(evaluations, exported, fusion, fusion_path, seconds, skipped)


def summary(result: CatalogueResult) -> str:
    figures = result.fusion["figures"]
    rows = [f"{'model':<20} {'top-1':>7} {'top-5':>7} {'ECE':>7} {'weight':>14} {'version':>8} {'seconds':>8}"]
    for name, evaluation in result.evaluations.items():
        top5 = next(v for k, v in evaluation.items() if k.startswith("top") and k != "top1_accuracy")
        ece = figures["per_model"][name]["ece"] if name in figures["per_model"] else figures["fitted_in_sample"]["ece"]
        weight = result.fusion["weights"].get(name)
        weight = "-" if weight is None else f"{weight:.3f}" if weight > 0 else "0 (not called)"
        version = str(result.exported[name].version) if name in result.exported else "-"
        took = f"{result.seconds.get(name, result.seconds['total']):.0f}"
        rows.append(f"{name:<20} {evaluation['top1_accuracy']:>7.3f} {top5:>7.3f} {ece:>7.3f} {weight:>14} "
                    f"{version:>8} {took:>8}")
    honest, every = figures["fitted_cross_validated"], figures["every_model_cross_validated"]
    rows.append(f"fused, cross-validated on the validation split: top-1 {honest['top1']:.3f}, calibration error "
                f"{honest['ece']:.3f} (equal weights: {figures['equal_weights']['ece']:.3f}; every model fitted: "
                f"top-1 {every['top1']:.3f})")
    best = figures["selection"]["candidates"][0]
    rows.append(f"models called: {', '.join(figures['selection']['chosen'])} (lowest cross-validated log-loss "
                f"{best['log_loss']:.4f}, top-1 {best['top1']:.3f}, over {figures['selection']['halvings']} halvings)")
    review = figures["review"]
    rows.append(f"review threshold {review['threshold']:.3f}: {review['share_needing_review']:.1%} of listings need "
                f"review so that {review['precision_target']:.0%} of those published as classified are right")
    return "\n".join(rows)


def summary_json(result: CatalogueResult) -> str:
    return json.dumps({name: round(e["top1_accuracy"], 4) for name, e in result.evaluations.items()})


__all__ = ["CatalogueBuild", "build_catalogue_models", "summary", "DatasetError"]
