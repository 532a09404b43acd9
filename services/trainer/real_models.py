"""`make models`: trains the served models on the real clothing photos and publishes them, once (cached).

The photos are `../shared/datasets/clothing-dataset-small` (CC0; train/ to train on, validation/ to choose epochs,
fusion weights and the review threshold; its test split is held back and never seen here). Set
CLOTHING_DATASET_DIR or pass --catalogue to use another copy. See catalogue_models.py for the steps.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from services.common.fusion_file import FUSION_FILE
from services.trainer.photo_ensemble import write_ensembles
from services.trainer.pretrained import LITE_VARIANTS
from services.trainer.catalogue_models import CatalogueBuild, DatasetError, build_catalogue_models, summary

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
# A build's description names its models and their input sizes, so a checkout whose cached build predates the
# current default models (or any build not made by `make models`) is built again; one made with MODELS_ARGS is kept.
BUILD_DESCRIPTION = "real-photo models (clothing-dataset-small), make models:"
CUSTOM_BUILD = " (MODELS_ARGS)"


def build_description(build: CatalogueBuild) -> str:
    sizes = {name: build.fine_tune_for(name).input_size or LITE_VARIANTS[name].input_size for name in build.pretrained}
    sizes.update({name: build.research_input_size for name in build.research_models})
    return f"{BUILD_DESCRIPTION} {', '.join(f'{name} at {size} px' for name, size in sizes.items())}"


def clothing_dataset() -> Path:
    return Path(os.environ.get("CLOTHING_DATASET_DIR")
                or REPOSITORY_ROOT.parent / "shared" / "datasets" / "clothing-dataset-small")


def published(repository: Path, description: str | None = None) -> bool:
    """True when fusion.json is the build `description` names (by default today's default build, or any build made
    with MODELS_ARGS) and every model version it names is on disk."""
    path = repository / FUSION_FILE
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    found = str(document.get("description", ""))
    if description is not None:
        wanted = found == description
    else:
        wanted = found == build_description(CatalogueBuild()) or (found.startswith(BUILD_DESCRIPTION)
                                                                   and found.endswith(CUSTOM_BUILD))
    return wanted and all(
        (repository / name / str(entry["version"]) / "model.onnx").exists()
        and (repository / name / str(entry["version"]) / "model.onnx").stat().st_size > 0
        for name, entry in document.get("models", {}).items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--catalogue", type=Path, default=None, help="default: the clothing dataset")
    parser.add_argument("--repository", type=Path, default=REPOSITORY_ROOT / "triton_models")
    parser.add_argument("--force", action="store_true", help="train and publish new versions even if cached")
    parser.add_argument("--research-epochs", type=int, help="longer distillation of ResNet50 and InceptionV3")
    parser.add_argument("--research-input-size", type=int)
    parser.add_argument("--epochs", type=int, help="fine-tuning epochs of the pretrained model")
    parser.add_argument("--pretrained", help="comma-separated ImageNet-pretrained models to fine-tune "
                        "(efficientnet_lite0, efficientnet_lite1, efficientnet_lite2)")
    options = parser.parse_args()
    if published(options.repository) and not options.force:
        write_ensembles(options.repository)  # a checkout from before an ensemble existed lacks it
        print(f"real-photo models already trained and published in {options.repository} (use --force to retrain)")
        return 0
    catalogue = options.catalogue or clothing_dataset()
    build = CatalogueBuild()
    updates = {k: v for k, v in {"research_epochs": options.research_epochs,
                                 "research_input_size": options.research_input_size,
                                 "pretrained": options.pretrained and options.pretrained.split(",")}.items() if v}
    build = build.model_copy(update=updates)
    if options.epochs:
        build = build.with_fine_tune_epochs(options.epochs)
    print(f"training the served models on the real photos in {catalogue} (about 15 minutes on 2 CPU cores; cached "
          "afterwards)", flush=True)
    try:
        description = build_description(build) + (CUSTOM_BUILD if updates or options.epochs else "")
        result = build_catalogue_models(catalogue, options.repository, build, description=description,
                                        progress=sys.stderr.isatty() or bool(os.environ.get("PROGRESS")))
    except DatasetError as error:
        print(f"cannot train: {error}", file=sys.stderr)
        return 2
    print(summary(result))
    print(f"published {', '.join(f'{n} v{e.version}' for n, e in result.exported.items())} and "
          f"{result.fusion_path} in {result.seconds['total']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
