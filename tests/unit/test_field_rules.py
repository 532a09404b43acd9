"""One set of rules for ids and free text, at every edge; a row the store refuses is the event's fault, not an outage."""

from __future__ import annotations

import pytest

from services.common.contracts.product_classification.v1 import common_pb2, events_pb2
from services.common.errors import ClassificationError, ErrorKind
from services.common.validation import check_listing
from services.gateway.core import validate_listing
from services.preprocessing.core import validate_listing as preprocessing_validate
from services.results.core import classify

HOSTILE = [
    ("listing_id", "a\x00b", "control characters"),
    ("listing_id", "x" * 257, "over the limit of 256"),
    ("marketplace", "DE Modehaus", "lower-case"),
    ("marketplace", "de\x00", "lower-case"),
    ("locale", "de_DE<script>", "BCP 47"),
    ("title", "t\x00", "control characters"),
]


@pytest.mark.parametrize("field, value, message", HOSTILE)
def test_every_edge_refuses_the_same_fields_with_the_same_reason(field, value, message):
    listing = common_pb2.Listing(listing_id="l-1", marketplace="de-modehaus", locale="de-DE", image_bytes=b"x")
    setattr(listing, field, value)
    for check in (check_listing, lambda l: validate_listing(l, 1000), preprocessing_validate):
        with pytest.raises(ClassificationError) as raised:
            check(listing)
        assert raised.value.kind is ErrorKind.INVALID_REQUEST and message in raised.value.reason
    if field != "title":
        prediction = events_pb2.PredictionMade(listing_id="l-1", marketplace="de-modehaus", locale="de-DE")
        setattr(prediction, field, value)
        with pytest.raises(ClassificationError) as raised:
            classify(prediction, None, {})
        assert raised.value.kind is ErrorKind.INVALID_REQUEST and message in raised.value.reason


def test_a_row_postgresql_refuses_is_invalid_request_not_unavailable(postgres_url):
    from services.results.store import ClassificationStore

    store = ClassificationStore(postgres_url)
    store.start()
    try:
        with pytest.raises(ClassificationError) as raised:  # what reaches the store despite the edges
            store.record(common_pb2.Classification(listing_id="nul\x00inside", marketplace="de-modehaus",
                                                   image_digest="d", model_versions="m:1"))
        assert raised.value.kind is ErrorKind.INVALID_REQUEST
        assert store.ready()  # and the store still works
    finally:
        store.stop()
