"""The research's pair at its own input sizes (ResNet50 at 224 px, InceptionV3 at 299 px), distilled from the
fine-tuned EfficientNet-Lite0, on a machine with a GPU.

`make models` cannot afford this on 2 CPU cores: there the pair trains at 80 px for 2 epochs and stays weak. This
command trains it the same way (services/trainer/training.py: the research's recipe, random initialisation, the
teacher's soft labels mixed with the true label), only larger and longer, on a GPU (float32 with TF32 matrix units;
Keras's float16 policy would also put the softmax in float16). It
prints each model's validation accuracy and writes each model's validation probabilities (validation_probabilities.npz)
so that the fusion with the published models can be fitted and cross-validated where those are.

  python -m services.trainer.full_size --catalogue DIR --soft-labels teacher.npz [--epochs 30] [--out DIR]

teacher.npz holds `probabilities`, the teacher's (N, classes) output for the catalogue's train/ photos in the order
services/trainer/dataset.py loads them, and `categories`; `--write-soft-labels` makes it from a published
efficientnet_lite0 (what services/drivers/benchmarks/gpu_host/carry.py does before the trip).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

SIZES = {"resnet50": 224, "inception_v3": 299}


def write_soft_labels(catalogue: Path, onnx_path: Path, destination: Path) -> None:
    from services.trainer.dataset import load_catalogue
    from services.trainer.pretrained import onnx_session, run_onnx

    train = load_catalogue(catalogue / "train", 224)
    probabilities = run_onnx(onnx_session(onnx_path), train.images)
    np.savez_compressed(destination, probabilities=probabilities.astype(np.float32),
                        categories=np.asarray(train.categories), labels=train.labels)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalogue", type=Path, required=True, help="holds train/ and validation/")
    parser.add_argument("--soft-labels", type=Path, required=True)
    parser.add_argument("--write-soft-labels", type=Path, metavar="ONNX",
                        help="write --soft-labels from this published efficientnet_lite0 model.onnx and stop")
    parser.add_argument("--models", default="resnet50,inception_v3")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--distillation-share", type=float, default=0.7)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".run/full_size")))
    options = parser.parse_args()
    if options.write_soft_labels:
        write_soft_labels(options.catalogue, options.write_soft_labels, options.soft_labels)
        print(f"wrote {options.soft_labels}")
        return 0

    from services.trainer.dataset import load_catalogue_sizes
    from services.trainer.training import DISTILLATION_FROM_SCRATCH, train_model

    import torch

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    teacher = np.load(options.soft_labels)
    names = options.models.split(",")
    sizes = sorted({SIZES[n] for n in names})
    began = time.perf_counter()
    train = load_catalogue_sizes(options.catalogue / "train", sizes, progress=False)
    categories = train[sizes[0]].categories
    if list(teacher["categories"]) != categories or not np.array_equal(teacher["labels"], train[sizes[0]].labels):
        print("the soft labels are not this catalogue's (categories or photo order differ)", file=sys.stderr)
        return 2
    validation = load_catalogue_sizes(options.catalogue / "validation", sizes, 1, progress=False,
                                      categories=categories)
    print(f"loaded {len(train[sizes[0]].labels)} training and {len(validation[sizes[0]].labels)} validation photos "
          f"at {sizes} px in {time.perf_counter() - began:.0f} s on {device}", flush=True)
    one_hot = np.eye(len(categories), dtype=np.float32)[train[sizes[0]].labels]
    targets = (options.distillation_share * teacher["probabilities"] + (1 - options.distillation_share) * one_hot
               ).astype(np.float32)
    settings = DISTILLATION_FROM_SCRATCH.model_copy(update={"epochs": options.epochs})
    options.out.mkdir(parents=True, exist_ok=True)
    report, probabilities = {"device": device, "epochs": options.epochs}, {}
    for name in names:
        size = SIZES[name]
        trained = train_model(name, size, train[size], validation[size], settings, None, verbose=2,
                              soft_targets=targets)
        probabilities[name] = np.asarray(trained.model.predict(validation[size].images, batch_size=128, verbose=0),
                                         np.float32)
        accuracy = float(np.mean(probabilities[name].argmax(1) == validation[size].labels))
        report[name] = {"input_size": size, "validation_top1": round(accuracy, 4),
                        "seconds": round(trained.seconds, 1), "images_per_s": round(trained.images_per_s, 1),
                        "best_epoch_validation": round(max(trained.history.get("val_accuracy", [0])), 4)}
        print(f"{name} at {size} px: validation top-1 {accuracy:.3f} after {options.epochs} epochs "
              f"({trained.seconds:.0f} s, {trained.images_per_s:.0f} images/s)", flush=True)
    np.savez_compressed(options.out / "validation_probabilities.npz", labels=validation[sizes[0]].labels,
                        categories=np.asarray(categories), **probabilities)
    (options.out / "full_size.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
