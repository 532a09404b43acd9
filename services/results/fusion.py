"""Fuses several models' probability vectors into one distribution over labels (weighted mean, pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from services.common.errors import ClassificationError, ErrorKind


def parse_weights(text: str) -> dict[str, float]:
    """'resnet50=0.5,inception_v3=0.5' -> {'resnet50': 0.5, 'inception_v3': 0.5}."""
    weights = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        weights[name.strip()] = float(value)
        if weights[name.strip()] < 0:
            raise ValueError(f"fusion weight for {name} must not be negative")
    return weights


def fuse(predictions: Sequence, weights: Mapping[str, float]) -> dict[str, float]:
    """Weighted mean of each label's probability over the models (a model without a weight counts 1).

    Models are aligned by label, not by index, so two models with differently ordered labels still fuse correctly.
    """
    if not predictions:
        raise ClassificationError(ErrorKind.INVALID_REQUEST, "the prediction holds no model outputs")
    totals: dict[str, float] = {}
    weight_sum = 0.0
    for prediction in predictions:
        if len(prediction.labels) != len(prediction.probabilities) or not prediction.labels:
            raise ClassificationError(ErrorKind.INVALID_REQUEST,
                                      f"model {prediction.model_name}: {len(prediction.labels)} labels but "
                                      f"{len(prediction.probabilities)} probabilities")
        weight = float(weights.get(prediction.model_name, 1.0))
        probabilities = np.asarray(prediction.probabilities, dtype=np.float64)
        if not np.all(np.isfinite(probabilities)):
            raise ClassificationError(ErrorKind.INVALID_REQUEST, f"model {prediction.model_name}: non-finite output")
        for label, probability in zip(prediction.labels, probabilities):
            totals[label] = totals.get(label, 0.0) + weight * float(probability)
        weight_sum += weight
    if weight_sum <= 0:
        raise ClassificationError(ErrorKind.INVALID_REQUEST, "every model's fusion weight is zero")
    return {label: total / weight_sum for label, total in totals.items()}
