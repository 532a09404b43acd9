"""bench-plumbing's stand-in for photo_decode (drivers/benchmarks/plumbing_decode_stand_in.py): its answers have the
shapes the Pillow twin's have for the same photos, and it refuses what the twin refuses, request by request, without
decoding a pixel. Triton's stub module is not installed here, so that seam is faked."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from services.common.decode_path import THUMBNAIL_OUTPUT, THUMBNAIL_SHAPE_OUTPUT, THUMBNAIL_SIDE, image_output
from tests.unit.triton_backend_fake import backend_utils

ROOT = Path(__file__).resolve().parents[2]


def load(path: Path, name: str, monkeypatch):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", backend_utils())
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    outputs = [{"name": image_output(224), "dims": [224, 224, 3]},
               {"name": THUMBNAIL_OUTPUT, "dims": [THUMBNAIL_SIDE, THUMBNAIL_SIDE, 3]},
               {"name": THUMBNAIL_SHAPE_OUTPUT, "dims": [3]}]
    model.initialize({"model_config": json.dumps({"input": [{"name": "photo"}], "output": outputs,
                                                  "parameters": {"pad_value": {"string_value": "255"}}})})
    return model


def batch(*photos: bytes) -> dict[str, np.ndarray]:
    """As Triton hands a batch of photos to the model: rows of uint8, zero-padded to the longest."""
    rows = np.zeros((len(photos), max(len(p) for p in photos)), np.uint8)
    for row, photo in zip(rows, photos):
        row[:len(photo)] = np.frombuffer(photo, np.uint8)
    return {"photo": rows}


def jpeg(width: int, height: int, orientation: int = 1) -> bytes:
    out = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.random.default_rng(width).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(
        out, "JPEG", exif=exif.tobytes())
    return out.getvalue()


def test_the_stand_in_answers_the_shapes_the_pillow_twin_answers_and_refuses_what_it_refuses(monkeypatch):
    stand_in = load(ROOT / "services/drivers/benchmarks/plumbing_decode_stand_in.py", "decode_stand_in", monkeypatch)
    twin = load(ROOT / "services/localstack/photo_decode_python.py", "decode_twin", monkeypatch)
    good = batch(jpeg(500, 300), jpeg(120, 400), jpeg(500, 300, orientation=6))  # the last one shown turned
    bad = batch(jpeg(64, 64), b"not a photo at all")
    # no pixel is decoded: a load() would fail the photo's request, and the first request must succeed
    monkeypatch.setattr(Image.Image, "load", lambda self: (_ for _ in ()).throw(AssertionError("pixels decoded")))
    answers = stand_in.execute([good, bad])
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", backend_utils())
    expected = twin.execute([good, bad])
    assert answers[0].error is None and expected[0].error is None
    for name in (image_output(224), THUMBNAIL_OUTPUT):
        assert answers[0].tensors[name].shape == expected[0].tensors[name].shape
    assert answers[0].tensors[THUMBNAIL_SHAPE_OUTPUT].tolist() == expected[0].tensors[THUMBNAIL_SHAPE_OUTPUT].tolist()
    side = THUMBNAIL_SIDE
    short, narrow = round(300 * side / 500), round(120 * side / 400)
    assert answers[0].tensors[THUMBNAIL_SHAPE_OUTPUT].tolist() == [[short, side, 3], [side, narrow, 3], [side, short, 3]]
    thumbnail = answers[0].tensors[THUMBNAIL_OUTPUT][1]
    assert thumbnail[:, narrow:].max() == 0 and thumbnail[:, :narrow].std() > 20  # photo-like where it is, zero beside
    assert (answers[0].tensors[image_output(224)] == 255).all()  # the pad value: the stand-in CNNs average colours
    assert answers[1].error and "cannot be decoded" in answers[1].error and expected[1].error
