"""Where a listing's image bytes come from: inline in the event, or fetched from its URL."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass

from services.common.contracts.product_classification.v1 import common_pb2
from services.common.errors import ClassificationError, ErrorKind


@dataclass(frozen=True)
class FetchSettings:
    timeout_s: float = 5.0
    max_bytes: int = 20 * 1024 * 1024
    attempts: int = 3


def fetch_url(url: str, settings: FetchSettings) -> bytes:
    """GETs an http(s) URL with a timeout and a size cap; transient failures are retried."""
    if not url.lower().startswith(("http://", "https://")):
        raise ClassificationError(ErrorKind.INVALID_REQUEST, f"image_url must be http(s), got {url[:80]!r}")
    last_error = ""
    for _ in range(settings.attempts):
        try:
            with urllib.request.urlopen(url, timeout=settings.timeout_s) as response:  # noqa: S310 (scheme checked)
                data = response.read(settings.max_bytes + 1)
            if len(data) > settings.max_bytes:
                raise ClassificationError(ErrorKind.IMAGE_TOO_LARGE,
                                          f"the image at the URL is over the limit of {settings.max_bytes} bytes")
            return data
        except urllib.error.HTTPError as error:
            if 400 <= error.code < 500:
                raise ClassificationError(ErrorKind.SOURCE_UNREACHABLE, f"fetching the image failed: HTTP {error.code}")
            last_error = f"HTTP {error.code}"
        except (urllib.error.URLError, OSError) as error:
            last_error = str(getattr(error, "reason", error))
    raise ClassificationError(ErrorKind.SOURCE_UNREACHABLE, f"fetching the image failed: {last_error}")


def image_bytes(listing: common_pb2.Listing, settings: FetchSettings) -> bytes:
    which = listing.WhichOneof("image")
    if which == "image_bytes":
        return listing.image_bytes
    if which == "image_url":
        return fetch_url(listing.image_url, settings)
    raise ClassificationError(ErrorKind.INVALID_REQUEST, "the listing has neither image_bytes nor image_url")
