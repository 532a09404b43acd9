"""Packs into .gpu/ what `make bench-gpu` needs on a lent GPU machine that this checkout does not carry by itself.

That machine has PyTorch, torchvision, onnx and onnxruntime (CPU) but no tritonserver and no network, and at most
64 MiB travel with the working tree. So:
- tritonserver.tar.xz: the tritonserver binary, its Python backend and the Python 3.12 stub, with their libraries,
  from the installed nvidia-pytriton wheel (about 27 MB compressed);
- site/: tritonclient, onnx2torch and protobuf for Python 3.12, unpacked;
- models/: efficientnet_lite0.onnx with its real weights (the accuracy figures); every other served model
  (efficientnet_lite1, resnet50, inception_v3) with its float weights stripped (21 and about 90 MB each otherwise),
  which bench_gpu.py refills with random values of the same shapes: the same graph does the same work, so the speed
  is theirs, the accuracy is not;
- photos/: the validation photos (folder per category).

With --training it packs .gpu-train/ instead, for `python -m services.trainer.full_size` there: the clothing photos
(train/ and validation/) re-encoded as WebP with their longer side at 299 px (the largest input), the teacher's soft
labels for them from the published efficientnet_lite0, and the wheels of keras, pydantic and their missing needs for
Python 3.12 (install them there with `pip install --no-index --no-deps --target DIR .gpu-train/wheels/*`).
Both folders are ignored by git (.git/info/exclude); name one in the device tool's `carry`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("tritonclient==2.73.0", "python-rapidjson==1.25", "onnx2torch==1.5.15", "protobuf==6.33.6")
TRAINING_PACKAGES = ("keras==3.15.1", "namex==0.1.0", "optree==0.20.0", "pydantic==2.14.4", "pydantic_core==2.50.5",
                     "annotated-types==0.8.0", "typing-inspection==0.4.5", "typing_extensions==4.16.0",
                     "protobuf==6.33.6")  # the contracts were generated for protobuf 6
TRAINING_LONGER_SIDE = 299  # the largest input size
STUB_PYTHON = "3.12"  # the GPU machines' python3
ACCURACY_MODEL = "efficientnet_lite0"  # the one model carried with its real weights


def served_classifiers(repository: Path) -> list[str]:
    """The classifiers in the model repository (the decode path's steps have no labels.txt)."""
    return sorted(config.parent.name for config in repository.glob("*/config.pbtxt")
                  if (config.parent / "labels.txt").exists())


def pack_tritonserver(destination: Path) -> None:
    import pytriton

    site_packages = Path(pytriton.__file__).parents[1]
    keep_stub = f"python_backend_stubs/{STUB_PYTHON}/"

    def wanted(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if "__pycache__" in info.name or ("python_backend_stubs/" in info.name and keep_stub not in info.name + "/"
                                          and not info.name.endswith("python_backend_stubs")):
            return None
        if "libpython3-" in info.name:  # the 3.13 stub's interpreter; the 3.12 stub uses the machine's libpython
            return None
        return info

    with tarfile.open(destination, "w:xz", preset=6) as archive:
        archive.add(site_packages / "pytriton" / "tritonserver", "pytriton/tritonserver", filter=wanted)
        archive.add(site_packages / "nvidia_pytriton.libs", "nvidia_pytriton.libs", filter=wanted)


def strip_weights(source: Path, destination: Path) -> None:
    import onnx

    model = onnx.load(str(source))
    for tensor in model.graph.initializer:
        if tensor.data_type == onnx.TensorProto.FLOAT and tensor.raw_data and len(tensor.raw_data) > 4096:
            tensor.ClearField("raw_data")
    entry = model.metadata_props.add()
    entry.key, entry.value = "weights_stripped", "float initializers over 1024 values; refill before use"
    onnx.save(model, str(destination))


def install_for_gpu_python(packages: tuple[str, ...], target: Path, wheels_only: bool = False) -> None:
    """Unpacked into target, or (wheels_only) their wheels in target, a third of the bytes, for `pip install
    --no-index --target` there."""
    shutil.rmtree(target, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "download" if wheels_only else "install", "-q", "--no-deps",
                    "--only-binary=:all:",
                    "--python-version", STUB_PYTHON, "--implementation", "cp", "--platform", "manylinux2014_x86_64",
                    "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux_2_27_x86_64",
                    "--platform", "manylinux_2_28_x86_64", "--dest" if wheels_only else "--target", str(target),
                    *packages],
                   check=True)
    shutil.rmtree(target / "bin", ignore_errors=True)  # perf_analyzer and friends


def reduced_catalogue(source: Path, destination: Path, longer_side: int) -> None:
    from PIL import Image, ImageOps

    shutil.rmtree(destination, ignore_errors=True)
    for path in sorted(source.glob("*/*/*")):
        target = destination / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
            image.thumbnail((longer_side, longer_side), Image.Resampling.LANCZOS)
            image.save(target.with_suffix(".webp"), "WEBP", quality=82, method=4)  # a third of a JPEG's bytes


def pack_training(destination: Path, catalogue: Path) -> None:
    from services.trainer.full_size import write_soft_labels

    reduced_catalogue(catalogue, destination / "catalogue", TRAINING_LONGER_SIDE)
    write_soft_labels(destination / "catalogue", published_onnx(REPOSITORY_ROOT / "triton_models",
                                                                "efficientnet_lite0"), destination / "teacher.npz")
    shutil.rmtree(destination / "site", ignore_errors=True)
    install_for_gpu_python(TRAINING_PACKAGES, destination / "wheels", wheels_only=True)


def published_onnx(repository: Path, name: str) -> Path:
    versions = sorted((p for p in (repository / name).iterdir() if p.is_dir() and p.name.isdigit()),
                      key=lambda p: int(p.name))
    if not versions:
        raise SystemExit(f"{repository / name} has no version: run `make models` first")
    return versions[-1] / "model.onnx"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--training", action="store_true", help="pack .gpu-train/ for services.trainer.full_size")
    parser.add_argument("--catalogue", type=Path,
                        default=REPOSITORY_ROOT.parent / "shared" / "datasets" / "clothing-dataset-small")
    options = parser.parse_args()
    destination = REPOSITORY_ROOT / (".gpu-train" if options.training else ".gpu")
    destination.mkdir(exist_ok=True)
    exclude = REPOSITORY_ROOT / ".git" / "info" / "exclude"
    if exclude.parent.exists() and f"/{destination.name}/" not in (exclude.read_text() if exclude.exists() else ""):
        with exclude.open("a") as handle:
            handle.write(f"/{destination.name}/\n")
    if options.training:
        pack_training(destination, options.catalogue)
        return report_size(destination)
    if not (destination / "tritonserver.tar.xz").exists():
        print("packing tritonserver (about a minute)", flush=True)
        pack_tritonserver(destination / "tritonserver.tar.xz")
    install_for_gpu_python(PACKAGES, destination / "site")
    models = destination / "models"
    shutil.rmtree(models, ignore_errors=True)
    models.mkdir()
    repository = REPOSITORY_ROOT / "triton_models"
    shutil.copy(published_onnx(repository, ACCURACY_MODEL), models / f"{ACCURACY_MODEL}.onnx")
    for name in served_classifiers(repository):
        if name != ACCURACY_MODEL:
            strip_weights(published_onnx(repository, name), models / f"{name}.onnx")
    shutil.rmtree(destination / "photos", ignore_errors=True)
    shutil.copytree(options.catalogue / "validation", destination / "photos")
    return report_size(destination)


def report_size(destination: Path) -> int:
    total = sum(p.stat().st_size for p in destination.rglob("*") if p.is_file())
    print(f"packed {destination}: {total / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
