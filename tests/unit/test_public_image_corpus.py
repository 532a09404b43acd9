"""Every file of a public corpus of images (Pillow's own test images: what fuzzers and bug reports found, broken
streams, bombs, every format's corners) as a seller's upload: each one is either prepared for the models or refused
with a clear error of the image's kind, on the CPU path and the GPU decode path's header checks alike; and the
service refuses exactly the files Pillow itself cannot decode, none that it can (within the pixel limit)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image

from services.common.errors import ClassificationError, ErrorKind
from services.preprocessing.images import ACCEPTED_FORMATS, ImageLimits, prepare_encoded, prepare_image
from tests.public_corpora import corpus_files, pillow_test_images

IMAGE_KINDS = {ErrorKind.INVALID_IMAGE, ErrorKind.IMAGE_TOO_LARGE}
SIZES = [224, 299]


@pytest.fixture(scope="module")
def corpus():
    return [(path.relative_to(root).as_posix(), path.read_bytes()) for root in [pillow_test_images()]
            for path in corpus_files(root)]


def outcome(prepare, data: bytes, thumbnail: bool = True) -> str:
    """"ok", the refusal's kind name, or what escaped (any other exception is a defect)."""
    try:
        prepared = prepare(data)
    except ClassificationError as error:
        assert error.kind in IMAGE_KINDS and len(str(error)) > 20, (error.kind, str(error))
        return error.kind.name
    except Exception as error:  # noqa: BLE001
        return f"escaped {type(error).__name__}: {error}"[:200]
    if prepared.tensors:
        for size in SIZES:
            tensor = prepared.tensors[size]
            if tensor.shape != (size, size, 3) or tensor.dtype != np.uint8:
                return f"tensor {tensor.shape} {tensor.dtype}"
    if thumbnail and not prepared.thumbnail_jpeg.startswith(b"\xff\xd8"):
        return "no thumbnail"
    return "ok"


def test_every_file_is_prepared_or_refused_with_an_image_error(corpus):
    assert len(corpus) > 1000
    escaped = {}
    counts: dict[str, int] = {}
    for name, data in corpus:
        for path, prepare in (("cpu", lambda d: prepare_image(d, SIZES, ImageLimits(), thumbnail_size=224)),
                              ("gpu-decode", lambda d: prepare_encoded(d, ImageLimits(), thumbnail_size=224))):
            result = outcome(prepare, data)
            counts[f"{path} {result}"] = counts.get(f"{path} {result}", 0) + 1
            if result not in ("ok", *(kind.name for kind in IMAGE_KINDS)):
                escaped[f"{path} {name}"] = result
    assert not escaped, escaped
    # Not vacuous: most of the corpus is real pictures, and its fuzzer finds are refused.
    assert counts.get("cpu ok", 0) > 600 and counts.get("cpu INVALID_IMAGE", 0) > 300, counts


def pillow_decodes(data: bytes, limits: ImageLimits) -> bool:
    """Pillow alone, with the formats the service accepts: opens, decodes the first frame, converts to RGB."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
            if image.width * image.height > limits.max_pixels:
                return False
            image.load()
            image.convert("RGB")
        return True
    except Exception:  # noqa: BLE001
        return False


def test_the_service_refuses_exactly_what_pillow_cannot_decode(corpus):
    """The hostile-image checks (structure steps, scans, EXIF, memory) refuse none of the corpus's real pictures, and
    nothing Pillow fails on gets through to a model."""
    limits = ImageLimits()
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # the service's own pixel limit is applied above
    try:
        disagree = {}
        for name, data in corpus:
            theirs = pillow_decodes(data, limits)
            ours = outcome(lambda d: prepare_image(d, SIZES, limits), data, thumbnail=False) == "ok"
            if theirs != ours:
                disagree[name] = "refused by the service" if theirs else "prepared though Pillow fails"
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    assert not disagree, disagree
