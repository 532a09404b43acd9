"""The two networks the research fine-tunes, built with Keras 3 `keras.applications` on the torch backend.

Each model takes uint8 NHWC images and normalises inside the graph the way its ImageNet weights expect, so clients
send a quarter of the bytes and never need to know the normalisation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402  (the backend must be chosen before keras is imported)


@dataclass(frozen=True)
class Architecture:
    """What differs between the two networks: the Keras constructor, input size and ImageNet normalisation."""

    model_name: str
    input_size: int
    # "caffe": RGB->BGR and ImageNet mean subtracted (ResNet50); "tf": scaled to [-1, 1] (InceptionV3).
    normalisation: str

    def backbone(self, weights_file: Path | None) -> keras.Model:
        constructor = {"resnet50": keras.applications.ResNet50, "inception_v3": keras.applications.InceptionV3}[
            self.model_name
        ]
        shape = (self.input_size, self.input_size, 3)
        return constructor(include_top=False, weights=str(weights_file) if weights_file else None,
                           input_shape=shape, pooling="avg")


ARCHITECTURES = {
    "resnet50": Architecture("resnet50", 224, "caffe"),
    "inception_v3": Architecture("inception_v3", 299, "tf"),
}

_IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="product_classification")
class Uint8ImageNormalisation(keras.layers.Layer):
    """uint8 RGB pixels in, the float input the backbone's ImageNet weights were trained on out."""

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "tf"):
            raise ValueError(f"unknown normalisation mode {mode!r}")
        self.mode = mode

    def call(self, images):
        pixels = keras.ops.cast(images, "float32")
        if self.mode == "tf":
            return pixels / 127.5 - 1.0
        bgr = keras.ops.flip(pixels, axis=-1)
        return bgr - keras.ops.convert_to_tensor(_IMAGENET_MEAN_BGR, dtype="float32")

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def build_classifier(architecture: Architecture, class_count: int, *, dropout: float = 0.3,
                     weights_file: Path | None = None) -> keras.Model:
    """uint8 image -> in-graph normalisation -> backbone -> dropout -> softmax over the categories."""
    images = keras.Input((architecture.input_size, architecture.input_size, 3), dtype="uint8", name="image")
    features = architecture.backbone(weights_file)(Uint8ImageNormalisation(architecture.normalisation)(images))
    if dropout > 0:
        features = keras.layers.Dropout(dropout)(features)
    probabilities = keras.layers.Dense(class_count, activation="softmax", name="probabilities")(features)
    return keras.Model(images, probabilities, name=architecture.model_name)
