"""python -m services.trainer CATALOGUE: train every served model on a catalogue, fit their fusion, publish.

CATALOGUE holds train/ and validation/ (one folder per category in each), or one folder per category (then 20% of
each category is held out). ImageNet-pretrained EfficientNet-Lites are fine-tuned the research's way; ResNet50 and
InceptionV3 start from ImageNet weights files when given (--resnet50-weights, --inception-v3-weights) and are
otherwise distilled from the first pretrained model. See catalogue_models.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services.trainer.catalogue_models import CatalogueBuild, DatasetError, build_catalogue_models, summary

REPOSITORY = Path(__file__).resolve().parents[2] / "triton_models"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("catalogue", type=Path)
    parser.add_argument("--repository", type=Path, default=REPOSITORY, help="Triton model repository to publish to")
    parser.add_argument("--pretrained", default=",".join(CatalogueBuild().pretrained),
                        help="ImageNet-pretrained models to fine-tune (efficientnet_lite0, _lite1, _lite2), or ''")
    parser.add_argument("--research-models", default="resnet50,inception_v3")
    parser.add_argument("--resnet50-weights", type=Path, help="ImageNet weights file (Keras, no top)")
    parser.add_argument("--inception-v3-weights", type=Path, help="ImageNet weights file (Keras, no top)")
    parser.add_argument("--epochs", type=int, help="fine-tuning epochs of every pretrained model (default: each "
                        "model's own, see catalogue_models.py)")
    parser.add_argument("--research-epochs", type=int, default=CatalogueBuild().research_epochs,
                        help="epochs of ResNet50 and InceptionV3")
    parser.add_argument("--research-input-size", type=int, default=CatalogueBuild().research_input_size,
                        help="their input size without ImageNet weights (224 / 299 with them)")
    parser.add_argument("--min-per-category", type=int, default=5)
    parser.add_argument("--description", default="make train")
    options = parser.parse_args()
    build = CatalogueBuild(pretrained=[m for m in options.pretrained.split(",") if m],
                           research_models=[m for m in options.research_models.split(",") if m],
                           research_epochs=options.research_epochs, research_input_size=options.research_input_size,
                           min_per_category=options.min_per_category)
    if options.epochs:
        build = build.with_fine_tune_epochs(options.epochs)
    weights = {"resnet50": options.resnet50_weights, "inception_v3": options.inception_v3_weights}
    try:
        result = build_catalogue_models(options.catalogue, options.repository, build, weights,
                                        description=options.description, progress=sys.stderr.isatty())
    except DatasetError as error:
        print(f"cannot train: {error}", file=sys.stderr)
        return 2
    print(summary(result))
    for name, exported in result.exported.items():
        print(f"{name}: version {exported.version} published, report in {exported.onnx_path.parent / 'report'}")
    print(f"fusion: {result.fusion_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
