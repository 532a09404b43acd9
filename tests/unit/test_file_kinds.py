"""A file that is no accepted image is named from its first bytes in the reason its listing fails (an HTML page, an
iPhone's HEIC, a PDF), with what the seller can do; damaged photos and random bytes keep the plain reason."""

from __future__ import annotations

import gzip
import io
import os
import zipfile

import pytest
from PIL import Image

from services.common.errors import ClassificationError, ErrorKind
from services.preprocessing.file_kinds import SNIFFED_BYTES, unaccepted_kind
from services.preprocessing.images import ImageLimits, prepare_image


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 30, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


def saved(fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 30, 200)).save(buffer, fmt, **options)
    return buffer.getvalue()


def iso_file(brand: bytes, compatible: bytes) -> bytes:
    """The first box of an ISO base media file (HEIF, MP4), then what would follow it."""
    ftyp = brand + b"\x00\x00\x00\x00" + compatible
    return (8 + len(ftyp)).to_bytes(4, "big") + b"ftyp" + ftyp + b"\x00\x00\x00\x08free" + os.urandom(200)


def zipped() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("photo.jpg", jpeg())
    return buffer.getvalue()


HTML_PAGES = [
    b"<!DOCTYPE html>\n<html lang=\"en\"><head><title>404 Not Found</title></head><body>gone</body></html>",
    b"\xef\xbb\xbf\r\n  <!doctype HTML><html><body>Please log in</body></html>",
    b"<html><head><meta http-equiv=refresh content=0></head></html>",
    b"<?xml version=\"1.0\"?>\n<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Strict//EN\" \"x\">\n<html xmlns=\"x\"/>",
    b"<!-- cdn edge 7 -->\n<html><body>Access denied</body></html>",
]


@pytest.mark.parametrize("data", HTML_PAGES)
def test_a_web_page_instead_of_a_photo_is_named_and_explained(data):
    assert unaccepted_kind(data) == "an HTML page"
    with pytest.raises(ClassificationError) as raised:
        prepare_image(data, [32], ImageLimits())
    assert raised.value.kind is ErrorKind.INVALID_IMAGE
    assert raised.value.reason.startswith("the file is an HTML page, not one of the accepted formats (JPEG")
    assert "a web page came where the photo should be" in raised.value.reason


@pytest.mark.parametrize(("data", "kind"), [
    (iso_file(b"heic", b"mif1heic"), "HEIC (HEIF)"),
    (iso_file(b"mif1", b"heic"), "HEIC (HEIF)"),
    (iso_file(b"isom", b"iso2avc1mp41"), "a video (MP4 or QuickTime)"),
    (iso_file(b"qt  ", b"qt  "), "a video (MP4 or QuickTime)"),
    (saved("JPEG2000"), "JPEG 2000"),
    (saved("JPEG2000", no_jp2=True), "JPEG 2000"),
    (b"\xff\x0a\xfa\x7f\x01" + os.urandom(100), "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n" + os.urandom(100), "JPEG XL"),
    (saved("PDF"), "a PDF document"),
    (b"8BPS\x00\x01" + bytes(20) + os.urandom(100), "a Photoshop document (PSD)"),
    (zipped(), "a ZIP archive"),
    (gzip.compress(jpeg()), "gzip-compressed data"),
    (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01" + os.urandom(50), "a video (WebM or Matroska)"),
    (b"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"10\" height=\"10\"><rect/></svg>", "an SVG drawing"),
    (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\"/>", "an SVG drawing"),
    (b"{\"error\": {\"code\": 403, \"message\": \"Forbidden\"}}", "JSON text"),
    (b"[" + "\"é\", ".encode() * 400 + b"]", "JSON text"),  # cut inside a character at the sniffed kilobyte
])
def test_other_files_are_named_by_their_signature(data, kind):
    assert unaccepted_kind(data) == kind
    with pytest.raises(ClassificationError) as raised:
        prepare_image(data, [32], ImageLimits())
    assert raised.value.kind is ErrorKind.INVALID_IMAGE
    assert raised.value.reason.startswith(f"the file is {kind}, not one of the accepted formats")
    assert "JPEG" in raised.value.reason.split(":", 1)[1]  # what to send instead


@pytest.mark.parametrize("data", [
    iso_file(b"mif1", b"mif1avifmiaf"),  # an AVIF under the generic HEIF brand that Pillow could not read: damaged
    os.urandom(4096),
    b"\x00" * 100,
    b"{\xff\xfe not text at all" + os.urandom(50),
    b"hello, this is plain text and no image",
    jpeg()[:2] + b"\x00" * 50,  # a JPEG's first marker and nothing of a photo after it
])
def test_bytes_that_say_nothing_keep_the_plain_reason(data):
    assert unaccepted_kind(data) is None
    with pytest.raises(ClassificationError) as raised:
        prepare_image(data, [32], ImageLimits())
    assert raised.value.kind is ErrorKind.INVALID_IMAGE and not raised.value.reason.startswith("the file is")


def test_only_the_first_kilobyte_is_read():
    page = b" " * SNIFFED_BYTES + b"<html><body>far down</body></html>"
    assert unaccepted_kind(page) is None
    assert unaccepted_kind(memoryview(HTML_PAGES[0] + os.urandom(20 * 1024 * 1024))) == "an HTML page"


def test_an_accepted_format_is_never_sniffed():
    assert prepare_image(jpeg(), [32], ImageLimits()).tensors[32].shape == (32, 32, 3)
    assert unaccepted_kind(jpeg()) is None
    # an operator who accepts a format gets it decoded, whatever it would be named when refused
    assert prepare_image(saved("JPEG2000"), [32], ImageLimits(formats=("JPEG2000",))).tensors[32].shape == (32, 32, 3)
