"""Which corrections `make export-corrections` turns into labelled photos: the latest verdict on each photo of each
listing, across the API's pages (a fake stub stands in for the result service's ListCorrections)."""

from __future__ import annotations

from services.common.contracts.product_classification.v1 import common_pb2, results_pb2
from services.tools.export_corrections import latest_corrections


class Pages:
    """ListCorrections over corrections given newest first, two to a page."""

    def __init__(self, corrections: list[common_pb2.Correction]):
        self.corrections = corrections

    def ListCorrections(self, request: results_pb2.ListCorrectionsRequest, timeout: float):
        older = [c for c in self.corrections if not request.before_sequence or c.sequence < request.before_sequence]
        page = older[:2]
        more = len(older) > 2
        return results_pb2.ListCorrectionsResponse(corrections=page,
                                                   next_before_sequence=page[-1].sequence if more else 0)


def verdict(sequence: int, listing_id: str, digest: str, label: str) -> common_pb2.Correction:
    return common_pb2.Correction(sequence=sequence, listing_id=listing_id, label=label,
                                 model_answer=common_pb2.Classification(image_digest=digest))


def test_each_photo_of_a_listing_gives_its_latest_verdict_once():
    newest_first = [
        verdict(6, "l1", "b" * 64, "hat"),      # the seller's new photo, judged
        verdict(5, "l2", "c" * 64, "pants"),
        verdict(4, "l1", "a" * 64, "skirt"),    # the old photo's verdict, changed by a second operator
        verdict(3, "l1", "a" * 64, "shoes"),
        verdict(2, "l2", "c" * 64, "shorts"),
        verdict(1, "l3", "d" * 64, "dress"),
    ]
    chosen = {(c.listing_id, c.model_answer.image_digest): c.label
              for c in latest_corrections(Pages(newest_first), "")}
    assert chosen == {("l1", "b" * 64): "hat", ("l1", "a" * 64): "skirt", ("l2", "c" * 64): "pants",
                      ("l3", "d" * 64): "dress"}
