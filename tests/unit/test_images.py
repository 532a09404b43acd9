"""Image bytes to tensors: decoding, product crop, resize; bad bytes give a classified error."""

import io

import numpy as np
import pytest
from PIL import Image

from services.common.errors import ClassificationError, ErrorKind
from services.preprocessing.images import (ImageLimits, decode_rgb, image_digest, prepare_encoded, prepare_image,
                                           product_box, square_tensor, thumbnail_from_pixels)


def encode(image: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def product_on_white(width=600, height=400, box=(250, 100, 400, 300), colour=(200, 30, 30)) -> Image.Image:
    image = Image.new("RGB", (width, height), (250, 250, 250))
    image.paste(colour, box)
    return image


def test_tensors_have_each_models_input_size_and_uint8_layout():
    prepared = prepare_image(encode(product_on_white()), [224, 299], ImageLimits())
    assert set(prepared.tensors) == {224, 299}
    assert prepared.tensors[224].shape == (224, 224, 3) and prepared.tensors[224].dtype == np.uint8
    assert prepared.tensors[299].shape == (299, 299, 3)
    assert len(prepared.digest) == 64


def test_crop_finds_the_product_on_a_plain_background():
    left, top, right, bottom = product_box(product_on_white())
    # the product spans x 250..400, y 100..300; the crop holds it with a small margin and drops the rest
    assert 220 <= left <= 250 and 70 <= top <= 100 and 400 <= right <= 430 and 300 <= bottom <= 330


@pytest.mark.parametrize("width, height", [(1013, 677), (257, 131), (129, 3000), (90, 60)])
def test_crop_holds_the_product_and_little_else_whatever_the_image_size(width, height):
    # sizes the analysis scale does not divide, a very tall one, and one smaller than the analysis side
    product = (width * 2 // 5, height // 3, width * 3 // 5, height * 2 // 3)
    left, top, right, bottom = product_box(product_on_white(width, height, product))
    assert 0 <= left <= product[0] and 0 <= top <= product[1]
    assert product[2] <= right <= width and product[3] <= bottom <= height
    # the 6% margin, and two analysis pixels either side for the shrunk image's blur
    slack = 0.06 * max(product[2] - product[0], product[3] - product[1]) + 2 * max(1, max(width, height) / 128)
    assert left >= product[0] - slack and top >= product[1] - slack
    assert right <= product[2] + slack + 1 and bottom <= product[3] + slack + 1


def test_crop_falls_back_to_the_whole_image_on_a_busy_background():
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8))
    assert product_box(noise) == (0, 0, 300, 300)


def test_product_fills_the_tensor_after_crop():
    tensor = prepare_image(encode(product_on_white(), "PNG"), [224], ImageLimits()).tensors[224]
    red = (tensor[..., 0] > 150) & (tensor[..., 1] < 100)
    assert red.mean() > 0.5  # the 150x200 product was 12% of the photo, now most of the tensor


def test_square_tensor_keeps_aspect_ratio_by_padding():
    wide = Image.new("RGB", (400, 100), (0, 0, 255))
    tensor = square_tensor(wide, 100)
    assert (tensor[50, :, 2] > 200).all()  # the middle row is the image


def test_transparent_png_is_composited_on_white():
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    tensor = prepare_image(encode(image, "PNG"), [32], ImageLimits()).tensors[32]
    assert tensor.min() >= 250


def transparent_with_a_product(mode: str) -> bytes:
    """2403x1601, transparent (hiding black) but for an opaque red product whose edges straddle averaging windows."""
    if mode == "P":
        image = Image.new("P", (2403, 1601), 0)
        image.putpalette([0, 0, 0, 220, 20, 20])
        image.paste(1, (601, 401, 1803, 1201))
        return encode(image, "PNG", transparency=0)
    image = Image.new("RGBA", (2403, 1601), (0, 0, 0, 0))
    image.paste((220, 20, 20, 255), (601, 401, 1803, 1201))
    return encode(image, "PNG")


@pytest.mark.parametrize("mode", ["RGBA", "P"])
def test_a_large_image_in_another_format_is_averaged_down_once_decoded_without_dark_edges(mode):
    """As a JPEG decodes at a reduced DCT scale, a PNG far larger than the models need is averaged down by a whole
    factor right after decoding (its longer side still covers the input); transparent pixels' hidden black is
    weighted by their alpha, so every pixel is the product's red, white, or a blend of the two."""
    decoded = decode_rgb(transparent_with_a_product(mode), ImageLimits(), 224)
    assert decoded.size == (241, 161)  # 2403 // 224 = 10
    pixels = np.asarray(decoded).astype(int)
    assert pixels[..., 0].min() >= 219 and (pixels[..., 1] == pixels[..., 2]).all()
    assert (pixels[..., 1] < 30).any() and (pixels[..., 1] > 250).any() and ((pixels[..., 1] > 30)
                                                                           & (pixels[..., 1] < 250)).any()


@pytest.mark.parametrize("data, kind", [
    (b"", ErrorKind.INVALID_IMAGE),
    (b"definitely not an image", ErrorKind.INVALID_IMAGE),
    (encode(product_on_white())[:300], ErrorKind.INVALID_IMAGE),
])
def test_bad_bytes_give_an_invalid_image_error(data, kind):
    with pytest.raises(ClassificationError) as raised:
        prepare_image(data, [224], ImageLimits())
    assert raised.value.kind is kind and raised.value.reason


def test_limits_reject_too_many_bytes_and_pixels():
    data = encode(product_on_white(2000, 2000, (100, 100, 900, 900)))
    with pytest.raises(ClassificationError) as raised:
        prepare_image(data, [224], ImageLimits(max_bytes=len(data) - 1))
    assert raised.value.kind is ErrorKind.IMAGE_TOO_LARGE
    with pytest.raises(ClassificationError) as raised:
        prepare_image(data, [224], ImageLimits(max_pixels=1_000_000))
    assert raised.value.kind is ErrorKind.IMAGE_TOO_LARGE and "2000x2000" in raised.value.reason


def test_the_thumbnail_is_a_small_jpeg_of_the_whole_photo_within_the_bound():
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (2000, 3000, 3), dtype=np.uint8))
    for image in (product_on_white(), noisy):
        prepared = prepare_image(encode(image, quality=95), [224], ImageLimits(), thumbnail_size=256)
        thumbnail = Image.open(io.BytesIO(prepared.thumbnail_jpeg))
        assert thumbnail.format == "JPEG" and max(thumbnail.size) <= 256
        assert abs(thumbnail.size[0] / thumbnail.size[1] - image.size[0] / image.size[1]) < 0.02  # not the crop
        assert 0 < len(prepared.thumbnail_jpeg) <= 64 * 1024
    assert prepare_image(encode(product_on_white()), [224], ImageLimits()).thumbnail_jpeg == b""


def jpeg_of(pixels: np.ndarray) -> bytes:
    return encode(Image.fromarray(pixels), quality=80)


def test_an_uncropped_photo_resized_for_the_model_is_its_thumbnail_without_a_second_resize(monkeypatch):
    """Resampling is most of a photo's cost after decoding: a photo that needs no crop is resized once, for the
    model's square and the thumbnail of the same size alike."""
    blobs = Image.fromarray(np.random.default_rng(3).integers(0, 255, (10, 15, 3), dtype=np.uint8))
    data = encode(blobs.resize((450, 300), Image.BICUBIC), quality=95)  # no plain background: nothing to crop
    resizes = []
    original = Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda self, *a, **k: resizes.append(self.size) or original(self, *a, **k))
    prepared = prepare_image(data, [224], ImageLimits(), thumbnail_size=224)
    monkeypatch.undo()
    assert prepared.crop_box == (0, 0, *prepared.decoded_size) and len(resizes) == 1
    thumbnail = Image.open(io.BytesIO(prepared.thumbnail_jpeg))
    assert thumbnail.format == "JPEG" and thumbnail.size == (224, 149)
    square = prepared.tensors[224][37:37 + 149]  # the same picture, centred in the square
    assert np.abs(np.asarray(thumbnail, np.int16) - square).mean() < 3
    alone = prepare_image(data, [224], ImageLimits())
    assert np.array_equal(alone.tensors[224], prepared.tensors[224])
    resizes.clear()  # served beside a larger model (InceptionV3's 299 px), the 224-px picture is still the thumbnail
    monkeypatch.setattr(Image.Image, "resize", lambda self, *a, **k: resizes.append(self.size) or original(self, *a, **k))
    beside = prepare_image(data, [224, 299], ImageLimits(), thumbnail_size=224)
    monkeypatch.undo()
    assert len(resizes) == 2 and beside.thumbnail_jpeg == jpeg_of(beside.tensors[224][37:37 + 149])


def test_a_cropped_photo_keeps_the_whole_photo_as_its_thumbnail_and_a_small_one_is_never_enlarged():
    cropped = prepare_image(encode(product_on_white(), quality=95), [224], ImageLimits(), thumbnail_size=224)
    assert cropped.crop_box != (0, 0, *cropped.decoded_size)
    assert Image.open(io.BytesIO(cropped.thumbnail_jpeg)).size == (224, 149)  # the photo's shape, not the crop's
    small = prepare_image(encode(product_on_white(150, 100, (60, 30, 90, 70)), quality=95), [224], ImageLimits(),
                          thumbnail_size=224)
    assert Image.open(io.BytesIO(small.thumbnail_jpeg)).size == (150, 100)
    plain = Image.fromarray(np.random.default_rng(4).integers(0, 255, (100, 150, 3), dtype=np.uint8))
    assert Image.open(io.BytesIO(prepare_image(encode(plain), [224], ImageLimits(), thumbnail_size=224)
                                 .thumbnail_jpeg)).size == (150, 100)


def test_each_smaller_square_is_the_largest_ones_picture_resized_again():
    photo = encode(product_on_white(640, 480, (100, 100, 500, 400)), quality=95)
    prepared = prepare_image(photo, [80, 224], ImageLimits())
    decoded = decode_rgb(photo, ImageLimits(), 224).crop(prepared.crop_box)
    assert np.array_equal(prepared.tensors[224], square_tensor(decoded, 224))
    direct = square_tensor(decoded, 80).astype(np.int16)
    assert prepared.tensors[80].shape == (80, 80, 3) and np.abs(prepared.tensors[80] - direct).mean() < 2


def exif_rotated_jpeg(orientation: int) -> tuple[bytes, Image.Image]:
    """A landscape photo whose EXIF says how to turn it, and how it should look once turned."""
    image = product_on_white(600, 400, box=(50, 50, 200, 150))
    exif = Image.Exif()
    exif[0x0112] = orientation
    turned = {6: image.transpose(Image.Transpose.ROTATE_270), 3: image.transpose(Image.Transpose.ROTATE_180)}
    return encode(image, quality=95, exif=exif.tobytes()), turned[orientation]


def test_the_decode_path_sends_a_photo_triton_decodes_as_the_cpu_path_undecoded(monkeypatch):
    data, _ = exif_rotated_jpeg(6)  # Triton's decoder turns it as the EXIF says, as the CPU path does
    truncated = data[:len(data) // 2]  # a sound header over a body that stops half-way: Triton will refuse it
    monkeypatch.setattr(Image.Image, "load", lambda self: (_ for _ in ()).throw(AssertionError("pixels decoded")))
    for photo in (data, truncated):
        prepared = prepare_encoded(photo, ImageLimits(), thumbnail_size=256, thumbnail_in_triton=True)
        assert prepared.encoded == photo and prepared.thumbnail_jpeg == b"" and prepared.tensors == {}
    monkeypatch.undo()
    made_here = prepare_encoded(data, ImageLimits(), thumbnail_size=256)
    assert made_here.encoded == data and Image.open(io.BytesIO(made_here.thumbnail_jpeg)).size == (171, 256)


def test_the_decode_path_sends_triton_a_jpeg_of_what_it_would_not_decode_as_the_cpu_path():
    """GIF and AVIF, which Triton's DALI step does not read, and transparent photos, whose alpha it drops: decoded
    here as the CPU path decodes them (transparency on white), and sent as a JPEG of at most REENCODED_SIDE."""
    product = np.asarray(product_on_white(900, 600, box=(300, 200, 600, 400)).convert("RGBA")).copy()
    product[..., 3] = 0  # the background around the product transparent
    product[200:400, 300:600, 3] = 255
    product[product[..., 3] == 0, :3] = 0  # and black under its transparency
    transparent = Image.fromarray(product)
    for form, image in (("PNG", transparent), ("WEBP", transparent), ("GIF", transparent.convert("RGB")),
                        ("AVIF", transparent.convert("RGB"))):
        data = encode(image, form) if form != "WEBP" else encode(image, form, lossless=True)
        prepared = prepare_encoded(data, ImageLimits(), thumbnail_size=256, thumbnail_in_triton=True)
        sent = Image.open(io.BytesIO(prepared.encoded))
        assert sent.format == "JPEG" and sent.size == (512, 341), form
        assert prepared.digest == image_digest(data) and prepared.decoded_size == (900, 600)  # the photo's, as sent
        corner = np.asarray(sent)[:40, :40]
        expected = 255 if form in ("PNG", "WEBP") else 0  # transparency on white; GIF and AVIF here have none
        assert np.abs(corner.astype(int) - expected).mean() < 6, form
    plain = encode(product_on_white())
    assert prepare_encoded(plain, ImageLimits(), 256, thumbnail_in_triton=True).encoded == plain


def test_a_thumbnail_triton_made_is_cropped_and_encoded_like_one_made_here():
    for orientation in (6, 3):
        data, turned = exif_rotated_jpeg(orientation)
        # what photo_decode returns: the photo turned as its EXIF says, the longer side resized to 256, top-left in a
        # zero-padded square, and its shape
        resized = np.asarray(turned.resize((171, 256) if orientation == 6 else (256, 171), Image.BILINEAR))
        square = np.zeros((256, 256, 3), np.uint8)
        square[:resized.shape[0], :resized.shape[1]] = resized
        jpeg = thumbnail_from_pixels(square, np.array(resized.shape, np.int32), 256)
        thumbnail = Image.open(io.BytesIO(jpeg))
        local = Image.open(io.BytesIO(prepare_image(data, [224], ImageLimits(), thumbnail_size=256).thumbnail_jpeg))
        assert thumbnail.format == "JPEG" and thumbnail.size == local.size == turned.resize(local.size).size
        difference = np.abs(np.asarray(thumbnail, np.int16) - np.asarray(local, np.int16)).mean()
        assert difference < 4, difference  # the same picture, the padding cropped away
    smaller = Image.open(io.BytesIO(thumbnail_from_pixels(square, np.array([171, 256, 3]), 128)))
    assert smaller.size == (128, 86)  # a smaller setting resizes further
    for shape in ([0, 256, 3], [300, 256, 3], [171, 999, 3]):
        assert thumbnail_from_pixels(square, np.array(shape), 256) == b""  # a shape that does not fit


def _reference_product_box(image: Image.Image, margin=0.06, threshold=40, analysis_side=128):
    """The straightforward numpy statement of the product box, which product_box computes in Pillow: the photo
    averaged in blocks of the whole factor nearest to longer side / analysis_side (a partial block at the right and
    bottom edges averages what it holds)."""
    width, height = image.size
    factor = max(1, round(max(width, height) / analysis_side))
    pixels = np.asarray(image, dtype=np.float64)
    rows, columns = -(-height // factor), -(-width // factor)
    padded = np.full((rows * factor, columns * factor, 3), np.nan)
    padded[:height, :width] = pixels
    small = np.nanmean(padded.reshape(rows, factor, columns, factor, 3), axis=(1, 3))
    small = np.floor(small + 0.5).astype(np.int16)  # Image.reduce rounds to the nearest level
    border = np.concatenate([small[0], small[-1], small[:, 0], small[:, -1]])
    background = np.median(border, axis=0)
    if np.abs(border - background).max(axis=1).mean() > threshold:
        return 0, 0, width, height
    foreground = np.abs(small - background).max(axis=2) > threshold
    found_rows, found_columns = np.flatnonzero(foreground.any(axis=1)), np.flatnonzero(foreground.any(axis=0))
    if found_rows.size == 0 or foreground.mean() < 0.002:
        return 0, 0, width, height
    top, left = found_rows[0] * factor, found_columns[0] * factor  # block k holds pixels k*factor to (k+1)*factor-1
    bottom, right = min(height, (found_rows[-1] + 1) * factor), min(width, (found_columns[-1] + 1) * factor)
    pad = margin * max(right - left, bottom - top)
    return (max(0, int(left - pad)), max(0, int(top - pad)), min(width, int(right + pad + 0.5)),
            min(height, int(bottom + pad + 0.5)))


def _reference_square_tensor(image: Image.Image, size: int) -> np.ndarray:
    width, height = image.size
    scale = size / max(width, height)
    pixels = np.asarray(image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR,
                                     reducing_gap=2.0))
    edge = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    tensor = np.empty((size, size, 3), np.uint8)
    tensor[:] = np.median(edge, axis=0).astype(np.uint8)
    top, left = (size - pixels.shape[0]) // 2, (size - pixels.shape[1]) // 2
    tensor[top:top + pixels.shape[0], left:left + pixels.shape[1]] = pixels
    return tensor


def _test_images():
    from pathlib import Path

    rng = np.random.default_rng(1)
    dataset = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "clothing-dataset-small" / "validation"
    photos = [Image.open(p).convert("RGB") for p in sorted(dataset.rglob("*.jpg"))[::12]]
    drawn = [product_on_white(), product_on_white(90, 700, (20, 300, 60, 420)), Image.new("RGB", (1, 1)),
             Image.new("RGB", (5, 300), (10, 10, 10)), product_on_white(300, 300, (149, 149, 151, 151)),
             Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))]
    # a half-integer median background: an even count of border pixels split between two levels
    split = np.full((40, 40, 3), 100, np.uint8)
    split[:, 20:] = 101
    split[15:25, 15:25] = (141, 59, 180)
    return photos + drawn + [Image.fromarray(split)]


def test_product_box_and_square_tensor_give_the_reference_pixels_exactly():
    """The fast paths are bit-identical to the numpy statement, on real photos and on edge cases: the models were
    trained on the reference's pixels."""
    images = _test_images()
    assert len(images) > 30
    for image in images:
        box = product_box(image)
        assert box == _reference_product_box(image)
        for threshold in (0, 40, 254):
            assert product_box(image, threshold=threshold) == _reference_product_box(image, threshold=threshold)
        crop = image.crop(box)
        for size in (224, 80, 7):
            assert np.array_equal(square_tensor(crop, size), _reference_square_tensor(crop, size))
