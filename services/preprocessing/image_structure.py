"""What a file's structure costs to read, counted from its bytes before Pillow reads it.

Pillow reads some of a file's structure in Python, one piece at a time: a JPEG's markers and padding before its
image data, a PNG's chunks, a GIF's blocks before its first picture, a TIFF's directory entries, tag values and
strips or tiles (and an EXIF block's, which is a TIFF directory), a run-length BMP's codes (counted in
bmp_run_length). Each piece costs a few microseconds, so a file made of nothing else holds a core for seconds with
every byte and pixel limit met. A photo has tens of them, a large PNG a few thousand; these counts let the caller
refuse the rest before Pillow starts. Pure functions of the bytes, no Pillow.
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
TIFF_EXIF_DIRECTORY, TIFF_GPS_DIRECTORY, TIFF_INTEROPERABILITY_DIRECTORY = 34665, 34853, 40965
# The value types Pillow unpacks into a Python number each (SHORT, LONG, SBYTE, SSHORT, SLONG, FLOAT, DOUBLE, IFD
# and their 64-bit kinds), about 70 ns a value, so 64 of them count as one step (a PNG chunk costs about 4 us);
# and the fractions (RATIONAL, SRATIONAL), each an IFDRational object of about 2 us, one step each. A 19 MB TIFF
# whose XResolution held 2.4 million fractions took 5.5 CPU-s and 384 MB; a tag of photos has a handful.
TIFF_NUMBERS = (3, 4, 6, 8, 9, 11, 12, 13, 16, 17, 18)
TIFF_FRACTIONS = (5, 10)
NUMBERS_PER_STEP = 64
# Bytes a value of each TIFF type takes (1 BYTE to 18 IFD8; 0 for the types Pillow does not read, or none).
TIFF_VALUE_SIZES = np.array([0, 1, 1, 2, 4, 8, 1, 1, 2, 4, 8, 4, 8, 4, 0, 0, 8, 8, 8, 0], np.float64)
EXIF_PREFIX = b"Exif\x00\x00"
# What structure_steps counts, by container, for the error that names it.
STRUCTURE_STEPS = {"JPEG": "markers and padding bytes before its image data", "PNG": "chunks",
                   "GIF": "blocks before its first picture", "TIFF": "directory entries, values, strips and tiles",
                   "EXIF": "directory entries and values", "BMP": "run-length codes", "image": "parts"}
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
    chunk); a GIF's extension sub-blocks before its first picture; a TIFF's directories as _tiff_steps counts them.
    ("image", 0) for other formats; a run-length BMP's codes are counted once Pillow has opened it
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
    """What Pillow reads of a TIFF in Python, in pieces: the first directory's entries (read when the file is opened,
    and again for its EXIF), the values of its tags counted as TIFF_NUMBERS says (Pillow unpacks those of the tags it
    uses, and every one when it turns the image as its orientation says), the strips or tiles it lists (an
    uncompressed image is read one strip or tile at a time in Python, each an entry of a list built when the file is
    opened), and the same of the EXIF, GPS and interoperability directories it points to (Pillow reads each whole
    once the pixels are loaded: an EXIF directory of 1.5 million fractions took 3.2 CPU-s and 240 MB). A 16 MB TIFF
    of 4 million one-row strips held a core for 21 s and took 1.3 GB. Read in numpy, so a directory of 65,535 entries
    costs no more than one of ten."""
    order = TIFF_BYTE_ORDERS[data[:2]]
    big = data[2] == 43  # as Pillow tells BigTIFF, which reads "MM\x00\x2b" as a classic header
    header, pointer = (16, "Q") if big else (8, "I")
    if len(data) < header:
        return 0
    first = struct.unpack_from(order + pointer, data, header - struct.calcsize(pointer))[0]
    steps, table = _directory_steps(data, first, order, big)
    exif = _pointed_to(table, TIFF_EXIF_DIRECTORY)
    seen = {first}
    for offset in (exif, _pointed_to(table, TIFF_GPS_DIRECTORY),
                   _pointed_to(_directory_table(data, exif, order, big), TIFF_INTEROPERABILITY_DIRECTORY)):
        if offset is not None and offset not in seen:  # a directory that points to itself is read once
            seen.add(offset)
            steps += _directory_steps(data, offset, order, big)[0]
    return steps


def _directory_table(data: bytes, offset: int | None, order: str, big: bool) -> np.ndarray:
    """A directory's entries (tag, type, count, value), as many as the data holds (Pillow stops at the first it does
    not, with an error)."""
    count_format, count_size, entry_size, width = ("Q", 8, 20, "u8") if big else ("H", 2, 12, "u4")
    entry = np.dtype([("tag", order + "u2"), ("type", order + "u2"), ("count", order + width),
                      ("value", order + width)])
    if offset is None or offset + count_size > len(data):
        return np.zeros(0, entry)
    declared = struct.unpack_from(order + count_format, data, offset)[0]
    entries = min(declared, (len(data) - offset - count_size) // entry_size)
    return np.frombuffer(data, entry, count=entries, offset=offset + count_size)


def _directory_steps(data: bytes, offset: int, order: str, big: bool) -> tuple[int, np.ndarray]:
    table = _directory_table(data, offset, order, big)
    # Pillow skips a tag whose values the file does not hold (a warning, "possibly corrupt"), as cameras' damaged
    # EXIF often has: only values that are there count. In floats: a count may be up to 2**64 - 1.
    counts = table["count"].astype(np.float64)
    sizes = counts * TIFF_VALUE_SIZES[np.minimum(table["type"], len(TIFF_VALUE_SIZES) - 1)]
    held = np.where((sizes <= (8 if big else 4)) | (table["value"] + sizes <= len(data)), counts, 0.0)
    listed = held[(table["tag"] == TIFF_STRIP_OFFSETS) | (table["tag"] == TIFF_TILE_OFFSETS)].sum()
    numbers = held[np.isin(table["type"], TIFF_NUMBERS)].sum()
    fractions = held[np.isin(table["type"], TIFF_FRACTIONS)].sum()
    return len(table) + int(listed) + int(numbers) // NUMBERS_PER_STEP + int(fractions), table


def _pointed_to(table: np.ndarray, tag: int) -> int | None:
    """Where the directory a pointer tag names starts, None without one."""
    found = table["value"][table["tag"] == tag]
    return int(found[0]) if len(found) else None


def exif_steps(exif: bytes) -> int:
    """An EXIF block's pieces as _tiff_steps counts a TIFF's (it is a TIFF directory, after "Exif\\0\\0" in a JPEG
    or WebP): Pillow reads its first directory to find the orientation. 0 when it is not one Pillow would read."""
    if exif.startswith(EXIF_PREFIX):
        exif = exif[len(EXIF_PREFIX):]
    return _tiff_steps(exif) if exif.startswith(TIFF_PREFIXES) else 0
