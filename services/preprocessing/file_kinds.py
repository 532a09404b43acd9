"""What a file that is none of the accepted image formats is, from its first bytes, so the reason a listing fails
tells its seller or an operator what to do: "an HTML page" (an image link that leads to an error page, a login or a
page about the photo), "HEIC" (an iPhone's own format: send it as JPEG), rather than only "not an accepted format".

Only the file's signature is read (its first kilobyte at most), nothing is decoded: these formats are refused, and
their decoders (libheif and libde265 for HEIC among them) stay out of the service that reads anyone's bytes.
"""

from __future__ import annotations

SNIFFED_BYTES = 1024

# ISO base media files (HEIF, MP4, QuickTime) say what they are in their first box, `ftyp`, by a brand.
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1", b"mif2"}
_VIDEO_BRANDS = {b"isom", b"iso2", b"mp41", b"mp42", b"avc1", b"qt  ", b"M4V ", b"3gp4", b"3gp5", b"dash"}

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"\xff\x0a", "JPEG XL"),
    (b"%PDF-", "a PDF document"),
    (b"8BPS", "a Photoshop document (PSD)"),
    (b"\x00\x00\x01\x00", "an icon (ICO)"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"\x1a\x45\xdf\xa3", "a video (WebM or Matroska)"),
)


def unaccepted_kind(data: bytes) -> str | None:
    """A name for what these bytes are, where their first bytes say and it is not an accepted image format; None
    where they do not say (a damaged image, random bytes)."""
    head = bytes(data[:SNIFFED_BYTES])
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        box_end = min(int.from_bytes(head[:4], "big"), len(head))
        compatible = {head[at:at + 4] for at in range(16, box_end - 3, 4)}
        if brand in _HEIF_BRANDS and not compatible & {b"avif", b"avis"}:  # a generic HEIF brand on an AVIF
            return "HEIC (HEIF)"
        if brand in _VIDEO_BRANDS:
            return "a video (MP4 or QuickTime)"
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            return kind
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()  # a UTF-8 byte order mark and white space
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or (
            text.startswith((b"<!--", b"<?xml", b"<!doctype")) and b"<html" in text):
        return "an HTML page"
    if text.startswith(b"<svg") or (text.startswith((b"<?xml", b"<!--", b"<!doctype svg")) and b"<svg" in text):
        return "an SVG drawing"
    if text.startswith((b"{", b"[")) and _is_text(text):
        return "JSON text"
    return None


def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        return error.start >= len(head) - 3  # cut inside a character at the end of the sniffed bytes
    return True


def advice(kind: str) -> str:
    """What the seller can do about a file of this kind."""
    if kind == "an HTML page":
        return ("a web page came where the photo should be (an image link that leads to an error page, a login or "
                "a page about the photo)")
    if kind.startswith("HEIC"):
        return "send the photo as JPEG (on an iPhone: Settings, Camera, Formats, Most Compatible)"
    return "send the photo as JPEG, PNG or WebP"
