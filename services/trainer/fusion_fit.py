"""Fits the fusion (and with it the calibration) on the validation split, and publishes it beside the models.

The weights minimise the validation log-loss of the result service's log-linear pooling (`fuse_arrays`), so the fused
confidence is a probability. Figures are cross-fitted (fit on one half of the validation split, measured on the
other, both ways), so the reported calibration error is not measured on the photos the weights were fitted to.

Which models take part is fitted too: weights fitted in-sample give a weak model a small weight that lowers the
validation log-loss of the very photos they were fitted on and raises it on others. So every set of models (greedily
beyond MAX_EXHAUSTIVE_MODELS) is scored by its cross-fitted log-loss, averaged over several stratified halvings, and
the models outside the best set get weight zero: they stay served and measured, but preprocessing does not call
them. A larger set must beat a smaller one by SELECTION_MARGIN to be chosen.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

from services.common.fusion_file import FUSION_FILE
from services.results.fusion import fuse_arrays

CALIBRATION_BINS = 15
SELECTION_HALVINGS = 8  # stratified halvings the candidate sets are scored over
SELECTION_MARGIN = 1e-3  # log-loss a set must gain over a smaller one to be worth calling another model
MAX_EXHAUSTIVE_MODELS = 6  # up to 63 candidate sets; beyond that, greedy forward selection


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by the share of answers in each."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    error = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        members = (confidence > low) & (confidence <= high)
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def fit_weights(probabilities: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """Non-negative weights minimising the log-loss of the fused distribution."""
    def loss(weights: np.ndarray) -> float:
        return log_loss(fuse_arrays(probabilities, weights), labels)

    start = np.ones(len(probabilities)) / len(probabilities)
    result = minimize(loss, start, method="L-BFGS-B", bounds=[(0.0, 20.0)] * len(probabilities))
    weights = np.where(result.x < 1e-3, 0.0, result.x)  # a weight this small changes nothing: don't call the model
    if not (weights > 0).any():
        weights = start
    return weights


def log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.log(np.maximum(probabilities[np.arange(len(labels)), labels], 1e-12)).mean())


def _halves(labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A stratified split of the validation split into two halves."""
    rng = np.random.default_rng(seed)
    first = np.zeros(len(labels), bool)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        first[members[: len(members) // 2]] = True
    return np.flatnonzero(first), np.flatnonzero(~first)


def review_threshold(probabilities: np.ndarray, labels: np.ndarray, precision: float = 0.98) -> tuple[float, float]:
    """The lowest confidence threshold above which at least `precision` of the answers are right.

    Returns (threshold, share of listings below it, which go to review).
    """
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    for threshold in np.unique(np.concatenate([[0.0], confidence])):
        kept = confidence >= threshold
        if kept.any() and correct[kept].mean() >= precision:
            return float(threshold), float(1.0 - kept.mean())
    return 1.0, 1.0


def cross_fitted(probabilities: list[np.ndarray], labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each validation photo's fused probabilities with weights fitted on the other half."""
    out = np.zeros_like(probabilities[0], dtype=np.float64)
    first, second = _halves(labels, seed)
    for fit_on, apply_to in ((first, second), (second, first)):
        weights = fit_weights([p[fit_on] for p in probabilities], labels[fit_on])
        out[apply_to] = fuse_arrays([p[apply_to] for p in probabilities], weights)
    return out


def set_score(probabilities: list[np.ndarray], labels: np.ndarray, halvings: int = SELECTION_HALVINGS
              ) -> dict[str, float]:
    """A set of models' cross-fitted log-loss and top-1, each the mean over `halvings` stratified halvings."""
    losses, top1 = [], []
    for seed in range(halvings):
        fused = cross_fitted(probabilities, labels, seed)
        losses.append(log_loss(fused, labels))
        top1.append(float((fused.argmax(1) == labels).mean()))
    return {"log_loss": float(np.mean(losses)), "top1": float(np.mean(top1))}


def _candidate_sets(count: int, score) -> dict[tuple[int, ...], dict[str, float]]:
    """Every non-empty set of model indices up to MAX_EXHAUSTIVE_MODELS models; greedy forward selection beyond."""
    if count <= MAX_EXHAUSTIVE_MODELS:
        return {members: score(members) for size in range(1, count + 1)
                for members in itertools.combinations(range(count), size)}
    scored: dict[tuple[int, ...], dict[str, float]] = {}
    chosen: tuple[int, ...] = ()
    while len(chosen) < count:
        options = [tuple(sorted(chosen + (i,))) for i in range(count) if i not in chosen]
        for members in options:
            scored[members] = score(members)
        chosen = min(options, key=lambda members: scored[members]["log_loss"])
    return scored


def select_models(model_probabilities: dict[str, np.ndarray], labels: np.ndarray) -> tuple[list[str], list[dict]]:
    """The models worth calling: the set with the lowest cross-fitted log-loss (a larger set must beat every smaller
    one by SELECTION_MARGIN). Returns the chosen names and every candidate's score, best first."""
    names = list(model_probabilities)
    arrays = [model_probabilities[n] for n in names]
    scored = _candidate_sets(len(names), lambda members: set_score([arrays[i] for i in members], labels))
    chosen = min(scored, key=lambda members: (scored[members]["log_loss"] + SELECTION_MARGIN * len(members),
                                              len(members)))
    table = sorted(({"models": [names[i] for i in members], **{k: round(v, 5) for k, v in score.items()}}
                    for members, score in scored.items()), key=lambda row: row["log_loss"])
    return [names[i] for i in chosen], table


def fit_fusion(model_probabilities: dict[str, np.ndarray], labels: np.ndarray, precision: float = 0.98) -> dict:
    """The models worth calling and their weights, fitted on the whole validation split, and honest
    (cross-fitted) figures before and after."""
    names = list(model_probabilities)
    arrays = [model_probabilities[n] for n in names]
    chosen, candidates = select_models(model_probabilities, labels)
    chosen_weights = fit_weights([model_probabilities[n] for n in chosen], labels)
    weights = np.array([chosen_weights[chosen.index(n)] if n in chosen else 0.0 for n in names])
    equal = fuse_arrays(arrays, np.ones(len(arrays)) / len(arrays))
    honest = cross_fitted([model_probabilities[n] for n in chosen], labels)
    honest_all = cross_fitted(arrays, labels)
    threshold, review_share = review_threshold(honest, labels, precision)
    per_model = {n: {"top1": float((p.argmax(1) == labels).mean()), "ece": expected_calibration_error(p, labels)}
                 for n, p in model_probabilities.items()}
    return {
        "weights": dict(zip(names, map(float, weights))),
        "figures": {
            "validation_images": int(len(labels)),
            "per_model": per_model,
            "equal_weights": {"top1": float((equal.argmax(1) == labels).mean()),
                              "ece": expected_calibration_error(equal, labels)},
            "fitted_cross_validated": {"top1": float((honest.argmax(1) == labels).mean()),
                                       "ece": expected_calibration_error(honest, labels)},
            "every_model_cross_validated": {"top1": float((honest_all.argmax(1) == labels).mean()),
                                            "ece": expected_calibration_error(honest_all, labels)},
            "selection": {"chosen": chosen, "halvings": SELECTION_HALVINGS, "margin": SELECTION_MARGIN,
                          "candidates": candidates},
            "fitted_in_sample": {"top1": float((fuse_arrays(arrays, weights).argmax(1) == labels).mean()),
                                 "ece": expected_calibration_error(fuse_arrays(arrays, weights), labels)},
            "review": {"precision_target": precision, "threshold": threshold, "share_needing_review": review_share},
        },
        "review_threshold": threshold,
    }


def publish_fusion(repository: Path, fitted: dict, versions: dict[str, str], labels: list[str],
                   description: str) -> Path:
    """Writes fusion.json into the model repository (atomically: a reader sees the old or the new file)."""
    document = {
        "method": "log-linear pooling: p = softmax(sum over models of weight * log p_model)",
        "description": description,
        "models": {name: {"version": versions[name], "weight": round(weight, 6)}
                   for name, weight in fitted["weights"].items()},
        "labels": labels,
        "review_threshold": round(fitted["review_threshold"], 6),
        "figures": fitted["figures"],
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = repository / FUSION_FILE
    staged = path.with_suffix(".json.tmp")
    staged.write_text(json.dumps(document, indent=1) + "\n")
    staged.replace(path)
    return path
