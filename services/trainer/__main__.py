"""python -m services.trainer CATALOGUE: fine-tune ResNet50 and InceptionV3 and publish them to triton_models/.

CATALOGUE holds one folder per category. Defaults follow the research (see TrainingSettings); ImageNet weights
come from local files (--resnet50-weights, --inception-v3-weights), random initialisation otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services.trainer.dataset import DatasetError
from services.trainer.job import DEFAULT_INPUT_SIZES, run_training_job, summary_table
from services.trainer.training import TrainingSettings

REPOSITORY = Path(__file__).resolve().parents[2] / "triton_models"


def settings_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainingSettings field, defaulting to the research's value."""
    for name, field in TrainingSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default,
                                help=field.description)
        else:
            parser.add_argument(flag, type=field.annotation, default=field.default, help=field.description)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("catalogue", type=Path)
    parser.add_argument("--repository", type=Path, default=REPOSITORY, help="Triton model repository to publish to")
    parser.add_argument("--models", default="resnet50,inception_v3")
    parser.add_argument("--input-size", type=int, help="one input size for every model (default 224 / 299)")
    parser.add_argument("--resnet50-weights", type=Path)
    parser.add_argument("--inception-v3-weights", type=Path)
    parser.add_argument("--min-per-category", type=int, default=5)
    settings_arguments(parser)
    options = parser.parse_args()
    settings = TrainingSettings(**{k: getattr(options, k) for k in TrainingSettings.model_fields})
    models = options.models.split(",")
    sizes = {m: options.input_size or DEFAULT_INPUT_SIZES[m] for m in models}
    try:
        result = run_training_job(options.catalogue, options.repository, settings, sizes,
                                  {"resnet50": options.resnet50_weights, "inception_v3": options.inception_v3_weights},
                                  min_per_category=options.min_per_category)
    except DatasetError as error:
        print(f"cannot train: {error}", file=sys.stderr)
        return 2
    print(summary_table(result))
    for name, exported in result.exported.items():
        print(f"{name}: version {exported.version} published, report in {exported.onnx_path.parent / 'report'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
