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
import numpy as np  # noqa: E402


@dataclass(frozen=True)
class Architecture:
    """What differs between the two networks: the Keras constructor, input size and ImageNet normalisation."""

    model_name: str
    input_size: int
    # "caffe": RGB->BGR and ImageNet mean subtracted (ResNet50); "tf": scaled to [-1, 1] (InceptionV3).
    normalisation: str

    def with_input_size(self, input_size: int) -> "Architecture":
        minimum = {"resnet50": 32, "inception_v3": 75}[self.model_name]
        if input_size < minimum:
            raise ValueError(f"{self.model_name} needs an input of at least {minimum} pixels, got {input_size}")
        return Architecture(self.model_name, input_size, self.normalisation)

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


@keras.saving.register_keras_serializable(package="product_classification")
class GreyLevel(keras.layers.Layer):
    """uint8 RGB -> one grey-level channel in [0, 1] (ITU-R BT.601 luma)."""

    def call(self, images):
        pixels = keras.ops.cast(images, "float32") / 255.0
        weights = keras.ops.convert_to_tensor([[0.299], [0.587], [0.114]], dtype="float32")
        return keras.ops.matmul(pixels, weights)


def grey_level_features(images, width: int = 32):
    """A light convolutional stream on the grey-level image; its pooled features join the RGB backbone's."""
    x = GreyLevel(name="grey_level")(images)
    for index, filters in enumerate((width, width * 2, width * 4)):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False, name=f"grey_conv{index}")(x)
        x = keras.layers.BatchNormalization(name=f"grey_bn{index}")(x)
        x = keras.layers.Activation("relu", name=f"grey_relu{index}")(x)
    return keras.layers.GlobalAveragePooling2D(name="grey_pool")(x)


def freeze_early_layers(backbone: keras.Model, trainable_fraction: float) -> float:
    """Freezes layers from the input on until only about trainable_fraction of the backbone's parameters train.

    Returns the fraction that actually trains (layers are frozen whole).
    """
    if not 0.0 <= trainable_fraction <= 1.0:
        raise ValueError(f"trainable_fraction must be within 0..1, got {trainable_fraction}")
    sizes = [(layer, sum(int(np.prod(w.shape)) for w in layer.weights)) for layer in backbone.layers]
    total = sum(size for _, size in sizes) or 1
    frozen = 0
    for layer, size in sizes:
        if frozen + size / 2 > (1.0 - trainable_fraction) * total:
            break
        layer.trainable = False
        frozen += size
    return 1.0 - frozen / total


def build_classifier(architecture: Architecture, class_count: int, *, dropout: float = 0.3,
                     weights_file: Path | None = None, grey_stream: bool = False,
                     trainable_fraction: float = 1.0) -> keras.Model:
    """uint8 image -> in-graph normalisation -> backbone (+ grey-level stream) -> dropout -> softmax."""
    images = keras.Input((architecture.input_size, architecture.input_size, 3), dtype="uint8", name="image")
    backbone = architecture.backbone(weights_file)
    freeze_early_layers(backbone, trainable_fraction)
    features = backbone(Uint8ImageNormalisation(architecture.normalisation)(images))
    if grey_stream:
        features = keras.layers.Concatenate(name="rgb_and_grey")([features, grey_level_features(images)])
    if dropout > 0:
        features = keras.layers.Dropout(dropout)(features)
    probabilities = keras.layers.Dense(class_count, activation="softmax", name="probabilities")(features)
    return keras.Model(images, probabilities, name=architecture.model_name)
