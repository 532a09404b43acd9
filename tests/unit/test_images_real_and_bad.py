"""Images sellers really upload: real photographs in every format, and crafted bad inputs."""

from __future__ import annotations

import io
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import skimage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from services.common.errors import ClassificationError, ErrorKind
from services.drivers.chaos.poison import jpeg_scan_bomb, png_header_bomb
from services.preprocessing.image_structure import exif_steps, structure_steps
from services.preprocessing.images import SMALL_EXIF, ImageLimits, decode_rgb, prepare_encoded, prepare_image
from tests.unit.crafted_images import exif_block, raw_tiff, run_length_bmp

PHOTOS = Path(skimage.__file__).parent / "data"  # real photographs shipped in the scikit-image wheel
CLOTHING = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "clothing-dataset-small"
SIZES = [224, 299]


def photo(name: str) -> Image.Image:
    return Image.open(PHOTOS / name).convert("RGB")


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def assert_tensors(data: bytes) -> None:
    prepared = prepare_image(data, SIZES, ImageLimits())
    for size in SIZES:
        tensor = prepared.tensors[size]
        assert tensor.shape == (size, size, 3) and tensor.dtype == np.uint8
        assert tensor.std() > 3, "the tensor should hold a picture, not a flat colour"


@pytest.mark.parametrize("name", ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                                  "retina.jpg", "hubble_deep_field.jpg"])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_real_photographs_in_every_format(name, fmt):
    assert_tensors(encode(photo(name), fmt))


def test_avif_where_the_plugin_is_installed():
    from PIL import features

    if not features.check("avif"):
        pytest.skip("this Pillow build has no AVIF plugin")  # the only skip: a codec, not infrastructure
    assert_tensors(encode(photo("chelsea.png"), "AVIF"))


def test_exif_orientation_is_applied():
    image = photo("rocket.jpg")  # landscape: 640 x 427
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    decoded = decode_rgb(encode(image, "JPEG", exif=exif), ImageLimits(), 64)  # draft mode: decoded at 1/4 scale
    assert decoded.width < decoded.height
    assert decoded.height / decoded.width == pytest.approx(image.width / image.height, rel=0.02)


def orientation_six(kind: str) -> bytes:
    """rocket.jpg (landscape) with the orientation 6 (turned a quarter on display) where `kind` keeps it."""
    image = photo("rocket.jpg")
    if kind == "PNG eXIf":
        return encode(image, "PNG", exif=exif_block(6))
    if kind == "WebP EXIF":
        return encode(image, "WEBP", exif=exif_block(6))
    if kind == "PNG text, as ImageMagick keeps it":
        png, exif = encode(image, "PNG"), exif_block(6)
        text = f"\nexif\n{len(exif):8}\n{exif.hex()}\n".encode()
        return png[:33] + png_chunk(b"tEXt", b"Raw profile type exif\x00" + text) + png[33:]
    return raw_tiff(image if kind == "TIFF" else image.resize((2560, 1708)), orientation=6)


@pytest.mark.parametrize("kind", ["PNG eXIf", "WebP EXIF", "PNG text, as ImageMagick keeps it", "TIFF",
                                  "TIFF averaged down"])  # before, a TIFF averaged down lost its orientation
def test_the_orientation_is_applied_wherever_the_file_keeps_it(kind):
    decoded = decode_rgb(orientation_six(kind), ImageLimits(), 64)
    assert decoded.width < decoded.height, kind


def decoded_and_peak(data: bytes, side: int) -> tuple[Image.Image, int]:
    """decode_rgb's picture and the most memory Python and numpy held at once while it ran (Pillow's own pixel
    buffers are not traced)."""
    tracemalloc.start()
    try:
        decoded = decode_rgb(data, ImageLimits(), side)
        return decoded, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_turning_a_photo_reads_its_orientation_not_every_value_of_its_exif():
    """ImageOps.exif_transpose wrote the turned image's EXIF anew, unpacking every value of every tag: a 2 MB PNG
    whose EXIF held a tag of a million values took 0.67 CPU-s and 200 MB (traced here: Python's objects are)."""
    data = encode(photo("coffee.png"), "PNG", exif=exif_block(6, numbers=1_000_000))  # 15,625 steps: within
    decoded, peak = decoded_and_peak(data, 224)
    assert decoded.width < decoded.height
    assert peak < 20 * 1024 * 1024, peak


def test_a_jpegs_exif_is_read_for_its_orientation_alone_whatever_it_holds():
    """A JPEG's EXIF is at most 64 KB and is not counted: reading the orientation from it costs little whatever it
    says, here 8,000 fractions that exif_transpose unpacked and packed again (traced: Python's objects are)."""
    exif = b"Exif\x00\x00" + exif_block(6, fractions=8000)
    assert exif_steps(exif) > 8000 and len(exif) <= SMALL_EXIF
    data = encode(photo("coffee.png"), "JPEG", exif=exif)
    decoded, peak = decoded_and_peak(data, 224)
    assert decoded.width < decoded.height
    assert peak < 2 * 1024 * 1024, peak


def test_cmyk_jpeg_from_a_print_shop():
    data = encode(photo("coffee.png").convert("CMYK"), "JPEG")
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    assert_tensors(data)


def test_sixteen_bit_png():
    grey = np.asarray(photo("camera.png" if (PHOTOS / "camera.png").exists() else "coffee.png").convert("L"))
    data = encode(Image.fromarray(grey.astype(np.uint16) * 257), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    assert_tensors(data)


def test_a_large_sixteen_bit_png_is_averaged_down_before_any_copy_of_its_pixels():
    """A 7000 x 7000 16-bit grey PNG of 95 KB: before, the whole image became a float array (196 MB, traced here:
    numpy's allocations are) before it was averaged down."""
    gradient = np.tile(np.linspace(0, 65535, 7000).astype(np.uint16), (7000, 1))
    data = encode(Image.fromarray(gradient), "PNG")
    del gradient
    decoded, peak = decoded_and_peak(data, 299)
    assert decoded.mode == "RGB" and decoded.size == (305, 305)  # 7000 // 299 = 23, a partial block kept
    assert peak < 20 * 1024 * 1024, peak
    row = np.asarray(decoded)[150, :, 0].astype(int)
    assert row[0] < 5 and row[-2] > 250 and (np.diff(row[:-1]) >= 0).all()  # the gradient, dark to light


def test_palette_and_grey_images():
    assert_tensors(encode(photo("chelsea.png").convert("P"), "PNG"))
    assert_tensors(encode(photo("chelsea.png").convert("L"), "JPEG"))


def test_animated_gif_uses_the_first_frame():
    frames = [photo("chelsea.png"), Image.new("RGB", (451, 300), (0, 0, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    assert_tensors(data)


def test_wrong_extension_is_decoded_by_content():
    assert_tensors(encode(photo("coffee.png"), "PNG"))  # bytes are what count; a ".jpg" name changes nothing


def test_one_pixel_and_a_panorama():
    one = prepare_image(encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"), SIZES, ImageLimits())
    assert one.tensors[224].shape == (224, 224, 3)
    panorama = Image.new("RGB", (20000, 10), (240, 240, 240))
    panorama.paste((200, 0, 0), (9000, 0, 11000, 10))
    prepared = prepare_image(encode(panorama, "PNG"), SIZES, ImageLimits())
    assert prepared.tensors[299].shape == (299, 299, 3)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def structure_floods(count: int) -> dict[str, bytes]:
    """Small real images with count pieces of structure Pillow reads one at a time added where each format allows."""
    jpeg, png = encode(photo("rocket.jpg"), "JPEG"), encode(photo("coffee.png"), "PNG")
    gif = encode(photo("chelsea.png"), "GIF")
    picture = gif.index(b"\x2c", 13 + 3 * 256)  # the first image descriptor, after the global colour table
    idat = png.index(b"IDAT") - 4
    return {
        "JPEG markers": jpeg[:2] + b"\xff\xe5\x00\x02" * count + jpeg[2:],
        "JPEG padding": jpeg[:2] + b"\xff" * count + jpeg[2:],
        "PNG chunks before the image data": png[:33] + png_chunk(b"tEXt", b"k\x00v") * count + png[33:],
        "empty PNG image data chunks": png[:idat] + png_chunk(b"IDAT", b"") * count + png[idat:],
        "PNG chunks after the image data": png[:-12] + png_chunk(b"abCd", b"") * count + png[-12:],
        "GIF sub-blocks": gif[:picture] + b"\x21\xff\x0bNETSCAPE2.0" + b"\x01x" * count + b"\x00" + gif[picture:],
        # Pillow builds a list entry for each strip or tile when it opens an uncompressed TIFF and reads each in
        # Python; a 16 MB TIFF of 4 million one-row strips held a core for 21 s and took 1.3 GB.
        "TIFF strips": raw_tiff(photo("coffee.png").resize((60, count)), rows_per_strip=1),
        "TIFF tiles": raw_tiff(photo("coffee.png").resize((16 * 50, 16 * -(-count // 50))), tile=16),
        "big-endian TIFF strips": raw_tiff(photo("coffee.png").resize((60, count)), rows_per_strip=1, order=">"),
        "BigTIFF strips": raw_tiff(photo("coffee.png").resize((60, count)), rows_per_strip=1, big=True),
        "TIFF directory entries": raw_tiff(photo("coffee.png").resize((120, 80)), extra_entries=count),
        # Pillow unpacks a tag's values into Python objects, a fraction about 2 us: a 19 MB TIFF whose XResolution
        # held 2.4 million took 5.5 CPU-s and 384 MB.
        "TIFF fractions": raw_tiff(photo("coffee.png").resize((120, 80)), fractions=count),
        "TIFF numbers": raw_tiff(photo("coffee.png").resize((120, 80)), numbers=count * 64),  # 64 to a step
        # Pillow reads a TIFF's EXIF directory whole once its pixels are loaded: 1.5 million fractions, 3.2 CPU-s
        "TIFF EXIF directory": raw_tiff(photo("coffee.png").resize((120, 80)), exif_fractions=count),
        # the EXIF Pillow reads to find the orientation: an orientation tag of 2.3 million fractions took 5.4 CPU-s
        # (past a JPEG's 64 KB: a block that size is read in tens of ms whatever it says, and is not counted)
        "PNG EXIF fractions": encode(photo("coffee.png"), "PNG", exif=exif_block(6, fractions=count,
                                                                                 padding=SMALL_EXIF)),
        "WebP EXIF fractions": encode(photo("coffee.png"), "WEBP", exif=exif_block(6, fractions=count,
                                                                                   padding=SMALL_EXIF)),
        "PNG EXIF as ImageMagick keeps it": png[:33] + png_chunk(b"tEXt", b"Raw profile type exif\x00" + (
            f"\nexif\n{SMALL_EXIF:8}\n{exif_block(6, fractions=count, padding=SMALL_EXIF).hex()}\n").encode())
        + png[33:],
    }


@pytest.mark.parametrize("flood", list(structure_floods(1)))
def test_a_file_of_endless_markers_chunks_or_blocks_is_refused_from_a_count_and_a_photo_is_not(flood):
    """Pillow reads these one at a time in Python before any pixel: 16 MB of them held a core for up to 10 s."""
    limits = ImageLimits(max_structure_steps=2000)
    within = structure_floods(1500)[flood]
    assert prepare_image(within, SIZES, limits).tensors[224].shape == (224, 224, 3)
    with pytest.raises(ClassificationError) as raised:
        prepare_image(structure_floods(2500)[flood], SIZES, limits)
    assert raised.value.kind is ErrorKind.INVALID_IMAGE and "over 2000" in raised.value.reason
    with pytest.raises(ClassificationError):  # the GPU decode path checks the same before sending the bytes
        prepare_encoded(structure_floods(2500)[flood], limits)


def test_real_photos_are_far_under_the_structure_limit():
    for path in sorted(CLOTHING.glob("*/*/*.jpg"))[::40] if CLOTHING.exists() else []:
        assert structure_steps(path.read_bytes(), 10**6)[1] < 50
    for name in ("astronaut.png", "coffee.png", "motorcycle_left.png", "rocket.jpg"):
        assert structure_steps((PHOTOS / name).read_bytes(), 10**6)[1] < 200
    large = photo("astronaut.png").resize((4000, 3000))
    for options in ({}, {"compression": "tiff_lzw"}, {"compression": "tiff_adobe_deflate"}, {"compression": "jpeg"}):
        assert structure_steps(encode(large, "TIFF", **options), 10**6) < ("TIFF", 2000)  # libtiff: 64 KB strips
    assert structure_steps(raw_tiff(large, tile=256), 10**6) < ("TIFF", 2000)


def test_decompression_bomb_is_rejected_before_decoding():
    with pytest.raises(ClassificationError) as raised:
        prepare_image(png_header_bomb(100_000, 100_000), SIZES, ImageLimits())
    assert raised.value.kind is ErrorKind.IMAGE_TOO_LARGE and "100000x100000" in raised.value.reason


def test_a_jpeg_of_endless_scans_is_refused_from_its_markers_and_a_real_progressive_photo_is_not():
    bomb = jpeg_scan_bomb(1000, 2000)
    assert len(bomb) < 100_000
    unlimited = ImageLimits(max_jpeg_scans=10**6, max_jpeg_scan_pixels=10**12)
    assert decode_rgb(bomb, unlimited, 224).size == (250, 250)  # a JPEG that does decode
    with pytest.raises(ClassificationError) as error:
        prepare_image(bomb, SIZES, ImageLimits())
    assert error.value.kind is ErrorKind.INVALID_IMAGE and "over the limit of 100" in str(error.value)
    with pytest.raises(ClassificationError, match="scans"):  # the GPU decode path checks the same header
        prepare_encoded(bomb, ImageLimits())
    assert_tensors(encode(photo("astronaut.png"), "JPEG", progressive=True))


def test_a_large_jpeg_is_allowed_fewer_scans_in_proportion_to_its_pixels():
    """A scan's pass costs in proportion to the pixels: a 300 KB 7000x7000 file of 100 near-empty scans took 2.9
    CPU-s, four times what 100 scans of 12 megapixels do."""
    limits = ImageLimits(max_jpeg_scan_pixels=40 * 1000 * 1000)  # 40 scans of a megapixel
    bomb = jpeg_scan_bomb(1000, 35)  # 45 scans: within the limit of 100 scans, over 40 of a megapixel
    with pytest.raises(ClassificationError) as error:
        prepare_image(bomb, SIZES, limits)
    assert error.value.kind is ErrorKind.INVALID_IMAGE and "over the limit of 40 for 1000x1000" in str(error.value)
    with pytest.raises(ClassificationError, match="scans"):
        prepare_encoded(bomb, limits)
    assert decode_rgb(jpeg_scan_bomb(500, 35), limits, 224).size == (250, 250)  # a quarter of the pixels: 160
    real = photo("astronaut.png").resize((1000, 1000))
    assert_tensors(encode(real, "JPEG", progressive=True))  # about 10 scans
    defaults = ImageLimits()
    assert defaults.max_jpeg_scan_pixels // (12 * 1000 * 1000) == defaults.max_jpeg_scans == 100
    assert defaults.max_jpeg_scan_pixels // defaults.max_pixels == 24  # a phone photo with a gain map has about 21


def test_a_phone_jpeg_carrying_a_second_picture_decodes_its_first_at_a_reduced_scale():
    """Phones append an HDR gain map or a depth map (MPF); Pillow opens such a file as MPO, a JPEG."""
    first = photo("astronaut.png").resize((2048, 2048))
    multi = encode(first, "MPO", save_all=True, append_images=[Image.new("RGB", first.size)])
    assert Image.open(io.BytesIO(multi)).format == "MPO"
    plain = decode_rgb(encode(first, "JPEG"), ImageLimits(), 224)
    decoded = decode_rgb(multi, ImageLimits(), 224)
    assert decoded.size == plain.size == (256, 256)  # an eighth of the side: 2,048 / 8
    assert np.array_equal(np.asarray(decoded), np.asarray(plain))


def test_a_real_bomb_compressed_small_is_rejected_too():
    data = encode(Image.new("L", (12_000, 10_000)), "PNG", optimize=True)  # 120 MP of black, well under a MB
    assert len(data) < 1_000_000
    with pytest.raises(ClassificationError) as raised:
        prepare_image(data, SIZES, ImageLimits())
    assert raised.value.kind is ErrorKind.IMAGE_TOO_LARGE


@pytest.mark.parametrize("data", [
    b"",
    encode(Image.new("RGB", (50, 50)), "JPEG")[:120],
    encode(photo("chelsea.png"), "JPEG")[:-2000],
    encode(photo("chelsea.png"), "PNG")[:5000],
    b"GIF89a" + b"\x00" * 20,
    b"<html>not an image</html>",
])
def test_truncated_empty_and_fake_images_give_invalid_image(data):
    with pytest.raises(ClassificationError) as raised:
        prepare_image(data, SIZES, ImageLimits())
    assert raised.value.kind is ErrorKind.INVALID_IMAGE and raised.value.reason


@settings(max_examples=300, deadline=10_000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_random_bytes_never_crash_or_hang_the_decoder(data):
    try:
        prepare_image(data, [64], ImageLimits())
    except ClassificationError as error:
        assert error.kind in (ErrorKind.INVALID_IMAGE, ErrorKind.IMAGE_TOO_LARGE)


HEADERS = [encode(Image.new("RGB", (40, 30), (9, 9, 9)), fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")]
HEADERS += [raw_tiff(Image.new("RGB", (40, 30), (9, 9, 9)), tile=16),
            run_length_bmp(40, 30, (b"\x14\x03\x00\x04abcd\x10\x07\x00\x00") * 30 + b"\x00\x01")]


@settings(max_examples=300, deadline=10_000, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(HEADERS), st.integers(0, 200), st.binary(min_size=1, max_size=64))
def test_mutated_real_images_never_crash_or_hang_the_decoder(original, position, patch):
    position = min(position, len(original) - 1)
    data = original[:position] + patch + original[position + len(patch):]
    try:
        prepare_image(data, [64], ImageLimits())
    except ClassificationError as error:
        assert error.kind in (ErrorKind.INVALID_IMAGE, ErrorKind.IMAGE_TOO_LARGE)


@pytest.mark.parametrize("fmt", ["SGI", "DDS", "TGA", "PCX", "ICO", "PPM"])
def test_formats_outside_the_allow_list_never_reach_their_decoder(fmt):
    """Pillow can decode these, but no seller needs them: refused from the header with a clear INVALID_IMAGE."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, format=fmt)
    with pytest.raises(ClassificationError) as raised:
        prepare_image(buffer.getvalue(), [32], ImageLimits())
    assert raised.value.kind is ErrorKind.INVALID_IMAGE and "not one of the accepted formats" in raised.value.reason
    # the same file decodes once an operator accepts the format: it was the allow-list that refused it
    assert prepare_image(buffer.getvalue(), [32], ImageLimits(formats=(fmt,))).tensors[32].shape == (32, 32, 3)
