"""Writers for the layouts Pillow reads but does not write: TIFFs of any strip, tile or directory layout, and
run-length BMPs. Each writes a valid file, so the same layout is both a photo within a limit and a flood past it."""

from __future__ import annotations

import struct

import numpy as np
from PIL import Image

SHORT, LONG, RATIONAL, LONG8 = 3, 4, 5, 16
MIN_IS_BLACK, RGB = 1, 2
EXIF_DIRECTORY = 34665


def exif_block(orientation: int = 1, fractions: int = 0, numbers: int = 0, padding: int = 0) -> bytes:
    """An EXIF directory as PNG's eXIf chunk holds it (Pillow adds "Exif\\0\\0" for a JPEG or WebP): the
    orientation, and a private tag of `fractions` RATIONALs and one of `numbers` SHORTs where asked, then `padding`
    bytes nothing points to."""
    entries = [(0x0112, SHORT, [orientation])]
    if fractions:
        entries.append((50000, RATIONAL, [1, 3] * fractions))
    if numbers:
        entries.append((50001, SHORT, [7] * numbers))
    outside = 8 + 2 + 12 * len(entries) + 4
    table, blobs = bytearray(struct.pack("<H", len(entries))), bytearray()
    for tag, kind, values in entries:
        packed = struct.pack("<" + {SHORT: "H", RATIONAL: "I"}[kind] * len(values), *values)
        count = len(values) // 2 if kind == RATIONAL else len(values)
        table += struct.pack("<HHI", tag, kind, count)
        if len(packed) <= 4:
            table += packed.ljust(4, b"\0")
        else:
            table += struct.pack("<I", outside + len(blobs))
            blobs += packed
    return b"II*\0" + struct.pack("<I", 8) + bytes(table) + bytes(4) + bytes(blobs) + bytes(padding)


def raw_tiff(picture: Image.Image, *, rows_per_strip: int = 0, tile: int = 0, extra_entries: int = 0,
             fractions: int = 0, numbers: int = 0, orientation: int = 0, exif_fractions: int = 0,
             big: bool = False, order: str = "<") -> bytes:
    """picture (L or RGB) as an uncompressed TIFF in strips of rows_per_strip rows (all rows in one by default) or
    in tile x tile tiles, with extra_entries private tags of one byte added to its directory, a private tag of
    `fractions` RATIONALs, one of `numbers` SHORTs, the orientation tag, and an EXIF directory holding a tag of
    `exif_fractions` RATIONALs, where given; BigTIFF with big (only
    little-endian: Pillow reads a big-endian BigTIFF header as a classic one), big-endian with order ">"."""
    assert not (big and order == ">")
    pixels = np.asarray(picture)
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    pieces = []
    if tile:
        padded = np.zeros((-(-height // tile) * tile, -(-width // tile) * tile) + pixels.shape[2:], np.uint8)
        padded[:height, :width] = pixels
        for top in range(0, padded.shape[0], tile):
            for left in range(0, padded.shape[1], tile):
                pieces.append(padded[top:top + tile, left:left + tile].tobytes())
    else:
        rows = rows_per_strip or height
        pieces = [pixels[top:top + rows].tobytes() for top in range(0, height, rows)]
    word = LONG8 if big else LONG
    entries = [(256, LONG, [width]), (257, LONG, [height]), (258, SHORT, [8] * channels), (259, SHORT, [1]),
               (262, SHORT, [RGB if channels == 3 else MIN_IS_BLACK]), (277, SHORT, [channels]),
               (284, SHORT, [1])]
    entries += [(50000 + index, 1, [7]) for index in range(extra_entries)]
    if fractions:
        entries.append((49999, RATIONAL, [1, 3] * fractions))
    if numbers:
        entries.append((49998, SHORT, [7] * numbers))
    if orientation:
        entries.append((274, SHORT, [orientation]))
    if exif_fractions:
        entries.append((EXIF_DIRECTORY, LONG, []))  # its value: where the directory is written, below
    if tile:
        entries += [(322, LONG, [tile]), (323, LONG, [tile]), (324, word, None), (325, word, [len(p) for p in pieces])]
    else:
        entries += [(273, word, None), (278, LONG, [rows_per_strip or height]),
                    (279, word, [len(p) for p in pieces])]
    entries.sort(key=lambda entry: entry[0])
    sizes = {1: "B", SHORT: "H", LONG: "I", RATIONAL: "I", LONG8: "Q"}
    header = 16 if big else 8
    entry_size, count_size, inline = (20, 8, 8) if big else (12, 2, 4)
    directory_size = count_size + entry_size * len(entries) + inline
    outside = header + directory_size  # where values that do not fit in an entry go
    offsets_position = None
    blobs = bytearray()
    table = bytearray(struct.pack(order + ("Q" if big else "H"), len(entries)))
    for tag, kind, values in entries:
        if tag == EXIF_DIRECTORY:
            assert not big, "a BigTIFF's EXIF directory is not written here"
            at = outside + len(blobs)
            table += struct.pack(order + "HHII", tag, kind, 1, at)
            blobs += struct.pack(order + "HHHII", 1, 33434, RATIONAL, exif_fractions, at + 18) + bytes(4)
            blobs += struct.pack(order + "I" * 2 * exif_fractions, *[1, 250] * exif_fractions)  # exposure times
            continue
        count = len(pieces) if values is None else len(values)
        packed = struct.pack(order + sizes[kind] * count, *(values or [0] * count))
        count = count // 2 if kind == RATIONAL else count  # a fraction is two LONGs
        table += struct.pack(order + ("HHQ" if big else "HHI"), tag, kind, count)
        if len(packed) <= inline:
            if values is None:
                offsets_position = ("inline", len(table))
            table += packed.ljust(inline, b"\0")
        else:
            if values is None:
                offsets_position = ("outside", len(blobs))
            table += struct.pack(order + ("Q" if big else "I"), outside + len(blobs))
            blobs += packed
    table += bytes(inline)
    pixel_start = outside + len(blobs)
    starts, position = [], pixel_start
    for piece in pieces:
        starts.append(position)
        position += len(piece)
    packed_starts = struct.pack(order + sizes[word] * len(starts), *starts)
    where, at = offsets_position
    if where == "inline":
        table[at:at + len(packed_starts)] = packed_starts
    else:
        blobs[at:at + len(packed_starts)] = packed_starts
    head = (b"II" if order == "<" else b"MM") + struct.pack(order + ("HHHQ" if big else "HI"),
                                                             *((43, 8, 0, header) if big else (42, header)))
    return head + bytes(table) + bytes(blobs) + b"".join(pieces)


def run_length_bmp(width: int, height: int, codes: bytes, rle4: bool = False,
                   palette: list[int] | None = None) -> bytes:
    """A BMP whose pixel data is codes (RLE8, or RLE4 with rle4) and whose palette is palette (red, green, blue in
    turn, as Image.getpalette gives it), or as many colours as the bit depth allows, not grey, so it opens as a
    palette image."""
    bits = 4 if rle4 else 8
    if palette is None:
        palette = [(value * factor + shift) % 256 for value in range(2 ** bits) for factor, shift in
                   ((37, 0), (91, 40), (13, 200))]
    colours = len(palette) // 3
    table = b"".join(bytes((palette[3 * index + 2], palette[3 * index + 1], palette[3 * index], 0))
                     for index in range(colours))
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, 2 if rle4 else 1, len(codes), 2835, 2835,
                       colours, 0)
    offset = 14 + len(info) + len(table)
    return b"BM" + struct.pack("<IHHI", offset + len(codes), 0, 0, offset) + info + table + codes


def rle8_codes(indices: np.ndarray) -> bytes:
    """An 8-bit palette picture (rows top to bottom) as RLE8 codes, as a Windows encoder writes them: bottom row
    first, runs of three or more as encoded runs, the rest in absolute runs, each row ended, the bitmap ended."""
    codes = bytearray()
    for row in indices[::-1]:
        row = bytes(row.astype(np.uint8))
        position, literal = 0, bytearray()
        while position <= len(row):
            run = 1
            while position + run < len(row) and row[position + run] == row[position] and run < 255:
                run += 1
            if position == len(row) or run >= 3 or len(literal) == 255:
                while literal:  # flush: absolute runs need three or more pixels, shorter ones go as runs of one
                    chunk, literal = literal[:255], literal[255:]
                    if len(chunk) >= 3:
                        codes += bytes((0, len(chunk))) + chunk + bytes(len(chunk) % 2)
                    else:
                        codes += b"".join(bytes((1, value)) for value in chunk)
                if position == len(row):
                    break
            if run >= 3:
                codes += bytes((run, row[position]))
                position += run
            else:
                literal.append(row[position])
                position += 1
        codes += b"\x00\x00"
    return bytes(codes) + b"\x00\x01"
