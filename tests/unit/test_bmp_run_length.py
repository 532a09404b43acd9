"""Run-length BMPs: Pillow's pixels without its per-pixel Python work, and a flood of codes refused from a count."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from services.common.errors import ClassificationError, ErrorKind
from services.preprocessing import bmp_run_length
from services.preprocessing.images import ImageLimits, prepare_encoded, prepare_image
from tests.unit.crafted_images import rle8_codes, run_length_bmp

ASTRONAUT = Path(skimage.__file__).parent / "data" / "astronaut.png"


def decoded_by(decoder, data: bytes):
    """What opening and loading data gives with decoder registered for run-length BMPs: the mode and pixels, or
    the error's class and message."""
    registered = Image.DECODERS[bmp_run_length.CODEC]
    Image.register_decoder(bmp_run_length.CODEC, decoder)
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image.mode, image.size, image.tobytes()
    except Exception as error:  # noqa: BLE001  (the two decoders must fail alike, whatever the class)
        return type(error).__name__, str(error)
    finally:
        Image.register_decoder(bmp_run_length.CODEC, registered)


def test_this_decoder_is_the_one_pillow_uses():
    assert Image.DECODERS[bmp_run_length.CODEC] is bmp_run_length.RunLengthDecoder


CODES = st.one_of(
    st.tuples(st.integers(1, 255), st.integers(0, 255)).map(bytes),  # a run
    st.just(b"\x00\x00"),  # end of line
    st.tuples(st.integers(0, 9), st.integers(0, 4)).map(lambda jump: bytes((0, 2) + jump)),  # delta
    st.binary(min_size=3, max_size=60).map(lambda pixels: bytes((0, len(pixels))) + pixels),  # absolute, unaligned
    st.binary(min_size=3, max_size=60).map(lambda pixels: bytes((0, len(pixels))) + pixels + bytes(len(pixels) % 2)),
    st.binary(min_size=1, max_size=3),  # anything at all, a truncated code too
    st.just(b"\x00\x01"),  # end of bitmap
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 40), st.integers(1, 30), st.booleans(), st.lists(CODES, max_size=80))
def test_the_same_pixels_or_the_same_error_as_pillows_decoder(width, height, rle4, codes):
    data = run_length_bmp(width, height, b"".join(codes), rle4=rle4)
    assert decoded_by(bmp_run_length.RunLengthDecoder, data) == decoded_by(bmp_run_length.PILLOW_DECODER, data)


def test_a_real_photo_as_an_rle8_bmp_gives_the_tensors_of_the_same_picture_as_a_png():
    picture = Image.open(ASTRONAUT).convert("RGB").quantize(256)
    data = run_length_bmp(*picture.size, rle8_codes(np.asarray(picture)), palette=picture.getpalette())
    assert Image.open(io.BytesIO(data)).info["compression"] == 1  # RLE8
    as_png = io.BytesIO()
    picture.save(as_png, "PNG")
    from_bmp = prepare_image(data, [224, 299], ImageLimits())
    from_png = prepare_image(as_png.getvalue(), [224, 299], ImageLimits())
    for size in (224, 299):
        assert np.array_equal(from_bmp.tensors[size], from_png.tensors[size])


def python_lines_run(action) -> int:
    """How many lines of Python action runs, in every function it calls."""
    lines = 0

    def tracer(frame, event, argument):
        nonlocal lines
        if event == "line":
            lines += 1
        return tracer

    sys.settrace(tracer)
    try:
        action()
    finally:
        sys.settrace(None)
    return lines


@pytest.mark.parametrize("name, width, codes, rle4", [
    # a pixel, then end of line, on each line: Pillow's decoder added the rest of each line a byte at a time
    ("line ends", 1000, b"\x01\x05\x00\x00" * 1000, False),
    # runs of 255 pixels: Pillow's decoder wrote RLE4 runs a pixel at a time
    ("RLE4 runs", 1020, (b"\xff\x12" * 4 + b"\x00\x00") * 1000, True),
])
def test_a_line_end_or_a_run_is_one_turn_of_python_whatever_its_pixels(name, width, codes, rle4):
    """Machine-independent: lines of Python run, not seconds. Pillow's decoder ran about a million for each of
    these; a 28 KB file of line ends at 7000x7000 held a core for 5 s."""
    data = run_length_bmp(width, 1000, codes, rle4=rle4)
    code_count = bmp_run_length.code_count(data, Image.open(io.BytesIO(data)).tile[0].offset, rle4, 10**9)
    lines = python_lines_run(lambda: Image.open(io.BytesIO(data)).load())
    assert lines < 20 * code_count, f"{name}: {lines} lines of Python for {code_count} codes"


def runs_of_ten(rows: int) -> bytes:
    """rows lines of 100 pixels, each ten runs of ten and an end of line: 11 codes a line."""
    return (b"".join(bytes((10, 17 * index)) for index in range(10)) + b"\x00\x00") * rows


def test_a_flood_of_codes_is_refused_from_a_count_before_decoding_and_a_picture_within_is_not():
    limits = ImageLimits(max_structure_steps=100)  # 800 codes with eight to a step
    assert bmp_run_length.CODES_PER_STEP * limits.max_structure_steps == 800
    within = run_length_bmp(100, 70, runs_of_ten(70))  # 770 codes
    assert prepare_image(within, [224], limits).tensors[224].std() > 3
    flood = run_length_bmp(100, 80, runs_of_ten(80))  # 880 codes
    for prepare in (lambda data: prepare_image(data, [224], limits), lambda data: prepare_encoded(data, limits)):
        with pytest.raises(ClassificationError) as raised:
            prepare(flood)
        assert raised.value.kind is ErrorKind.INVALID_IMAGE and "over 800 run-length codes" in raised.value.reason


def test_codes_are_counted_as_the_decoder_reads_them():
    absolute = b"\x00\x03abc"  # three pixels as they are, then a byte to end on a 16-bit boundary
    codes = b"\x05\x01" + absolute + b"\x00" + b"\x00\x02\x03\x04" + b"\x00\x00" + b"\x00\x01" + b"\x09\x09" * 5
    assert bmp_run_length.code_count(codes, 0, False, 10**6) == 5  # run, absolute, delta, end of line, end
    assert bmp_run_length.code_count(codes, 0, False, 3) == 3
    assert bmp_run_length.code_count(b"\x00\x04ab" + b"\x05\x05", 0, True, 10**6) == 2  # RLE4: 4 pixels in 2 bytes
