"""What decoding a photo costs in memory, known from its header, and a worker's budget for the decodes it runs at once.

Every accepted format but a JPEG is decoded at its full size before it is averaged down, and some decoders hold
more than the picture: a WebP of 7000x7000 pixels (38 bytes when lossless and plain) took 750 MB over the process's
size in `prepare_image`, an AVIF up to 545 MB, a palette PNG or GIF 425 MB. Each limit on its own lets that through
(49 megapixels is under the pixel limit), and a worker decodes several photos at once: its decoding threads, and
the threads that fetch image URLs, which decode what they fetched. Eight such WebPs at once took 5.9 GB; sixteen
URLs would take 12 GB, far past a worker's memory limit (2 GiB in deploy/), so the worker was killed and restarted
onto the same batch for good. `DecodeMemory` lets decodes run at once only while their estimates fit within the
budget (`PREPROCESSING_DECODE_MEMORY_MB`), in the order they asked; a photo whose estimate alone is over it is
refused as too large. One that waits past its batch's deadline is OVERLOADED: not the photo's fault, so a Kafka
worker sends it to the back of its topic (services.common.deferral) and a gRPC caller is told to retry.

A budget of what decodes hold at once is only a bound on the process if what one decode frees can serve the next:
glibc's malloc keeps a heap per thread, and once a large block has been freed it serves blocks of up to that size
from those heaps, where what is freed stays the thread's. Eight such WebPs decoded one after the other by eight
threads took 1.5 GB, one at a time. After a large decode (an estimate of 64 MB or more) the free memory of every heap
goes back to the system (`malloc_trim`): the eight take 585 MB, what one decode takes. Having glibc map every block
of 4 MB or more on its own did the same, but cost every listing 0.25 CPU-ms more in `make bench-plumbing` (a batch's
Kafka fetches and tensors mapped and faulted in anew each time), where a trim costs only the large decodes.
"""

from __future__ import annotations

import contextlib
import ctypes
import time
from collections.abc import Iterator

from PIL import Image

from services.common.byte_budget import ByteBudget
from services.common.errors import ClassificationError, ErrorKind
from services.common.metrics import DECODE_MEMORY_HELD, DECODE_MEMORY_WAITS

MB = 1024 * 1024

# Bytes per pixel of the photo's full size, over the process's size, for its decode and the steps until it is
# averaged down to what the models need (decode_rgb), with room to spare. Measured with prepare_image on files of
# 3000x3000 and 7000x7000 pixels (peak resident size less the size before, the file's bytes already held): WebP
# 14.3 to 16.0 (libwebp's canvas, its previous canvas and Pillow's copy, whatever the mode), AVIF 3.5 (grey) to
# 11.0 (RGBA: its YUV planes, libavif's RGB and Pillow's copy; a 10- or 12-bit one holds twice the planes), and by
# the mode Pillow decodes into for the others: with alpha (a palette's transparency included) 5.1 to 9.0 (stored
# in four bytes, 16-bit PNGs too, converted and premultiplied for averaging), a palette without it 4.7 to 5.4 (8.5
# to 9.3 before `_to_rgb` stopped copying an RGB image once more), RGB, CMYK, YCbCr, 32-bit and float 3.0 to 4.4
# (interlaced, 16-bit and JPEG-compressed TIFFs alike), 16-bit grey 1.6 to 2.2, grey and bilevel 0.9 to 2.1.
FORMAT_BYTES_PER_PIXEL = {"WEBP": 20.0, "AVIF": 16.0}
WITH_ALPHA_BYTES_PER_PIXEL = 10.5
MODE_BYTES_PER_PIXEL = {"1": 3.5, "L": 2.0, "I;16": 4.0, "I;16L": 4.0, "I;16B": 4.0, "I;16N": 4.0, "P": 7.0,
                        "RGB": 6.5, "RGBX": 6.5, "CMYK": 6.5, "YCbCr": 6.5, "LAB": 6.5, "HSV": 6.5, "I": 6.5,
                        "F": 6.5, "LA": WITH_ALPHA_BYTES_PER_PIXEL, "La": WITH_ALPHA_BYTES_PER_PIXEL,
                        "PA": WITH_ALPHA_BYTES_PER_PIXEL, "RGBA": WITH_ALPHA_BYTES_PER_PIXEL,
                        "RGBa": WITH_ALPHA_BYTES_PER_PIXEL}
UNKNOWN_MODE_BYTES_PER_PIXEL = 10.0
# A JPEG decodes at a reduced DCT scale into at most four bytes a pixel, then converts once to RGB.
JPEG_OUTPUT_BYTES_PER_PIXEL = 8.0
# A progressive JPEG keeps every coefficient of the whole image until its last scan: 2 bytes per sample, each
# component sampled at its own rate (4:2:0 YCbCr: 1.5 samples a pixel, 3 bytes; CMYK unsubsampled: 8). Measured 3.0
# and 7.8 bytes a pixel.
JPEG_COEFFICIENT_BYTES = 2.0
JPEG_COEFFICIENT_MARGIN = 1.25
FIXED_BYTES = 4 * MB  # a decoder's own tables and buffers, whatever the picture's size


def decode_bytes(image: Image.Image, full_size: tuple[int, int]) -> int:
    """About the most memory decoding this opened (not yet loaded) image takes, from its header: `image.size` is the
    size it decodes at (a JPEG's reduced DCT scale, once drafted), `full_size` the size its header gave."""
    width, height = full_size
    out_width, out_height = image.size
    if image.format in ("JPEG", "MPO"):
        estimate = out_width * out_height * JPEG_OUTPUT_BYTES_PER_PIXEL
        if image.info.get("progressive"):
            estimate += width * height * _jpeg_samples_per_pixel(image) * JPEG_COEFFICIENT_BYTES \
                * JPEG_COEFFICIENT_MARGIN
        return int(estimate) + FIXED_BYTES
    if image.format in FORMAT_BYTES_PER_PIXEL:
        per_pixel = FORMAT_BYTES_PER_PIXEL[image.format]
    elif image.mode == "P" and "transparency" in image.info:
        per_pixel = WITH_ALPHA_BYTES_PER_PIXEL  # decoded to RGBA (_reduced)
    else:
        per_pixel = MODE_BYTES_PER_PIXEL.get(image.mode, UNKNOWN_MODE_BYTES_PER_PIXEL)
    return int(width * height * per_pixel) + FIXED_BYTES


def _jpeg_samples_per_pixel(image: Image.Image) -> float:
    """Samples a pixel over the JPEG's components (its frame header's sampling factors, as Pillow read them)."""
    layers = getattr(image, "layer", None) or []
    factors = [(h, v) for _, h, v, _ in layers if h and v]
    if not factors:
        return 4.0  # not read: as many as a JPEG can have
    most_h, most_v = max(h for h, _ in factors), max(v for _, v in factors)
    return sum(h * v for h, v in factors) / (most_h * most_v)


TRIM_AFTER_BYTES = 64 * MB  # a 10-megapixel PNG, a 3-megapixel WebP; no JPEG photo but a progressive 20-megapixel one


def return_freed_memory() -> bool:
    """Hands the free memory of every one of glibc's heaps back to the system (malloc_trim). False where the C
    library is not glibc (nothing is done)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


class DecodeMemory:
    """A worker's bytes for decoding: a decode holds its estimate while it runs, and waits while the others' holds
    leave no room for it (until its deadline). Thread-safe; one per worker, shared by every thread that decodes."""

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self._budget = ByteBudget(budget_bytes)

    @property
    def held_bytes(self) -> int:
        return self._budget.held

    @contextlib.contextmanager
    def held(self, estimate: int, deadline: float | None = None) -> Iterator[None]:
        """Holds `estimate` bytes of the budget for the block, once there is room and the decodes that asked before
        have theirs. Raises ClassificationError (OVERLOADED: the photo is not at fault, and is tried again later)
        when no room was made before `deadline` (time.monotonic()); an estimate over the whole budget is refused
        before this (refuse_over)."""
        waited = []
        if not self._budget.take(estimate, deadline, on_wait=lambda: waited.append(True)):
            DECODE_MEMORY_WAITS.labels("timed_out").inc()
            raise ClassificationError(
                ErrorKind.OVERLOADED, f"the worker had no room to decode the image in time: it waited for "
                f"{estimate / MB:.0f} MB of decoding memory while other images held {self.held_bytes / MB:.0f} MB "
                f"of {self.budget_bytes / MB:.0f}")
        if waited:
            DECODE_MEMORY_WAITS.labels("decoded").inc()
        DECODE_MEMORY_HELD.set(self.held_bytes)
        try:
            yield
        finally:
            if estimate >= TRIM_AFTER_BYTES:  # what it freed serves the next decode, whichever thread runs it
                return_freed_memory()
            self._budget.give_back(estimate)
            DECODE_MEMORY_HELD.set(self.held_bytes)


class JobDecodeMemory:
    """One listing's view of the worker's DecodeMemory, with the same `held`: notes when its decode got its room and
    began (decoding_since, time.monotonic()), so a decode that overran its time is told from one that waited for its
    turn (ListingPredictor._result_within_limit)."""

    def __init__(self, memory: DecodeMemory):
        self.memory = memory
        self.decoding_since: float | None = None

    @contextlib.contextmanager
    def held(self, estimate: int, deadline: float | None = None) -> Iterator[None]:
        with self.memory.held(estimate, deadline):
            if self.decoding_since is None:
                self.decoding_since = time.monotonic()
            yield


# What a decode holds its room in: the worker's memory, or one listing's view of it.
DecodeBudget = DecodeMemory | JobDecodeMemory


def refuse_over(image: Image.Image, full_size: tuple[int, int], estimate: int, budget_bytes: int) -> None:
    """An image whose decoding alone would take more than a worker's whole decoding memory is refused from its
    header, as too large."""
    if estimate > budget_bytes:
        width, height = full_size
        raise ClassificationError(ErrorKind.IMAGE_TOO_LARGE, f"decoding this {width}x{height} {image.format} image "
                                  f"would take about {estimate / MB:.0f} MB, over the {budget_bytes / MB:.0f} MB a "
                                  "worker decodes with at once")
