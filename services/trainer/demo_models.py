"""`make models`: trains both networks on the SYNTHETIC sample catalogue and publishes them, once (cached).

No ImageNet weights can be downloaded here, so the networks start from random initialisation; the settings below
differ from the research's defaults (which assume ImageNet weights) where training from scratch on a small CPU budget
needs it: learning rate 0.01 with momentum, batch-norm momentum 0.9, every layer trainable, 96-pixel inputs.
Dropout 0.3, augmentation and the grey-level stream are the research's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from services.trainer.job import run_training_job, summary_table
from services.trainer.sample_catalogue import write_catalogue
from services.trainer.training import TrainingSettings

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
DEMO_DESCRIPTION = "sample-catalogue demo models"

DEMO_SETTINGS = TrainingSettings(epochs=8, learning_rate=0.01, momentum=0.9, batch_norm_momentum=0.9,
                                 trainable_fraction=1.0)
DEMO_INPUT_SIZES = {"resnet50": 96, "inception_v3": 96}


def demo_models_published(repository: Path) -> bool:
    """True when the newest version of every model is a demo training's (its report says so)."""
    for name in DEMO_INPUT_SIZES:
        versions = sorted((p for p in (repository / name).glob("[0-9]*") if p.name.isdigit()), key=lambda p: int(p.name))
        report = versions[-1] / "report" / f"{name}_evaluation.json" if versions else None
        if report is None or not report.exists() or json.loads(report.read_text()).get("description") != DEMO_DESCRIPTION:
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repository", type=Path, default=REPOSITORY_ROOT / "triton_models")
    parser.add_argument("--per-category", type=int, default=80)
    parser.add_argument("--force", action="store_true")
    options = parser.parse_args()
    if demo_models_published(options.repository) and not options.force:
        print(f"demo models already trained and published in {options.repository} (use --force to retrain)")
        return
    catalogue = REPOSITORY_ROOT / ".run" / "sample_catalogue"
    if not catalogue.exists():
        count = write_catalogue(catalogue, options.per_category, seed=0)
        print(f"wrote {count} SYNTHETIC sample images to {catalogue}")
    print("training the demo models on the SYNTHETIC sample catalogue from RANDOM initialisation (a few minutes on a "
          "CPU; cached afterwards)", flush=True)
    result = run_training_job(catalogue, options.repository, DEMO_SETTINGS, DEMO_INPUT_SIZES,
                              description=DEMO_DESCRIPTION)
    print(summary_table(result))


if __name__ == "__main__":
    main()
