"""What a file's structure costs to read, counted from its bytes before Pillow reads it.

Pillow reads some of a file's structure in Python, one piece at a time: a JPEG's markers and padding before its image
data, a PNG's chunks, a GIF's blocks before its first picture, a TIFF's directory entries and its strips or tiles, a
run-length BMP's codes. Each piece costs a few microseconds, so a file made of nothing else holds a core for seconds
with every byte and pixel limit met. A photo has tens of them, a large PNG a few thousand; these counts let the
caller refuse the rest before Pillow starts. Pure functions of the bytes, no Pillow.
"""

from __future__ import annotations

import struct

import numpy as np

START_OF_SCAN = b"\xff\xda"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
GIF_SIGNATURES = (b"GIF87a", b"GIF89a")
# What Pillow opens as TIFF: the two byte orders, the classic and the BigTIFF header, and the two misordered
# classic headers Pillow accepts too (TiffImagePlugin.PREFIXES).
TIFF_BYTE_ORDERS = {b"II": "<", b"MM": ">"}
TIFF_PREFIXES = (b"MM\x00\x2a", b"II\x2a\x00", b"MM\x2a\x00", b"II\x00\x2a", b"MM\x00\x2b", b"II\x2b\x00")
TIFF_STRIP_OFFSETS, TIFF_TILE_OFFSETS = 273, 324
# What structure_steps counts, by container, for the error that names it.
STRUCTURE_STEPS = {"JPEG": "markers and padding bytes before its image data", "PNG": "chunks",
                   "GIF": "blocks before its first picture", "TIFF": "directory entries, strips and tiles",
                   "BMP": "run-length codes", "image": "parts"}
# JPEG markers with no length after them: restarts, start and end of image, TEM.
_STANDALONE_MARKERS = frozenset(range(0xD0, 0xDA)) | {0x01}


def jpeg_scans(data: bytes) -> int:
    """The start-of-scan markers in a JPEG's bytes. Entropy-coded data cannot hold one (a 0xFF there is always
    followed by 0x00 or a restart marker), so this counts the scans, an embedded thumbnail's or second picture's too.
    In numpy: 30 us for a 2-megapixel photo, against 200 for bytes.count, whose search stops at every 0xFF."""
    octets = np.frombuffer(data, np.uint8)
    return int(np.count_nonzero((octets[:-1] == START_OF_SCAN[0]) & (octets[1:] == START_OF_SCAN[1])))


def structure_steps(data: bytes, stop_at: int) -> tuple[str, int]:
    """The container and how many pieces of its structure Pillow reads one at a time in Python before or while
    decoding (counting stops near stop_at, so a hostile file costs no more here than a photo): a JPEG's markers,
    padding and junk bytes up to its first scan; a PNG's chunks, all of them (the image data's too, read chunk by
    chunk); a GIF's extension sub-blocks before its first picture; a TIFF's first directory's entries and the strips
    or tiles it lists. ("image", 0) for other formats; a run-length BMP's codes are counted once Pillow has opened it
    (bmp_run_length.code_count), since where they start depends on its header."""
    if data.startswith(JPEG_SIGNATURE):
        return "JPEG", _jpeg_steps(data, stop_at)
    if data.startswith(PNG_SIGNATURE):
        return "PNG", _png_steps(data, stop_at)
    if data.startswith(GIF_SIGNATURES):
        return "GIF", _gif_steps(data, stop_at)
    if data.startswith(TIFF_PREFIXES):
        return "TIFF", _tiff_steps(data)
    return "image", 0


def _jpeg_steps(data: bytes, stop_at: int) -> int:
    position, steps, end = 2, 0, len(data)
    while position < end - 1 and steps < stop_at:
        if data[position] != 0xFF:  # junk between segments: Pillow steps over it a byte at a time
            following = data.find(b"\xff", position)
            if following < 0:
                break
            steps, position = steps + following - position, following
            continue
        marker = data[position + 1]
        steps += 1
        if marker == 0xDA:  # the first scan: the decoder (C) takes it from here
            break
        if marker in (0xFF, 0x00):  # a fill byte, or an escaped 0xFF
            position += 1 if marker == 0xFF else 2
        elif marker in _STANDALONE_MARKERS:
            position += 2
        else:
            position += 2 + max(2, int.from_bytes(data[position + 2:position + 4], "big"))
    return steps


def _png_steps(data: bytes, stop_at: int) -> int:
    position, steps, end = len(PNG_SIGNATURE), 0, len(data)
    while position + 8 <= end and steps < stop_at:
        steps += 1
        if data[position + 4:position + 8] == b"IEND":
            break
        position += 12 + int.from_bytes(data[position:position + 4], "big")
    return steps


def _gif_steps(data: bytes, stop_at: int) -> int:
    if len(data) < 13:
        return 0
    flags = data[10]
    position = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)  # after the global colour table
    steps, end = 0, len(data)
    while position < end and data[position] == 0x21 and steps < stop_at:  # extensions before the first picture
        position += 2
        while position < end and steps < stop_at:
            size = data[position]
            steps, position = steps + 1, position + 1 + size
            if size == 0:
                break
    return steps


def _tiff_steps(data: bytes) -> int:
    """The first directory's entries (Pillow reads each in Python, and again for the EXIF it finds there) and the
    strips or tiles it lists (an uncompressed image is read one strip or tile at a time in Python, each an entry
    of a list built when the file is opened; for a compressed one, libtiff's, the offsets are still unpacked into
    a tuple). A 16 MB TIFF of 4 million one-row strips held a core for 21 s and took 1.3 GB. Read in numpy, so a
    directory of 65,535 entries costs no more than one of ten. Only the first directory: Pillow reads no other
    until asked for another frame."""
    order = TIFF_BYTE_ORDERS[data[:2]]
    big = data[2] == 43  # as Pillow tells BigTIFF, which reads "MM\x00\x2b" as a classic header
    header, pointer, count_format, count_size, entry_size = (16, "Q", "Q", 8, 20) if big else (8, "I", "H", 2, 12)
    if len(data) < header:
        return 0
    directory = struct.unpack_from(order + pointer, data, header - struct.calcsize(pointer))[0]
    if directory + count_size > len(data):
        return 0
    declared = struct.unpack_from(order + count_format, data, directory)[0]
    # Pillow stops at the first entry the file does not hold, with an error.
    entries = min(declared, (len(data) - directory - count_size) // entry_size)
    width = "u8" if big else "u4"
    table = np.frombuffer(data, np.dtype([("tag", order + "u2"), ("type", order + "u2"), ("count", order + width),
                                          ("value", order + width)]), count=entries, offset=directory + count_size)
    listed = table["count"][(table["tag"] == TIFF_STRIP_OFFSETS) | (table["tag"] == TIFF_TILE_OFFSETS)]
    return entries + sum(int(count) for count in listed)
