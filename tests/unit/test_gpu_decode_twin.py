"""The nvJPEG twin of photo_decode (drivers/benchmarks/gpu_host/photo_decode_nvjpeg.py) on the CPU: its squares and its
thumbnail are the Pillow twin's, with torch on the CPU standing in for CUDA. torchvision and Triton's stub module are
not installed here, so the seams they provide are faked (the decoding itself is exercised only on a GPU machine)."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from services.common.decode_path import THUMBNAIL_OUTPUT, THUMBNAIL_SHAPE_OUTPUT, THUMBNAIL_SIDE, image_output  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def load(path: Path, name: str, monkeypatch):
    for module in ("torchvision", "torchvision.io", "triton_python_backend_utils"):
        monkeypatch.setitem(sys.modules, module, types.ModuleType(module))
    sys.modules["torchvision.io"].ImageReadMode = types.SimpleNamespace(RGB="RGB")
    sys.modules["torchvision.io"].decode_image = sys.modules["torchvision.io"].decode_jpeg = None
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_config() -> dict:
    outputs = [{"name": image_output(224), "dims": [224, 224, 3]},
               {"name": THUMBNAIL_OUTPUT, "dims": [THUMBNAIL_SIDE, THUMBNAIL_SIDE, 3]},
               {"name": THUMBNAIL_SHAPE_OUTPUT, "dims": [3]}]
    return {"model_config": json.dumps({"input": [{"name": "photo"}], "output": outputs,
                                        "parameters": {"pad_value": {"string_value": "255"}}})}


def test_the_nvjpeg_twin_makes_the_thumbnail_and_squares_the_pillow_twin_makes(monkeypatch):
    from PIL import Image

    twin = ROOT / "services/drivers/benchmarks/gpu_host/photo_decode_nvjpeg.py"
    nvjpeg = load(twin, "nvjpeg_twin", monkeypatch).TritonPythonModel()
    nvjpeg.initialize(model_config())
    pillow = load(ROOT / "services/localstack/photo_decode_python.py", "pillow_twin", monkeypatch).TritonPythonModel()
    pillow.initialize(model_config())
    assert nvjpeg.outputs == pillow.outputs == [(image_output(224), 224)]
    assert nvjpeg.thumbnail_side == pillow.thumbnail_side == THUMBNAIL_SIDE
    pixels = np.random.default_rng(0).integers(0, 255, (300, 500, 3), dtype=np.uint8)
    pixels[:, :250] //= 3  # something to see
    chw = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
    thumbnail, shape = nvjpeg._thumbnail(chw)
    expected, expected_shape = pillow._thumbnail(Image.fromarray(pixels))
    height = round(300 * THUMBNAIL_SIDE / 500)
    assert shape.tolist() == expected_shape.tolist() == [height, THUMBNAIL_SIDE, 3]
    assert thumbnail.shape == expected.shape == (THUMBNAIL_SIDE, THUMBNAIL_SIDE, 3)
    assert (thumbnail.numpy()[height:] == 0).all() and (expected[height:] == 0).all()  # top-left, zero below
    difference = np.abs(thumbnail.numpy().astype(int) - expected.astype(int))[:height].mean()
    assert difference < 3, difference  # torch's and Pillow's antialiased bilinear differ by rounding
    square = nvjpeg._square(chw, 224).numpy()
    assert np.abs(square.astype(int) - pillow._square(Image.fromarray(pixels), 224).astype(int)).mean() < 3


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_nvjpeg_twin_turns_each_photo_as_its_exif_orientation_says_as_pillow_and_dali_do(monkeypatch, orientation):
    import io

    from PIL import Image, ImageOps

    nvjpeg = load(ROOT / "services/drivers/benchmarks/gpu_host/photo_decode_nvjpeg.py", "nvjpeg_twin", monkeypatch)
    pixels = np.random.default_rng(orientation).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", exif=exif.tobytes())  # lossless: the pixels compare exactly
    assert nvjpeg.exif_orientation(buffer.getvalue()) == orientation
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buffer.getvalue()))).convert("RGB"))
    chw = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
    assert (nvjpeg.turned(chw, orientation).permute(1, 2, 0).numpy() == expected).all()
