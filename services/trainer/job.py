"""The training job: catalogue in, both models fine-tuned, evaluated, exported to Triton with their reports."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from services.trainer.dataset import Dataset, load_catalogue
from services.trainer.evaluation import metrics, write_report
from services.trainer.training import TrainedModel, TrainingSettings, train_model
from services.trainer.triton_export import ExportedVersion, publish_version

DEFAULT_INPUT_SIZES = {"resnet50": 224, "inception_v3": 299}


@dataclass
class JobResult:
    trained: dict[str, TrainedModel]
    evaluations: dict[str, dict]  # model name or "fused" -> metrics
    exported: dict[str, ExportedVersion]
    skipped_images: dict[str, str]


def fused_probabilities(probabilities: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """The same weighted mean the result service applies at serving time."""
    total = sum(weights.get(name, 1.0) for name in probabilities)
    return sum(weights.get(name, 1.0) * p for name, p in probabilities.items()) / total


def run_training_job(catalogue: Path, repository: Path | None, settings: TrainingSettings,
                     input_sizes: dict[str, int] | None = None, weights_files: dict[str, Path | None] | None = None,
                     fusion_weights: dict[str, float] | None = None, min_per_category: int = 5,
                     description: str = "", verbose: int | None = None) -> JobResult:
    """Trains every model in input_sizes; publishes to repository (skipped when None) only after verification."""
    input_sizes = input_sizes or DEFAULT_INPUT_SIZES
    weights_files = weights_files or {}
    fusion_weights = fusion_weights or {name: 1.0 for name in input_sizes}
    datasets: dict[int, tuple[Dataset, Dataset]] = {}
    skipped: dict[str, str] = {}
    for size in sorted(set(input_sizes.values())):
        full = load_catalogue(catalogue, size, min_per_category)
        skipped.update(full.skipped)
        datasets[size] = full.split(settings.validation_fraction, settings.seed)
    if skipped:
        print(f"skipped {len(skipped)} unreadable images, e.g. {next(iter(skipped.items()))}")

    trained, probabilities, evaluations = {}, {}, {}
    for name, size in input_sizes.items():
        train, validation = datasets[size]
        print(f"{name}: training on {len(train.labels)} images ({len(train.categories)} categories), validating on "
              f"{len(validation.labels)}, input {size}px", flush=True)
        trained[name] = train_model(name, size, train, validation, settings, weights_files.get(name), verbose)
        probabilities[name] = np.asarray(trained[name].model.predict(validation.images, batch_size=64, verbose=0))
        evaluations[name] = metrics(probabilities[name], validation.labels, validation.categories)
    validation = next(iter(datasets.values()))[1]  # same files, same split order at every size
    evaluations["fused"] = metrics(fused_probabilities(probabilities, fusion_weights), validation.labels,
                                   validation.categories)

    exported: dict[str, ExportedVersion] = {}
    if repository is not None:
        for name in tqdm(list(input_sizes), desc="exporting to Triton", unit="model"):
            size = input_sizes[name]
            exported[name] = publish_version(trained[name].model, model_name=name, input_size=size,
                                             labels=validation.categories, repository=repository,
                                             verification_batch=datasets[size][1].images[:8])
            report_dir = exported[name].onnx_path.parent / "report"
            common = {"model": name, "version": exported[name].version, "input_size": size,
                      "trained_on": str(catalogue), "description": description,
                      "settings": settings.model_dump(), "fusion_weights": fusion_weights,
                      "training_seconds": round(trained[name].seconds, 1),
                      "training_images_per_s": round(trained[name].images_per_s, 2),
                      "onnx_max_abs_difference": exported[name].max_abs_difference,
                      "skipped_images": len(skipped), "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            write_report(report_dir, name, evaluations[name], trained[name].history, common)
            write_report(report_dir, "fused", evaluations["fused"], None,
                         {**common, "model": "fused", "models": list(input_sizes)})
    return JobResult(trained, evaluations, exported, skipped)


def summary_table(result: JobResult) -> str:
    rows = [f"{'model':<14} {'top-1':>7} {'top-5':>7} {'train img/s':>12} {'version':>8}"]
    for name, evaluation in result.evaluations.items():
        top5 = next(v for k, v in evaluation.items() if k.startswith("top") and k != "top1_accuracy")
        speed = f"{result.trained[name].images_per_s:.1f}" if name in result.trained else "-"
        version = str(result.exported[name].version) if name in result.exported else "-"
        rows.append(f"{name:<14} {evaluation['top1_accuracy']:>7.3f} {top5:>7.3f} {speed:>12} {version:>8}")
    return "\n".join(rows)


def summary_json(result: JobResult) -> str:
    return json.dumps({name: {"top1": round(e["top1_accuracy"], 4)} for name, e in result.evaluations.items()})
