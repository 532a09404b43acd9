"""Fine-tuning one network the way the research does; every choice is a setting whose default is the research's."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from services.trainer.architectures import ARCHITECTURES, build_classifier, keras
from services.trainer.augment import augment_batch
from services.trainer.dataset import Dataset


class TrainingSettings(BaseModel):
    """The research's method; each field's default is the research's value unless said otherwise."""

    epochs: int = Field(10, description="passes over the training split")
    batch_size: int = 32
    learning_rate: float = Field(0.1, description="SGD's initial learning rate")
    momentum: float = Field(0.0, description="SGD momentum (the research uses plain SGD)")
    plateau_patience: int = Field(2, description="epochs without a better validation accuracy before the learning "
                                  "rate is halved")
    dropout: float = Field(0.3, description="dropout before the classifier (0 turns it off)")
    augmentation: bool = Field(True, description="flips, random crops with scale jitter, colour jitter")
    trainable_fraction: float = Field(0.75, description="share of the backbone's parameters that train; the early "
                                      "layers holding the rest are frozen")
    grey_stream: bool = Field(True, description="fuse a grey-level stream with the RGB features")
    batch_norm_momentum: float = Field(0.99, description="moving-average momentum of the backbone's batch norms "
                                       "(Keras's 0.99; 0.9 settles within the few steps of a small catalogue)")
    validation_fraction: float = Field(0.2, description="held out per category for validation")
    seed: int = 0


# The research's pair from random initialisation, distilled from a pretrained teacher: a lower rate with momentum
# (0.1 without ImageNet weights diverges) and quicker-settling batch norms; everything trains.
DISTILLATION_FROM_SCRATCH = TrainingSettings(learning_rate=0.01, momentum=0.9, batch_norm_momentum=0.9,
                                             trainable_fraction=1.0, grey_stream=True)


@dataclass
class TrainedModel:
    model_name: str
    input_size: int
    model: object
    history: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0
    images_per_s: float = 0.0


class AugmentedBatches(keras.utils.PyDataset):
    """Shuffled, augmented training batches, a fresh order and fresh augmentations each epoch."""

    def __init__(self, data: Dataset, batch_size: int, augment: bool, seed: int, targets: np.ndarray | None = None):
        super().__init__()
        self.data, self.batch_size, self.augment = data, batch_size, augment
        self.targets = data.labels if targets is None else targets
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(data.labels))

    def __len__(self) -> int:
        return int(np.ceil(len(self.order) / self.batch_size))

    def __getitem__(self, index: int):
        chosen = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        images = self.data.images[chosen]
        return (augment_batch(images, self.rng) if self.augment else images), self.targets[chosen]

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(len(self.data.labels))


def _set_batch_norm_momentum(model, momentum: float) -> None:
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def train_model(model_name: str, input_size: int, train: Dataset, validation: Dataset, settings: TrainingSettings,
                weights_file: Path | None = None, verbose: int | None = None,
                soft_targets: np.ndarray | None = None) -> TrainedModel:
    """soft_targets: (N, classes) distributions to learn instead of the hard labels (distillation from a teacher)."""
    keras.utils.set_random_seed(settings.seed)
    architecture = ARCHITECTURES[model_name].with_input_size(input_size)
    if weights_file is None:
        print(f"{model_name}: WARNING no ImageNet weights file given: training from RANDOM initialisation",
              file=sys.stderr)
    model = build_classifier(architecture, len(train.categories), dropout=settings.dropout, weights_file=weights_file,
                             grey_stream=settings.grey_stream, trainable_fraction=settings.trainable_fraction)
    _set_batch_norm_momentum(model, settings.batch_norm_momentum)
    soft = soft_targets is not None
    model.compile(optimizer=keras.optimizers.SGD(settings.learning_rate, momentum=settings.momentum),
                  loss="categorical_crossentropy" if soft else "sparse_categorical_crossentropy",
                  metrics=["categorical_accuracy" if soft else "accuracy"])
    monitor = "val_categorical_accuracy" if soft else "val_accuracy"
    callbacks = [keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode="max", factor=0.5,
                                                   patience=settings.plateau_patience, min_lr=1e-4)]
    validation_targets = (np.eye(len(train.categories), dtype=np.float32)[validation.labels] if soft
                          else validation.labels)
    began = time.perf_counter()
    history = model.fit(AugmentedBatches(train, settings.batch_size, settings.augmentation, settings.seed,
                                         soft_targets),
                        validation_data=(validation.images, validation_targets), epochs=settings.epochs,
                        callbacks=callbacks, verbose=verbose if verbose is not None else (1 if sys.stdout.isatty()
                                                                                          else 2))
    seconds = time.perf_counter() - began
    curves = {key.replace("categorical_accuracy", "accuracy"): [float(v) for v in values]
              for key, values in history.history.items()}
    return TrainedModel(model_name, input_size, model, curves, seconds,
                        len(train.labels) * settings.epochs / seconds)
