"""Evaluation of trained models on the held-out split: accuracy, per-category precision and recall, pictures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def metrics(probabilities: np.ndarray, labels: np.ndarray, categories: list[str]) -> dict:
    """Top-1, top-5, per-category precision and recall, and the confusion matrix (rows: true, columns: predicted)."""
    predicted = probabilities.argmax(axis=1)
    top_k = min(5, probabilities.shape[1])
    best_k = np.argsort(-probabilities, axis=1)[:, :top_k]
    confusion = np.zeros((len(categories), len(categories)), int)
    np.add.at(confusion, (labels, predicted), 1)
    per_category = {}
    for index, name in enumerate(categories):
        predicted_as = confusion[:, index].sum()
        actual = confusion[index].sum()
        per_category[name] = {
            "precision": float(confusion[index, index] / predicted_as) if predicted_as else 0.0,
            "recall": float(confusion[index, index] / actual) if actual else 0.0,
            "support": int(actual),
        }
    return {
        "top1_accuracy": float((predicted == labels).mean()),
        f"top{top_k}_accuracy": float((best_k == labels[:, None]).any(axis=1).mean()),
        "per_category": per_category,
        "confusion_matrix": confusion.tolist(),
        "categories": categories,
        "validation_images": int(len(labels)),
    }


def plot_confusion(confusion: list[list[int]], categories: list[str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(confusion)
    figure, axes = plt.subplots(figsize=(1.0 + 0.6 * len(categories), 0.8 + 0.55 * len(categories)))
    axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(categories)), categories, rotation=60, ha="right")
    axes.set_yticks(range(len(categories)), categories)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    for (row, column), value in np.ndenumerate(matrix):
        if value:
            axes.text(column, row, str(value), ha="center", va="center",
                      color="white" if value > matrix.max() / 2 else "black", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_curves(history: dict[str, list[float]], title: str, path: Path) -> None:
    """Loss and accuracy by epoch, training and validation (like the research's figures)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = range(1, len(history.get("loss", [])) + 1)
    for key, axes in (("loss", loss_axes), ("accuracy", accuracy_axes)):
        axes.plot(epochs, history.get(key, []), marker="o", label=f"training {key}")
        axes.plot(epochs, history.get(f"val_{key}", []), marker="o", label=f"validation {key}")
        axes.set_xlabel("epoch")
        axes.set_ylabel(key)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(folder: Path, name: str, evaluation: dict, history: dict | None, extra: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    plot_confusion(evaluation["confusion_matrix"], evaluation["categories"], f"{name}: validation confusion matrix",
                   folder / f"{name}_confusion_matrix.png")
    if history:
        plot_curves(history, f"{name}: training curves", folder / f"{name}_training_curves.png")
    (folder / f"{name}_evaluation.json").write_text(json.dumps({**extra, "evaluation": evaluation,
                                                                "training_curves": history or {}}, indent=1))
