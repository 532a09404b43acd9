"""Listings that can never be classified, for fault tests: a corrupt image and a decompression bomb; a JPEG whose
endless scans would hold a decoder for minutes, and one whose endless markers would hold Image.open for seconds; and
a header key the Kafka client cannot read."""

from __future__ import annotations

import io
import struct
import zlib

from services.common.contracts.product_classification.v1 import common_pb2


def png_header_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def jpeg_scan_bomb(side: int, extra_scans: int) -> bytes:
    """A valid progressive JPEG of side x side pixels of one colour whose last scan (a few bytes: a flat image leaves
    it next to nothing to code) is repeated extra_scans times: each repeat is another pass over every block."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (120, 130, 140)).save(buffer, "JPEG", quality=75, progressive=True)
    data = buffer.getvalue()
    last_scan = data[data.rindex(b"\xff\xda"):-2]  # up to the end-of-image marker
    return data[:-2] + last_scan * extra_scans + b"\xff\xd9"


def corrupt_image_listing(listing_id: str) -> common_pb2.Listing:
    return common_pb2.Listing(listing_id=listing_id, marketplace="de-modehaus", image_bytes=b"\xff\xd8\xff\xe0 broken")


def oversized_image_listing(listing_id: str) -> common_pb2.Listing:
    return common_pb2.Listing(listing_id=listing_id, marketplace="de-modehaus",
                              image_bytes=png_header_bomb(100_000, 100_000))


def scan_bomb_listing(listing_id: str) -> common_pb2.Listing:
    """A 2000x2000 progressive JPEG of 20,000 scans (about 300 KB): several CPU-seconds to decode, were it decoded."""
    return common_pb2.Listing(listing_id=listing_id, marketplace="de-modehaus",
                              image_bytes=jpeg_scan_bomb(2000, 20_000))


def marker_flood_listing(listing_id: str, markers: int = 4_000_000) -> common_pb2.Listing:
    """A small real JPEG after 4 million empty APP5 markers (16 MB): Pillow reads them one at a time in Python
    (8.8 CPU-s for Image.open alone), were the file opened."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 130, 140)).save(buffer, "JPEG")
    data = buffer.getvalue()
    return common_pb2.Listing(listing_id=listing_id, marketplace="de-modehaus",
                              image_bytes=data[:2] + b"\xff\xe5\x00\x02" * markers + data[2:])


class UndecodableHeaderKey(str):
    """A Kafka record header key whose bytes on the wire are not UTF-8, as a Go or C producer may write (header keys
    are bytes there); kafka-python's producer writes whatever encode() returns, its consumer cannot read it back."""

    def encode(self, *args, **kwargs) -> bytes:
        return b"\xff\xfe-not-utf-8"
