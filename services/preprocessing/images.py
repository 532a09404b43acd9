"""Image bytes to model input tensors: decode, segment the product from its background, crop, resize.

Pure functions, no I/O. The trainer calls the same code so the models see at serving time the pixels they saw in
training. Tensors are uint8 HWC; each model normalises inside its own graph.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops

from services.common.errors import ClassificationError, ErrorKind
from services.preprocessing import bmp_run_length, file_kinds
from services.preprocessing.decode_memory import MB, DecodeBudget, decode_bytes, refuse_over
from services.preprocessing.image_structure import STRUCTURE_STEPS, exif_steps, jpeg_scans, structure_steps

# Pillow's own bomb check is replaced by ours (a clear error, and a limit that is a setting).
Image.MAX_IMAGE_PIXELS = None


# The formats sellers upload on the web. Every other decoder Pillow has (PSD, DDS, FLI, SGI, ...) stays closed: a
# file is only ever handed to these.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")
# A JPEG as phones write it: one carrying a second picture (MPF: the HDR gain map or depth map appended after the
# photo) opens as Pillow's "MPO", a JPEG whose first frame is the photo; both decode at a reduced DCT scale.
JPEG_FORMATS = ("JPEG", "MPO")


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000  # checked from the header, before any pixel is decoded
    decode_timeout_s: float = 10.0
    formats: tuple[str, ...] = ACCEPTED_FORMATS
    # A progressive JPEG has about 10 scans. Each scan is one more pass over every block of the image whatever its
    # bytes, so a 750 KB file of 50,000 near-empty scans held a core for 14 s and a 20 MB one would for minutes
    # (after the caller's decode timeout, in a decoder thread that cannot be stopped).
    max_jpeg_scans: int = 100
    # Pillow reads a file's structure in Python one piece at a time, before any pixel: a JPEG's markers and padding
    # bytes before its image data, a PNG's chunks, a GIF's blocks before its first picture, a TIFF's directory
    # entries and strips or tiles, a run-length BMP's codes. A 16 MB JPEG of empty APP markers held a core for 8.8 s
    # in Image.open, 16 MB of 0xFF padding 9.7 s, an 18 MB PNG of empty chunks 5.5 s, a 16 MB TIFF of one-row
    # strips 21 s and 1.3 GB. A photo has tens of them (a large PNG a few thousand IDAT chunks, a scanned TIFF a
    # strip per few rows); counted first (image_structure).
    max_structure_steps: int = 50_000
    # Scans times pixels: a scan's pass costs in proportion to the pixels, so 100 scans of a 50-megapixel image cost
    # four times those of a 12-megapixel one (a 300 KB 7000x7000 file of 100 near-empty scans took 2.9 CPU-s, a
    # real progressive photo of that size 0.32). The default allows 100 scans up to 12 megapixels and 24 at the
    # pixel limit; a progressive photo has about 10, a phone's with a progressive gain map about 21.
    max_jpeg_scan_pixels: int = 1_200_000_000
    # What a worker's decodes may hold at once (decode_memory.py): every format but JPEG decodes at full size, and a
    # 49-megapixel WebP took 750 MB; a photo whose decode alone would take more is refused.
    decode_memory_bytes: int = 1024 * MB


@dataclass(frozen=True)
class PreparedImage:
    digest: str  # sha256 of the original bytes, hex
    tensors: dict[int, np.ndarray]  # input size -> uint8 (size, size, 3)
    crop_box: tuple[int, int, int, int]  # left, upper, right, lower in the decoded image
    decoded_size: tuple[int, int]  # width, height as decoded (JPEGs may decode reduced)
    thumbnail_jpeg: bytes = b""  # for the operators' console; empty when none was asked for
    encoded: bytes = b""  # what Triton decodes itself on the GPU decode path: the photo's bytes, or a JPEG made here


MAX_THUMBNAIL_BYTES = 64 * 1024  # the result service keeps nothing larger


def thumbnail_jpeg(image: Image.Image, longest_side: int) -> bytes:
    """A small JPEG of the whole photo (what the seller showed, not the crop), within MAX_THUMBNAIL_BYTES."""
    width, height = image.size
    scale = min(1.0, longest_side / max(width, height))
    # resize() makes the one new image needed (thumbnail() would need a copy of the whole photo first). BOX (each
    # output pixel the mean of the input pixels it covers) for a picture the operators look at: 0.42 ms against
    # BILINEAR's 0.61 for a 2-megapixel photo decoded at a quarter, on the development machine.
    return jpeg_within_limit(image.resize((max(1, round(width * scale)), max(1, round(height * scale))),
                                          Image.Resampling.BOX))


def jpeg_within_limit(small: Image.Image) -> bytes:
    """The picture as a JPEG of at most MAX_THUMBNAIL_BYTES (lower qualities tried in turn); empty when none fits."""
    for quality in (80, 60, 40):
        buffer = io.BytesIO()
        small.save(buffer, format="JPEG", quality=quality)
        if buffer.tell() <= MAX_THUMBNAIL_BYTES:
            return buffer.getvalue()
    return b""


def thumbnail_from_pixels(pixels: np.ndarray, shape: np.ndarray, longest_side: int) -> bytes:
    """The thumbnail Triton's photo_decode made (the top-left height x width of a padded square, already turned as
    the photo's EXIF orientation says) as the console's JPEG. Empty when the shape does not fit the pixels."""
    height, width = int(shape[0]), int(shape[1])
    if not (0 < height <= pixels.shape[0] and 0 < width <= pixels.shape[1]) or pixels.shape[-1] != 3:
        return b""
    image = Image.fromarray(np.ascontiguousarray(pixels[:height, :width], dtype=np.uint8))
    return thumbnail_jpeg(image, longest_side)


def image_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def open_checked(data: bytes, limits: ImageLimits) -> Image.Image:
    """Opens the image from its header only (no pixel decoded yet) and checks the limits that header can prove: size
    in bytes, an accepted format, the pixel count. Raises ClassificationError with the reason."""
    if not data:
        raise ClassificationError(ErrorKind.INVALID_IMAGE, "the image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ClassificationError(ErrorKind.IMAGE_TOO_LARGE,
                                  f"the image is {len(data)} bytes, over the limit of {limits.max_bytes}")
    container, steps = structure_steps(data, limits.max_structure_steps + 1)
    if steps > limits.max_structure_steps:
        raise _too_much_structure(container, limits.max_structure_steps)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data), formats=limits.formats)
    except Image.UnidentifiedImageError:
        accepted = ", ".join(limits.formats)
        kind = file_kinds.unaccepted_kind(data)
        if kind is not None:
            raise ClassificationError(ErrorKind.INVALID_IMAGE, f"the file is {kind}, not one of the accepted formats "
                                      f"({accepted}): {file_kinds.advice(kind)}") from None
        raise ClassificationError(ErrorKind.INVALID_IMAGE, "the image cannot be decoded: not one of the "
                                  f"accepted formats ({accepted})") from None
    except Exception as error:  # noqa: BLE001  (a header parser's exception, whatever its class, is a bad file)
        raise ClassificationError(ErrorKind.INVALID_IMAGE,
                                  f"the image cannot be decoded: {type(error).__name__}: {error}"[:500]) from None
    check_exif(image, limits)
    if image.tile and image.tile[0].codec_name == bmp_run_length.CODEC:
        most = bmp_run_length.CODES_PER_STEP * limits.max_structure_steps
        if bmp_run_length.code_count(data, image.tile[0].offset, image.tile[0].args[1], most + 1) > most:
            raise _too_much_structure("BMP", most)
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ClassificationError(ErrorKind.IMAGE_TOO_LARGE, f"the image is {width}x{height} pixels, over the "
                                  f"limit of {limits.max_pixels} pixels")
    if width < 1 or height < 1:
        raise ClassificationError(ErrorKind.INVALID_IMAGE, f"the image is {width}x{height} pixels")
    if image.format in JPEG_FORMATS and image.info.get("progressive"):
        # A sequential scan codes every block at least once, so its decoding costs in proportion to its bytes; only a
        # progressive scan can be next to empty (end-of-band runs of 32,767 blocks a code) and still cost a pass.
        scans = jpeg_scans(data)
        allowed = min(limits.max_jpeg_scans, max(1, limits.max_jpeg_scan_pixels // (width * height)))
        if scans > allowed:
            raise ClassificationError(ErrorKind.INVALID_IMAGE, f"the JPEG has {scans} scans, over the limit of "
                                      f"{allowed} for {width}x{height} pixels: each one is another pass over the "
                                      "whole image")
    return image


def _too_much_structure(container: str, most: int) -> ClassificationError:
    return ClassificationError(ErrorKind.INVALID_IMAGE, f"the {container} has over {most} "
                               f"{STRUCTURE_STEPS[container]}, far more than any photo (each costs time to read)")


def decode_rgb(data: bytes, limits: ImageLimits, smallest_side_needed: int, memory: DecodeBudget | None = None,
               deadline: float | None = None) -> Image.Image:
    """Decodes the first frame as RGB, EXIF orientation applied; JPEGs decode at the smallest sufficient DCT scale.
    With `memory`, the decode waits (until `deadline`, time.monotonic()) for room for its estimate beside the other
    decodes of the worker, and holds it until the picture is averaged down."""
    image = open_checked(data, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            width, height = image.size
            if image.format in JPEG_FORMATS:
                # Decode at the smallest DCT scale (1/2, 1/4, 1/8) whose longer side still covers the input size:
                # tensors are padded squares, so the longer side is the one that sets the resolution.
                longer = max(width, height)
                image.draft("RGB", (max(1, smallest_side_needed * width // longer),
                                    max(1, smallest_side_needed * height // longer)))
            estimate = decode_bytes(image, (width, height))
            refuse_over(image, (width, height), estimate, limits.decode_memory_bytes)
            with memory.held(estimate, deadline) if memory is not None else contextlib.nullcontext():
                image.seek(0)
                image.load()
                # Read from the opened image (a PNG's EXIF may follow its pixels): a TIFF's orientation is its own
                # tag, which no image made from it carries.
                turn = upright_turn(image, limits)
                if image.format not in JPEG_FORMATS:  # a JPEG decoded reduced already
                    image = _reduced(image, smallest_side_needed)
                if turn is not None:
                    image = image.transpose(turn)
                return _to_rgb(image)
    except ClassificationError:
        raise
    except Exception as error:  # noqa: BLE001  (a decoder's exception, whatever its class, is a bad file)
        raise ClassificationError(ErrorKind.INVALID_IMAGE,
                                  f"the image cannot be decoded: {type(error).__name__}: {error}"[:500]) from None


EXIF_ORIENTATION = 0x0112
# An EXIF orientation and the transposition that shows the picture upright (ImageOps.exif_transpose's table).
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}


def upright_turn(image: Image.Image, limits: ImageLimits) -> Image.Transpose | None:
    """The transposition that turns the picture as its EXIF orientation says, None for none: ImageOps.exif_transpose's
    turn, without what it does to the EXIF. That wrote the turned image's EXIF anew, unpacking and packing every value
    of every tag, so a 2 MB PNG whose EXIF held a tag of a million values took 0.67 CPU-s and 200 MB (an 18 MB one
    several seconds and gigabytes); only the orientation tag is read here, once the EXIF is known to be within the
    structure limit (an orientation tag of 2.3 million fractions took 5.4 CPU-s to read). A TIFF's own directory
    was counted before it was opened."""
    check_exif(image, limits)  # again: a PNG's EXIF after its pixels is read with them
    return UPRIGHT.get(image.getexif().get(EXIF_ORIENTATION, 1))


# The largest EXIF block a JPEG carries (one APP1 segment). Reading the orientation from a block this size costs
# little whatever it says (at most 5,461 entries and 8,192 fractions: tens of ms), so only a larger one, as a PNG,
# WebP or AVIF may carry, is counted: the count costs 0.1 ms, a tenth of decoding a phone photo at a reduced size.
SMALL_EXIF = 65_535 + len(b"Exif\x00\x00")


def check_exif(image: Image.Image, limits: ImageLimits) -> None:
    """Refuses an EXIF block whose directory would cost Pillow more than the structure limit to read."""
    exif = image.info.get("exif")
    if exif is None and "Raw profile type exif" in image.info:  # how ImageMagick keeps it in a PNG, as getexif reads it
        try:
            exif = bytes.fromhex("".join(str(image.info["Raw profile type exif"]).split("\n")[3:]))
        except ValueError:
            return  # not hexadecimal: getexif fails on it, a bad file, where it is read
    if isinstance(exif, bytes) and len(exif) > SMALL_EXIF and exif_steps(exif) > limits.max_structure_steps:
        raise _too_much_structure("EXIF", limits.max_structure_steps)


# What Image.reduce() averages as it is: RGBA and LA weighted by their alpha (it premultiplies them itself).
REDUCIBLE_MODES = ("L", "RGB", "CMYK", "YCbCr", "I", "F", "RGBA", "LA")


def _reduced(image: Image.Image, longer_side_needed: int) -> Image.Image:
    """What a JPEG's DCT scaling does, for the other formats: the decoded image averaged down by a whole factor while
    its longer side still covers the size needed, before anything else copies it (a 7000x7000 RGBA PNG of 200 KB
    took 1.7 CPU-s and 750 MB over the process's size through the steps after decoding, at full size). Transparent
    pixels' hidden colour is weighted by their alpha, so it never darkens an edge."""
    factor = max(image.size) // max(1, longer_side_needed)
    if factor < 2:
        return image
    if image.mode.startswith("I;16"):
        # 16-bit grey has no Image.reduce(); BOX resampling averages the same blocks in its own mode. Converting
        # first made a float copy of the whole image: a 95 KB PNG of 7000x7000 took 500 MB and 1.8 CPU-s.
        return image.resize((-(-image.width // factor), -(-image.height // factor)), Image.Resampling.BOX)
    if image.mode in ("PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
    elif image.mode == "1":
        image = image.convert("L")  # a third of what RGB would hold at full size
    elif image.mode not in REDUCIBLE_MODES:
        image = _to_rgb(image)
    return image.reduce(factor)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any mode to RGB; transparency is composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        if image.mode == "RGB":
            return image  # converting it again would only copy it (4 bytes a pixel, at full size before _reduced)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        pixels = np.asarray(image, dtype=np.float32)
        image = Image.fromarray((pixels * (255.0 / max(float(pixels.max()), 1.0))).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def analysis_factor(size: tuple[int, int], analysis_side: int = 128) -> int:
    """The whole factor that brings the longer side nearest to analysis_side. Averaging blocks of factor x factor
    pixels (Image.reduce) takes a sixth to a third of the time a resampling resize does on the development machine
    (0.10 against 0.36 ms for a 267-pixel photo, 0.16 against 0.54 for a 408-pixel one)."""
    return max(1, round(max(size) / analysis_side))


def product_box(image: Image.Image, margin: float = 0.06, threshold: int = 40,
                analysis_side: int = 128) -> tuple[int, int, int, int]:
    """Box around what differs from the border's colour (the plain background); the whole image if none stands out.

    A pixel is foreground when any channel is more than `threshold` from the border's median colour, on the photo
    averaged down in blocks to about analysis_side (analysis_factor). The per-pixel test runs in Pillow (a lookup
    table per channel, the channels' maximum, the box of what is left), not in numpy: the same pixels, a fraction of
    the time.
    """
    width, height = image.size
    factor = analysis_factor(image.size, analysis_side)
    small = image.reduce(factor) if factor > 1 else image  # a size it does not divide ends in a partial block
    pixels = np.asarray(small)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]).astype(np.int16)
    background = np.median(border, axis=0)
    if np.abs(border - background).max(axis=1).mean() > threshold:  # busy border: no plain background to cut away
        return 0, 0, width, height
    values = np.arange(256)
    table = np.concatenate([np.where(np.abs(values - level) > threshold, 255, 0) for level in background])
    red, green, blue = small.point(table.tolist()).split()
    foreground = ImageChops.lighter(ImageChops.lighter(red, green), blue)
    bbox = foreground.getbbox()
    if bbox is None or foreground.histogram()[255] < 0.002 * small.width * small.height:
        return 0, 0, width, height
    left, top = bbox[0] * factor, bbox[1] * factor
    right, bottom = min(width, bbox[2] * factor), min(height, bbox[3] * factor)
    pad = margin * max(right - left, bottom - top)
    return (max(0, int(left - pad)), max(0, int(top - pad)), min(width, int(right + pad + 0.5)),
            min(height, int(bottom + pad + 0.5)))


def fitted(image: Image.Image, side: int) -> Image.Image:
    """The image resized so that its longer side is `side`, the aspect ratio kept (what a square tensor holds)."""
    width, height = image.size
    scale = side / max(width, height)
    return image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR,
                        reducing_gap=2.0)


def padded_square(resized: Image.Image, size: int) -> np.ndarray:
    """A picture whose longer side is `size`, centred on a size x size square of its edge colour, uint8 HWC."""
    pixels = np.asarray(resized)
    edge = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    colour = tuple(int(c) for c in np.median(edge, axis=0).astype(np.uint8))
    # Pillow fills and pastes in C; a numpy fill of a 3-channel colour is several times slower.
    canvas = Image.new("RGB", (size, size), colour)
    canvas.paste(resized, ((size - resized.width) // 2, (size - resized.height) // 2))
    return np.array(canvas)


def square_tensor(image: Image.Image, size: int) -> np.ndarray:
    """Pads to a square with the edge colour (the aspect ratio is kept), resizes to size x size, uint8 HWC."""
    return padded_square(fitted(image, size), size)


def prepare_image(data: bytes, input_sizes: list[int], limits: ImageLimits, thumbnail_size: int = 0,
                  digest: str = "", memory: DecodeBudget | None = None, deadline: float | None = None
                  ) -> PreparedImage:
    """Bytes to one tensor per model input size, cropped to the product (and a thumbnail when thumbnail_size).

    The product is resized to the largest input size, and each smaller square's picture from that one. Most photos
    need no crop (3 in 4 of 300 clothing photos): then each picture is the whole photo, and the one of the
    thumbnail's size (by default the models' 224 px) is the thumbnail too. Pillow's resampling is most of what a
    photo costs after its decoding, about 0.3 to 0.45 ms for each picture of 224 px on the development machine
    whatever size it starts from, so no picture is made twice. `memory` and `deadline`: decode_rgb's."""
    image = decode_rgb(data, limits, max(input_sizes), memory, deadline)
    box = product_box(image)
    uncropped = box == (0, 0, *image.size)
    sizes = sorted(set(input_sizes), reverse=True)
    pictures = {sizes[0]: fitted(image if uncropped else image.crop(box), sizes[0])}
    for size in sizes[1:]:
        pictures[size] = fitted(pictures[sizes[0]], size)
    tensors = {size: padded_square(pictures[size], size) for size in reversed(sizes)}
    thumbnail = b""
    if thumbnail_size:
        # never enlarged: a photo smaller than the thumbnail's size is its own thumbnail
        shared = uncropped and thumbnail_size in pictures and max(image.size) >= thumbnail_size
        thumbnail = (jpeg_within_limit(pictures[thumbnail_size]) if shared
                     else thumbnail_jpeg(image, thumbnail_size))
    return PreparedImage(digest or image_digest(data), tensors, box, image.size, thumbnail)


# What Triton's photo_decode (DALI: nvImageCodec) decodes to the pixels the CPU path decodes, EXIF orientation
# included: these formats, in modes without transparency (DALI drops an alpha channel, so a transparent background
# would come out in whatever colour its hidden pixels hold, where the CPU path puts white). It reads neither GIF nor
# AVIF. tests/unit/test_dali_pipeline.py runs the production pipeline on every format the service accepts.
TRITON_DECODES = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF")
TRITON_DECODES_MODES = ("RGB", "L", "CMYK", "YCbCr", "P")
# The longer side of the JPEG made here for Triton when it would not decode the photo as the CPU path does: above
# every model input size served (224 and 299 px) and the thumbnail's 224, so Triton only ever resizes it down.
REENCODED_SIDE = 512


def triton_decodes_as_cpu_path(image: Image.Image) -> bool:
    """Whether Triton's photo_decode decodes this opened (not yet decoded) image as decode_rgb does."""
    return (image.format in TRITON_DECODES and image.mode in TRITON_DECODES_MODES
            and "transparency" not in image.info)


def reencoded_for_triton(image: Image.Image) -> bytes:
    """The photo as decode_rgb decodes it (transparency on white, turned, any mode to RGB) as a JPEG photo_decode
    reads: the longer side REENCODED_SIDE at most, quality 95 and no chroma subsampling, so it is the same picture."""
    width, height = image.size
    scale = min(1.0, REENCODED_SIDE / max(width, height))
    if scale < 1.0:
        image = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BOX)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, subsampling=0)
    return buffer.getvalue()


def prepare_encoded(data: bytes, limits: ImageLimits, thumbnail_size: int = 0, thumbnail_in_triton: bool = False,
                    digest: str = "", memory: DecodeBudget | None = None, deadline: float | None = None
                    ) -> PreparedImage:
    """For the GPU decode path (Triton's photo_ensemble decodes and resizes): the bytes, checked from their header
    only (format, byte size, pixel count), their digest, and the thumbnail when asked for: with thumbnail_in_triton
    the ensemble makes it, otherwise it is made here (a JPEG decoded at a reduced DCT scale, so a fraction of a full
    decode). The photo is not decoded here unless Triton would decode it otherwise than the CPU path does
    (triton_decodes_as_cpu_path): then it is decoded here and Triton gets a JPEG of it (reencoded_for_triton)."""
    image = open_checked(data, limits)
    decoded = None
    if not triton_decodes_as_cpu_path(image):
        decoded = decode_rgb(data, limits, REENCODED_SIDE, memory, deadline)
    thumbnail = b""
    if thumbnail_size and not thumbnail_in_triton:
        pictured = decoded if decoded is not None else decode_rgb(data, limits, thumbnail_size, memory, deadline)
        thumbnail = thumbnail_jpeg(pictured, thumbnail_size)
    encoded = reencoded_for_triton(decoded) if decoded is not None else data
    return PreparedImage(digest or image_digest(data), {}, (0, 0, *image.size), image.size, thumbnail, encoded)
