"""make evaluate's counting: a wrong label, an unreadable photo and an unknown folder are counted, never dropped."""

from __future__ import annotations

import pytest

from services.drivers.evaluate import EvaluationError, Outcome, check_folders, score

LABELS = ["hat", "pants", "shoes"]


def test_right_wrong_and_failed_photos_all_count():
    expected = {"a": "hat", "b": "hat", "c": "pants", "d": "shoes", "e": "shoes"}
    outcomes = {
        "a": Outcome(("hat", "pants", "shoes")),
        "b": Outcome(("pants", "hat", "shoes")),          # wrong, but right in the top 5
        "c": Outcome(("pants", "shoes", "hat")),
        "d": Outcome(failure="ERROR_KIND_INVALID_IMAGE: truncated"),  # unreadable photo: failed
        # "e" never came back: failed too
    }
    figures = score(expected, outcomes, LABELS)
    assert figures["images"] == 5 and figures["failed"] == 2
    assert figures["fused_top1"] == pytest.approx(2 / 5) and figures["fused_top5"] == pytest.approx(3 / 5)
    assert figures["per_category"]["hat"] == {"precision": 1.0, "recall": 0.5, "support": 2}
    assert figures["per_category"]["pants"]["precision"] == pytest.approx(0.5)
    assert figures["per_category"]["shoes"] == {"precision": 0.0, "recall": 0.0, "support": 2}
    assert figures["confusion_matrix"][2][-1] == 2  # both shoes in the 'failed' column
    assert sorted(figures["failed_listings"]) == ["d", "e"]


def test_a_folder_the_models_do_not_know_stops_before_anything_is_sent(tmp_path):
    with pytest.raises(EvaluationError, match="folders that are no label of the models: scarf"):
        check_folders([(tmp_path / "1.jpg", "hat"), (tmp_path / "2.jpg", "scarf")], LABELS)
    with pytest.raises(EvaluationError, match="no photos"):
        check_folders([], LABELS)
