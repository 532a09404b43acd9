"""Builds both models UNTRAINED (random weights, or ImageNet backbones from local files) and publishes them to Triton.

This is the model build of the pipeline issue: real architectures, real ONNX, real Triton, but a category head that
has never seen a product, so the categories it predicts are no better than chance. `make bench` uses
it for production-size models; an existing version is left alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from services.trainer.architectures import ARCHITECTURES, build_classifier
from services.trainer.fusion_fit import publish_fusion
from services.trainer.real_models import clothing_dataset
from services.trainer.triton_export import publish_version


def clothing_labels() -> list[str]:
    """The labels the marketplaces map: the clothing dataset's categories."""
    return sorted(d.name for d in (clothing_dataset() / "train").iterdir() if d.is_dir())

REPOSITORY = Path(__file__).resolve().parents[2] / "triton_models"


def has_version(repository: Path, model_name: str) -> bool:
    model_dir = repository / model_name
    return any(p.is_dir() and p.name.isdigit() and (p / "model.onnx").exists() for p in model_dir.glob("*"))


def build_untrained_models(repository: Path, weights: dict[str, Path | None], force: bool = False) -> None:
    """Publishes both architectures at their production input sizes unless a version exists (or force)."""
    rng = np.random.default_rng(0)
    labels = clothing_labels()
    versions = {}
    for name, architecture in ARCHITECTURES.items():
        if has_version(repository, name) and not force:
            print(f"{name}: a version exists in {repository / name}, left alone")
            versions[name] = str(max(int(p.name) for p in (repository / name).iterdir() if p.name.isdigit()))
            continue
        if weights.get(name) is None:
            print(f"{name}: WARNING no ImageNet weights file given: random initialisation, UNTRAINED model")
        model = build_classifier(architecture, len(labels), weights_file=weights.get(name))
        batch = rng.integers(0, 256, (2, architecture.input_size, architecture.input_size, 3), dtype=np.uint8)
        exported = publish_version(model, model_name=name, input_size=architecture.input_size, labels=labels,
                                   repository=repository, verification_batch=batch)
        versions[name] = str(exported.version)
        print(f"{name}: published version {exported.version} at {exported.onnx_path} "
              f"(ONNX vs Keras max difference {exported.max_abs_difference:.1e})")
    # Equal weights: nothing to fit on, the categories these predict are chance anyway.
    publish_fusion(repository, {"weights": {n: 1.0 for n in versions}, "review_threshold": 0.0, "figures": {}},
                   versions, labels, "untrained models for benchmarks")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repository", type=Path, default=REPOSITORY)
    parser.add_argument("--force", action="store_true", help="publish a new version even if one exists")
    parser.add_argument("--resnet50-weights", type=Path, help="local ImageNet weights file (no-top) for ResNet50")
    parser.add_argument("--inception-v3-weights", type=Path, help="local ImageNet weights file (no-top) for InceptionV3")
    options = parser.parse_args()
    build_untrained_models(options.repository, {"resnet50": options.resnet50_weights,
                                                "inception_v3": options.inception_v3_weights}, options.force)


if __name__ == "__main__":
    main()
