"""python -m services.trainer.ablation CATALOGUE: the research's comparison, as a table of validation accuracies.

Each variant changes one thing from the baseline (the research's method): dropout 0.3 against none, augmentation
against none, the trainable fraction, grey+RGB against RGB alone. Nothing is published; the table is printed and
written as Markdown and JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from services.trainer.job import DEFAULT_INPUT_SIZES, run_training_job
from services.trainer.training import TrainingSettings

VARIANTS: dict[str, dict] = {
    "baseline (research)": {},
    "no dropout": {"dropout": 0.0},
    "no augmentation": {"augmentation": False},
    "trainable 25%": {"trainable_fraction": 0.25},
    "trainable 50%": {"trainable_fraction": 0.5},
    "trainable 100%": {"trainable_fraction": 1.0},
    "RGB only (no grey stream)": {"grey_stream": False},
}


def run_ablation(catalogue: Path, base: TrainingSettings, input_sizes: dict[str, int],
                 variants: dict[str, dict] = VARIANTS) -> list[dict]:
    rows = []
    for variant, changes in variants.items():
        settings = base.model_copy(update=changes)
        print(f"== {variant}: {changes or 'the baseline'}", flush=True)
        result = run_training_job(catalogue, None, settings, input_sizes, verbose=0)
        rows.append({"variant": variant, "changes": changes,
                     **{f"{name}_top1": round(e["top1_accuracy"], 4) for name, e in result.evaluations.items()}})
    return rows


def markdown_table(rows: list[dict]) -> str:
    columns = [k for k in rows[0] if k.endswith("_top1")]
    lines = ["| variant | " + " | ".join(c.removesuffix("_top1") + " top-1" for c in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    lines += [f"| {row['variant']} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("catalogue", type=Path)
    parser.add_argument("--models", default="resnet50,inception_v3")
    parser.add_argument("--input-size", type=int, help="one input size for every model (default 224 / 299)")
    parser.add_argument("--epochs", type=int, default=TrainingSettings().epochs)
    parser.add_argument("--learning-rate", type=float, default=TrainingSettings().learning_rate)
    parser.add_argument("--momentum", type=float, default=TrainingSettings().momentum)
    parser.add_argument("--batch-norm-momentum", type=float, default=TrainingSettings().batch_norm_momentum)
    parser.add_argument("--output", type=Path, default=Path("ablation"))
    options = parser.parse_args()
    base = TrainingSettings(epochs=options.epochs, learning_rate=options.learning_rate, momentum=options.momentum,
                            batch_norm_momentum=options.batch_norm_momentum)
    sizes = {m: options.input_size or DEFAULT_INPUT_SIZES[m] for m in options.models.split(",")}
    rows = run_ablation(options.catalogue, base, sizes)
    table = markdown_table(rows)
    options.output.mkdir(parents=True, exist_ok=True)
    (options.output / "ablation.md").write_text(table + "\n")
    (options.output / "ablation.json").write_text(json.dumps(rows, indent=1))
    print(table)
    print(f"written to {options.output}/ablation.md and ablation.json")


if __name__ == "__main__":
    main()
