"""The fusion file the trainer publishes beside the model versions (`triton_models/fusion.json`).

Read by the preprocessing service (which models are worth calling) and the result service (the weights, the labels
and the review threshold); written by services/trainer/fusion_fit.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

FUSION_FILE = "fusion.json"


def parse_weights(text: str) -> dict[str, float]:
    """'resnet50=0.5,inception_v3=0.5' -> {'resnet50': 0.5, 'inception_v3': 0.5}."""
    weights = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        weights[name.strip()] = float(value)
        if weights[name.strip()] < 0:
            raise ValueError(f"fusion weight for {name} must not be negative")
    return weights


@dataclass(frozen=True)
class FusionConfig:
    """What the trainer published: a weight (and the version it was fitted on) per model."""

    weights: dict[str, float]
    versions: dict[str, str] = field(default_factory=dict)
    review_threshold: float | None = None
    labels: tuple[str, ...] | None = None  # the models' labels, when the trainer published them
    source: str = "settings"

    @property
    def called_models(self) -> list[str]:
        """The models worth calling: those with a weight above zero."""
        return [name for name, weight in self.weights.items() if weight > 0]

    @classmethod
    def load(cls, path: Path) -> "FusionConfig":
        try:
            document = json.loads(path.read_text())
            models = document["models"]
            weights = {name: float(entry["weight"]) for name, entry in models.items()}
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a fusion file the trainer wrote ({error})") from None
        if any(w < 0 or not math.isfinite(w) for w in weights.values()) or not any(w > 0 for w in weights.values()):
            raise ValueError(f"{path}: fusion weights must be finite, non-negative and not all zero: {weights}")
        return cls(weights, {name: str(entry.get("version", "")) for name, entry in models.items()},
                   document.get("review_threshold"), tuple(document.get("labels") or ()) or None, str(path))

    @classmethod
    def from_settings(cls, path: Path, weights_text: str) -> "FusionConfig":
        """The published file when it exists; otherwise the weights given in the settings (or refuses)."""
        if path.exists():
            return cls.load(path)
        weights = parse_weights(weights_text)
        if not weights:
            raise ValueError(f"{path} does not exist (run `make models`) and no fusion weights are set")
        return cls(weights)


