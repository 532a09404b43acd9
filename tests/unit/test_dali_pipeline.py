"""The production photo_decode: the DALI pipeline file the trainer writes into the model repository
(services/trainer/photo_ensemble.py), run as written but for two words, its decoder on DALI's CPU backend instead of
"mixed" (nvJPEG on a GPU) and no GPU device. The operators after the decoder are the ones a GPU host runs.

It is held to what the service and its twins assume of it: rows zero-padded to the batch's longest decode; the
squares and the thumbnail are the Pillow twin's (services/localstack/photo_decode_python.py, what stands in for it
where DALI is not installed); EXIF orientation is applied; and whatever the service sends it on the GPU decode path,
from every format the service accepts, decodes to the pixels the CPU path decodes (those DALI cannot read, or would
read otherwise, the service re-encodes first: prepare_encoded).
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.common.decode_path import (PHOTO_INPUT, THUMBNAIL_OUTPUT, THUMBNAIL_SHAPE_OUTPUT, THUMBNAIL_SIDE,
                                         image_output)
from services.preprocessing.images import ImageLimits, decode_rgb, prepare_encoded
from services.trainer.photo_ensemble import PAD_VALUE, dali_pipeline
from tests.unit.crafted_images import raw_tiff, rle8_codes, run_length_bmp
from tests.unit.triton_backend_fake import backend_utils

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = sorted((ROOT.parent / "shared" / "datasets" / "clothing-dataset-small" / "validation").glob("*/*.jpg"))
SIZE = 224


def production_pipeline(batch: int = 8):
    """photo_decode's pipeline as the trainer writes it, with the decoder on the CPU."""
    text = dali_pipeline([SIZE], batch)
    assert text.count('device="mixed"') == 1 and text.count("device_id=0") == 1, "the pipeline changed shape"
    text = text.replace('device="mixed"', 'device="cpu"').replace("device_id=0", "device_id=None")
    namespace: dict = {}
    exec(compile(text, "model.dali", "exec"), namespace)  # noqa: S102  (the repository's own file)
    # one batch in, one batch out, in this thread (Triton's backend feeds it the same way, a request at a time)
    pipeline = namespace["photo_decode"](exec_async=False, exec_pipelined=False, prefetch_queue_depth=1)
    pipeline.build()
    return pipeline


def decoded(photos: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(squares, thumbnails, thumbnail shapes) for photos sent as Triton hands them over: one row each, zero-padded
    to the batch's longest. A pipeline of its own each time: one that failed is no longer valid, and Triton's DALI
    backend replaces it (triton-inference-server/dali_backend#25)."""
    pipeline = production_pipeline()
    longest = max(len(photo) for photo in photos)
    pipeline.feed_input(PHOTO_INPUT, [np.frombuffer(photo + bytes(longest - len(photo)), np.uint8)
                                      for photo in photos])
    squares, thumbnails, shapes = (np.array(output.as_tensor()) for output in pipeline.run())
    return squares, thumbnails, shapes


def pillow_twin():
    """The Pillow twin of photo_decode, with Triton's stub module faked (it is not installed outside Triton)."""
    import importlib.util

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "triton_python_backend_utils", backend_utils())
        path = ROOT / "services/localstack/photo_decode_python.py"
        spec = importlib.util.spec_from_file_location("pillow_twin", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    twin = module.TritonPythonModel()
    outputs = [{"name": image_output(SIZE), "dims": [SIZE, SIZE, 3]},
               {"name": THUMBNAIL_OUTPUT, "dims": [THUMBNAIL_SIDE, THUMBNAIL_SIDE, 3]},
               {"name": THUMBNAIL_SHAPE_OUTPUT, "dims": [3]}]
    twin.initialize({"model_config": json.dumps({"input": [{"name": PHOTO_INPUT}], "output": outputs,
                                                 "parameters": {"pad_value": {"string_value": str(PAD_VALUE)}}})})
    return twin


@pytest.fixture(scope="module")
def twin():
    return pillow_twin()


def encode(image: Image.Image, form: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=form, **options)
    return buffer.getvalue()


def mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_real_photos_padded_as_triton_sends_them_decode_to_the_twins_squares_and_thumbnails(twin):
    photos = [PHOTOS[i].read_bytes() for i in (0, 40, 80, 120, 160)]
    large = Image.open(io.BytesIO(photos[1])).convert("RGB")
    photos.append(encode(large.resize((large.width * 3, large.height * 3), Image.BICUBIC), quality=90))
    photos.append(encode(Image.open(io.BytesIO(photos[2])).convert("L"), quality=90))  # grey
    squares, thumbnails, shapes = decoded(photos)
    assert squares.shape == (len(photos), SIZE, SIZE, 3) and thumbnails.shape == (len(photos), THUMBNAIL_SIDE, THUMBNAIL_SIDE, 3)
    for row, photo in enumerate(photos):
        image = twin._decode(np.frombuffer(photo, np.uint8))
        expected_thumbnail, expected_shape = twin._thumbnail(image)
        height, width, channels = shapes[row]
        assert abs(height - expected_shape[0]) <= 1 and abs(width - expected_shape[1]) <= 1 and channels == 3
        assert (thumbnails[row][height:] == 0).all() and (thumbnails[row][:, width:] == 0).all()
        # the same picture (DALI and Pillow resample a little differently), not merely the same size
        inside = (slice(0, min(height, expected_shape[0])), slice(0, min(width, expected_shape[1])))
        assert mean_difference(thumbnails[row][inside], expected_thumbnail[inside]) < 6, row
        assert mean_difference(squares[row], twin._square(image, SIZE)) < 6, row
        assert mean_difference(squares[row], squares[(row + 1) % len(photos)]) > 15  # each row its own photo


def test_the_exif_orientation_is_applied_as_the_cpu_path_and_the_twin_apply_it(twin):
    photo = Image.open(PHOTOS[0]).convert("RGB")  # portrait
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: shown after turning 90 degrees clockwise
    data = encode(photo.transpose(Image.Transpose.ROTATE_90), quality=95, exif=exif.tobytes())
    _, thumbnails, shapes = decoded([data])
    upright = decode_rgb(data, ImageLimits(), THUMBNAIL_SIDE)  # the CPU path's decode
    assert upright.height > upright.width and shapes[0][0] > shapes[0][1]
    expected, expected_shape = twin._thumbnail(twin._decode(np.frombuffer(data, np.uint8)))
    assert expected_shape.tolist() == shapes[0].tolist()
    assert mean_difference(thumbnails[0], expected) < 6


def seller_uploads() -> dict[str, bytes]:
    """One photo in every format and mode the service accepts, some transparent around the product."""
    photo = Image.open(PHOTOS[7]).convert("RGB")
    photo.thumbnail((300, 300))
    rgba = photo.convert("RGBA")
    alpha = np.asarray(rgba).copy()
    alpha[: alpha.shape[0] // 4, :, 3] = 0  # transparent, over black pixels: DALI would show them black
    alpha[: alpha.shape[0] // 4, :, :3] = 0
    transparent = Image.fromarray(alpha)
    keyed = photo.copy()
    keyed.paste((0, 0, 0), (0, 0, photo.width, photo.height // 4))
    exif = Image.Exif()
    exif[0x0112] = 8
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE)
    uploads = {
        "jpeg": encode(photo, quality=90), "jpeg-progressive": encode(photo, quality=90, progressive=True),
        "jpeg-grey": encode(photo.convert("L")), "jpeg-cmyk": encode(photo.convert("CMYK")),
        "jpeg-exif-8": encode(photo, exif=exif.tobytes()),
        "mpo": encode(photo, "MPO", save_all=True, append_images=[photo.resize((100, 100))]),
        "png": encode(photo, "PNG"), "png-palette": encode(palette, "PNG"), "png-rgba": encode(transparent, "PNG"),
        "png-transparent-colour": encode(keyed, "PNG", transparency=(0, 0, 0)),
        "png-16-bit-grey": encode(Image.fromarray((np.asarray(photo.convert("L"), np.uint16) * 257)), "PNG"),
        "png-bilevel": encode(photo.convert("1"), "PNG"),
        "webp": encode(photo, "WEBP", quality=90), "webp-rgba": encode(transparent, "WEBP", lossless=True),
        "gif": encode(palette, "GIF"), "gif-transparent": encode(palette, "GIF", transparency=0),
        "bmp": encode(photo, "BMP"), "bmp-palette": encode(palette, "BMP"),
        "bmp-rle8": run_length_bmp(*palette.size, rle8_codes(np.asarray(palette)), palette=palette.getpalette()),
        "tiff": encode(photo, "TIFF"), "tiff-tiled": raw_tiff(photo, tile=64),
        "tiff-lzw": encode(photo, "TIFF", compression="tiff_lzw"), "tiff-rgba": encode(transparent, "TIFF"),
        "avif": encode(photo, "AVIF", quality=90),
    }
    return uploads


@pytest.mark.parametrize("kind", list(seller_uploads()))
def test_what_the_service_sends_decodes_to_the_pixels_the_cpu_path_decodes(twin, kind):
    data = seller_uploads()[kind]
    prepared = prepare_encoded(data, ImageLimits(), THUMBNAIL_SIDE, thumbnail_in_triton=True)
    _, thumbnails, shapes = decoded([prepared.encoded])
    cpu_path = decode_rgb(data, ImageLimits(), THUMBNAIL_SIDE)  # transparency on white, turned, any mode to RGB
    expected, expected_shape = twin._thumbnail(cpu_path)
    height, width, _ = shapes[0]
    assert abs(height - expected_shape[0]) <= 1 and abs(width - expected_shape[1]) <= 1, kind
    inside = (slice(0, min(height, expected_shape[0])), slice(0, min(width, expected_shape[1])))
    assert mean_difference(thumbnails[0][inside], expected[inside]) < 8, kind


def test_a_photo_that_does_not_decode_fails_its_batch_as_the_service_expects():
    """The service retries a batch Triton refuses one photo at a time, so one broken photo fails alone."""
    good = PHOTOS[3].read_bytes()
    with pytest.raises(RuntimeError, match="decoders.image"):
        decoded([good, b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8])
    squares, _, _ = decoded([good])  # alone, the good one decodes
    assert squares.shape == (1, SIZE, SIZE, 3)
