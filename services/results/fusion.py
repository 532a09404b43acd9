"""Fuses several models' probability vectors into one calibrated distribution over labels (pure).

Log-linear pooling: p(label) = softmax_label(sum_m weight_m * log p_m(label)). The weights are fitted by the trainer
on the validation split (they also calibrate: their sum acts as an inverse temperature) and published beside the
model versions as `fusion.json` in the model repository; a model whose weight is zero is not called at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from services.common.errors import ClassificationError, ErrorKind
from services.common.fusion_file import FUSION_FILE, FusionConfig, parse_weights  # noqa: F401  (re-exported)
_FLOOR = 1e-7  # log(0) guard: a model certain a label is impossible still leaves it a trace


def fuse_arrays(probabilities: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """(models) x (N, classes) aligned arrays -> (N, classes) fused probabilities. The trainer fits with this."""
    logits = sum(w * np.log(np.maximum(p.astype(np.float64), _FLOOR)) for p, w in zip(probabilities, weights))
    logits = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=-1, keepdims=True)


def fuse(predictions: Sequence, weights: Mapping[str, float]) -> dict[str, float]:
    """Fuses ModelPrediction messages by label (a model without a weight counts 1, a zero weight not at all).

    Models are aligned by label, not by index, so two models with differently ordered labels still fuse correctly; a
    label one model lacks gets the floor probability from it.
    """
    if not predictions:
        raise ClassificationError(ErrorKind.INVALID_REQUEST, "the prediction holds no model outputs")
    labels: list[str] = []
    used = []
    for prediction in predictions:
        if len(prediction.labels) != len(prediction.probabilities) or not prediction.labels:
            raise ClassificationError(ErrorKind.INVALID_REQUEST,
                                      f"model {prediction.model_name}: {len(prediction.labels)} labels but "
                                      f"{len(prediction.probabilities)} probabilities")
        probabilities = np.asarray(prediction.probabilities, dtype=np.float64)
        if not np.all(np.isfinite(probabilities)) or (probabilities < 0).any():
            raise ClassificationError(ErrorKind.INVALID_REQUEST, f"model {prediction.model_name}: output is not a "
                                      "probability vector")
        weight = float(weights.get(prediction.model_name, 1.0))
        if weight > 0:
            used.append((prediction, probabilities, weight))
        labels.extend(label for label in prediction.labels if label not in labels)
    if not used:
        raise ClassificationError(ErrorKind.INVALID_REQUEST, "every model's fusion weight is zero")
    index = {label: i for i, label in enumerate(labels)}
    aligned = []
    for prediction, probabilities, _ in used:
        row = np.full(len(labels), _FLOOR)
        row[[index[label] for label in prediction.labels]] = probabilities
        aligned.append(row[None, :])
    fused = fuse_arrays(aligned, [weight for *_, weight in used])[0]
    return dict(zip(labels, fused.tolist()))
