"""One set of rules for the text fields that come from sellers and other systems, applied at every edge.

The gateway (gRPC), preprocessing (Kafka and gRPC) and results (Kafka and gRPC) all call these, so an id that one
store or one language cannot hold (a NUL byte, an id longer than an index allows, a lone surrogate) is refused where it
enters, as INVALID_REQUEST with the field's name, instead of failing later where retrying cannot fix it.
"""

from __future__ import annotations

import re

from services.common.contracts.product_classification.v1 import common_pb2
from services.common.errors import ClassificationError, ErrorKind

MAX_ID_LENGTH = 256
MAX_TITLE_LENGTH = 2000
_MARKETPLACE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_LOCALE = re.compile(r"[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8}){0,4}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_text(field: str, value: str, max_length: int, required: bool = False, control_allowed: bool = False
               ) -> None:
    if not value:
        if required:
            raise ClassificationError(ErrorKind.INVALID_REQUEST, f"{field} is required")
        return
    if len(value) > max_length:
        raise ClassificationError(ErrorKind.INVALID_REQUEST, f"{field} is {len(value)} characters, over the limit of "
                                  f"{max_length}")
    if "\x00" in value or (not control_allowed and _CONTROL.search(value)):
        raise ClassificationError(ErrorKind.INVALID_REQUEST, f"{field} holds control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ClassificationError(ErrorKind.INVALID_REQUEST, f"{field} is not valid Unicode text") from None


def check_identifiers(listing_id: str, marketplace: str, locale: str = "", submission_id: str = "") -> None:
    """The fields every event and call carries: the listing's id, its marketplace and its locale."""
    check_text("listing_id", listing_id, MAX_ID_LENGTH, required=True)
    check_text("submission_id", submission_id, MAX_ID_LENGTH)
    if not marketplace:
        raise ClassificationError(ErrorKind.INVALID_REQUEST, "marketplace is required")
    if not _MARKETPLACE.fullmatch(marketplace):
        raise ClassificationError(ErrorKind.INVALID_REQUEST, "marketplace must be 1-64 lower-case letters, digits, "
                                  "'.', '_' or '-'")
    if locale and not _LOCALE.fullmatch(locale):
        raise ClassificationError(ErrorKind.INVALID_REQUEST, "locale must be a BCP 47 tag such as de-DE")


def check_listing(listing: common_pb2.Listing) -> None:
    check_identifiers(listing.listing_id, listing.marketplace, listing.locale)
    check_text("title", listing.title, MAX_TITLE_LENGTH, control_allowed=True)
    if listing.WhichOneof("image") == "image_url":
        check_text("image_url", listing.image_url, 4096)


# What google.protobuf.Timestamp can hold (0001-01-01 to 9999-12-31): outside it, converting one to a date or to
# JSON raises, so a timestamp a producer set out of range is dropped where it comes in, not carried on.
TIMESTAMP_SECONDS_RANGE = (-62_135_596_800, 253_402_300_799)


def valid_timestamp(value) -> bool:
    """Whether a google.protobuf.Timestamp is one a date can be made of."""
    return TIMESTAMP_SECONDS_RANGE[0] <= value.seconds <= TIMESTAMP_SECONDS_RANGE[1] and 0 <= value.nanos < 10**9
