"""Run-length BMPs (RLE8, RLE4): their codes counted, and decoded a run at a time rather than a pixel at a time.

Pillow decodes these in Python (BmpImagePlugin.BmpRleDecoder). It ends a line by adding one zero byte at a time up to
the line's end, and writes each RLE4 run a pixel at a time, so a 28 KB RLE8 file of 7000x7000 (a pixel, then
end-of-line, on each line) held a core for 5 s, and a 0.4 MB RLE4 one of runs of 255 for 2.2 s. `RunLengthDecoder`
gives the same pixels with each run, line end and jump written by one bytes operation; it replaces Pillow's when
this module is imported. What is left is Python work per code, which `code_count` counts first, so the caller can
refuse a file of millions of codes (an RLE photo has about one per run of a colour).
"""

from __future__ import annotations

import numpy as np
from PIL import BmpImagePlugin, Image, ImageFile

CODEC = "bmp_rle"  # the decoder name Pillow's BMP reader asks for
END_OF_LINE, END_OF_BITMAP, DELTA = 0, 1, 2  # the escapes: a code whose count is 0
# A code costs this decoder about 0.5 us, an eighth of what Pillow spends on one of the pieces the structure limit
# counts elsewhere (a PNG chunk, a TIFF strip: 4 to 5 us), so the limit allows this many codes for each of its steps:
# 400,000 by default, a quarter of a second. A 7000x7000 RLE4 picture of one colour needs 200,000 (a run is at most
# 255 pixels); a photo-like one in absolute runs fewer.
CODES_PER_STEP = 8


def code_count(data: bytes, start: int, rle4: bool, stop_at: int) -> int:
    """The codes from start (the pixel data's offset in data) to the end-of-bitmap escape or the end of data, up to
    stop_at: the number of turns of the decoder's loop, more where the picture is full before its codes end."""
    position, codes, end = start, 0, len(data)
    while position + 2 <= end and codes < stop_at:
        count, escape = data[position], data[position + 1]
        position, codes = position + 2, codes + 1
        if count or escape == END_OF_LINE:
            continue
        if escape == END_OF_BITMAP:
            break
        if escape == DELTA:
            position += 2
            continue
        position += (escape + 1) // 2 if rle4 else escape  # absolute mode: that many pixels follow as they are
        position += position % 2  # each absolute run ends on a 16-bit boundary of the file
    return codes


def _nibbles(packed: bytes) -> bytes:
    """Each byte's two 4-bit pixels, high then low."""
    octets = np.frombuffer(packed, np.uint8)
    return np.stack([octets >> 4, octets & 0x0F], axis=1).tobytes()


class RunLengthDecoder(ImageFile.PyDecoder):
    """BmpImagePlugin.BmpRleDecoder's pixels (tests/unit/test_bmp_run_length.py compares the two on random codes),
    each code's output written at once."""

    _pulls_fd = True

    def decode(self, buffer):
        assert self.fd is not None
        rle4 = self.args[1]
        width = self.state.xsize
        dest_length = width * self.state.ysize
        start = self.fd.tell()
        codes = self.fd.read()
        position, end = 0, len(codes)
        data = bytearray()
        x = 0
        while len(data) < dest_length:
            if position + 2 > end:
                break
            count, value = codes[position], codes[position + 1]
            position += 2
            if count:  # encoded mode: count pixels of one value (RLE4: two values in turn)
                count = min(count, max(0, width - x))  # never past the line's end
                if rle4:
                    data += (bytes((value >> 4, value & 0x0F)) * ((count + 1) // 2))[:count]
                else:
                    data += bytes((value,)) * count
                x += count
            elif value == END_OF_LINE:
                data += bytes(-len(data) % width)
                x = 0
            elif value == END_OF_BITMAP:
                break
            elif value == DELTA:
                if position + 2 > end:
                    break
                right, up = codes[position], codes[position + 1]
                position += 2
                data += bytes(min(dest_length - len(data), right + up * width))
                x = len(data) % width
            else:  # absolute mode: value pixels as they are
                data_count = min(dest_length - len(data), value)
                byte_count = (data_count + 1) // 2 if rle4 else data_count
                read = codes[position:position + byte_count]
                position += byte_count
                data += _nibbles(read)[:min(data_count, 2 * len(read))] if rle4 else read
                if len(read) < byte_count or len(data) == dest_length:
                    break
                x += value
                position += (start + position) % 2
        rawmode = "L" if self.mode in {"1", "L"} else "P"
        self.set_as_raw(bytes(data), rawmode, (0, self.args[-1]))
        return -1, 0


# Pillow registers its own when BmpImagePlugin is first imported (above), so this one, registered after, is the one
# every BMP opened in this process uses.
PILLOW_DECODER = BmpImagePlugin.BmpRleDecoder
Image.register_decoder(CODEC, RunLengthDecoder)
