"""Fusion of the models and the mapping of a label to a marketplace's category: pure functions."""

import json

import numpy as np
import pytest

from services.common.contracts.product_classification.v1 import common_pb2, events_pb2
from services.common.errors import ClassificationError, ErrorKind
from services.common.fusion_file import FusionConfig
from services.results.core import classify
from services.results.fusion import fuse, fuse_arrays, parse_weights
from services.results.taxonomy import Taxonomies


LABELS = ["dress", "hat", "longsleeve", "outwear", "pants", "shirt", "shoes", "shorts", "skirt", "t-shirt"]


@pytest.fixture(scope="module")
def taxonomies():
    return Taxonomies.load(model_labels=LABELS, default_review_threshold=0.6)


def prediction(name, labels, probabilities, version="1"):
    return common_pb2.ModelPrediction(model_name=name, model_version=version, labels=labels,
                                      probabilities=probabilities)


def test_fusion_is_log_linear_pooling_aligned_by_label():
    fused = fuse([prediction("a", ["x", "y"], [0.8, 0.2]), prediction("b", ["y", "x"], [0.6, 0.4])],
                 {"a": 2, "b": 1})
    x, y = 0.8 ** 2 * 0.4, 0.2 ** 2 * 0.6
    assert fused["x"] == pytest.approx(x / (x + y))
    assert fused["y"] == pytest.approx(y / (x + y))
    assert fuse_arrays([np.array([[0.8, 0.2]]), np.array([[0.4, 0.6]])], [2, 1])[0] == pytest.approx(
        [fused["x"], fused["y"]])


def test_a_zero_weight_model_does_not_count_and_all_zero_is_refused():
    only_a = fuse([prediction("a", ["x", "y"], [0.8, 0.2]), prediction("b", ["x", "y"], [0.0, 1.0])], {"a": 1, "b": 0})
    assert only_a["x"] == pytest.approx(0.8)
    with pytest.raises(ClassificationError):
        fuse([prediction("a", ["x", "y"], [0.8, 0.2])], {"a": 0})


def test_fusion_rejects_mismatched_or_non_probability_outputs():
    with pytest.raises(ClassificationError) as raised:
        fuse([prediction("a", ["x", "y"], [1.0])], {})
    assert raised.value.kind is ErrorKind.INVALID_REQUEST
    with pytest.raises(ClassificationError):
        fuse([prediction("a", ["x", "y"], [float("nan"), 1.0])], {})


def test_parse_weights():
    assert parse_weights("resnet50=0.7, inception_v3=0.3") == {"resnet50": 0.7, "inception_v3": 0.3}


def test_fusion_file_names_the_models_worth_calling(tmp_path):
    path = tmp_path / "fusion.json"
    path.write_text(json.dumps({"models": {"efficientnet_lite0": {"version": 3, "weight": 1.4},
                                           "resnet50": {"version": 2, "weight": 0.0}},
                                "labels": LABELS, "review_threshold": 0.7}))
    config = FusionConfig.load(path)
    assert config.called_models == ["efficientnet_lite0"] and config.labels == tuple(LABELS)
    assert config.review_threshold == 0.7 and config.versions["resnet50"] == "2"
    path.write_text(json.dumps({"models": {"a": {"weight": 0}}}))
    with pytest.raises(ValueError, match="not all zero"):
        FusionConfig.load(path)


def made(marketplace="de-modehaus", locale="de-DE", p_lite=(0.15, 0.8, 0.05)):
    labels = ["dress", "shoes", "hat"]
    return events_pb2.PredictionMade(
        listing_id="l-1", marketplace=marketplace, locale=locale, image_digest="ab",
        predictions=[prediction("efficientnet_lite0", labels, list(p_lite)),
                     prediction("resnet50", labels, [0.6, 0.3, 0.1], version="2")])


def test_classify_carries_the_submission_time_on_unless_no_date_can_be_made_of_it(taxonomies):
    weights = {"efficientnet_lite0": 1.0, "resnet50": 0.0}
    prediction = made()
    prediction.submitted_at.seconds = 1_800_000_000
    assert classify(prediction, taxonomies, weights).submitted_at.seconds == 1_800_000_000
    prediction.submitted_at.seconds = 10 ** 12  # a producer's, out of Timestamp's range
    assert not classify(prediction, taxonomies, weights).HasField("submitted_at")


def test_classify_maps_the_fused_best_label_to_the_shopify_category_in_the_locale(taxonomies):
    classification = classify(made(), taxonomies, {"efficientnet_lite0": 1.0, "resnet50": 0.0})
    assert classification.label == "shoes" and classification.confidence == pytest.approx(0.8)
    assert classification.category.id == "gid://shopify/TaxonomyCategory/aa-8"
    assert classification.category.name == "Schuhe" and classification.category.locale == "de"
    assert classification.category.path[0] == "Bekleidung & Accessoires"
    assert classification.category.google_category.id == "187"
    assert {c.heading for c in classification.category.customs_codes} == {"6402", "6403", "6404", "6405"}
    assert [c.label for c in classification.candidates] == ["shoes", "dress", "hat"]
    assert classification.candidates[1].category.customs_codes  # candidates carry their codes too
    assert classification.model_versions == "efficientnet_lite0:1,resnet50:2"
    assert classification.status == common_pb2.CLASSIFICATION_STATUS_CLASSIFIED
    assert classification.review_threshold == pytest.approx(0.6)


@pytest.mark.parametrize("marketplace,locale", [("de-modehaus", "de-DE"), ("de-modehaus", "en-GB"),
                                                 ("br-loja", "en"), ("de-modehaus", ""), ("jp-ichiba", "xx-YY")])
def test_every_category_a_classification_carries_is_the_one_the_taxonomy_answers(taxonomies, marketplace, locale):
    """classify copies the cached categories straight into its message: the same ones category() answers, with
    their customs codes, and the cache itself left as it was."""
    owner = taxonomies.for_marketplace(marketplace)
    before = {label: taxonomies.category(owner, label, locale).SerializeToString() for label in owner.labels}
    classification = classify(made(marketplace, locale), taxonomies, {"efficientnet_lite0": 1.0, "resnet50": 0.0},
                              candidate_count=3)
    assert len(classification.candidates) == 3
    for candidate in classification.candidates:
        assert candidate.category == taxonomies.category(owner, candidate.label, locale)
        assert candidate.category.customs_codes
    assert classification.category == classification.candidates[0].category
    assert classification.locale == classification.category.locale
    classification.category.name = "changed"
    classification.candidates[1].category.customs_codes[0].code = "0000"
    assert {label: taxonomies.category(owner, label, locale).SerializeToString() for label in owner.labels} == before


def test_below_the_threshold_is_needs_review_with_its_candidates(taxonomies):
    classification = classify(made(p_lite=(0.35, 0.45, 0.2)), taxonomies, {"efficientnet_lite0": 1.0, "resnet50": 0})
    assert classification.status == common_pb2.CLASSIFICATION_STATUS_NEEDS_REVIEW
    assert classification.label == "shoes" and len(classification.candidates) == 3


def test_weights_change_the_decision(taxonomies):
    classification = classify(made(), taxonomies, {"efficientnet_lite0": 0.1, "resnet50": 2.0})
    assert classification.label == "dress"


@pytest.mark.parametrize("marketplace, requested, resolved, name", [
    ("br-loja", "pt-BR", "pt-BR", "Sapatos"),
    ("br-loja", "pt", "pt-BR", "Sapatos"),      # language alone finds the marketplace's regional locale
    ("br-loja", "ja-JP", "pt-BR", "Sapatos"),   # not sold in: the marketplace's default
    ("de-modehaus", "en-GB", "en", "Shoes"),    # en-GB -> en
    ("de-modehaus", "", "de", "Schuhe"),
    ("fr-boutique", "fr-CA", "fr", "Chaussures"),
])
def test_locale_falls_back_along_the_chain(taxonomies, marketplace, requested, resolved, name):
    classification = classify(made(marketplace=marketplace, locale=requested), taxonomies,
                              {"efficientnet_lite0": 1.0, "resnet50": 0})
    assert (classification.category.locale, classification.category.name) == (resolved, name)
    assert classification.locale == resolved


def test_unknown_marketplace_is_an_invalid_request(taxonomies):
    with pytest.raises(ClassificationError) as raised:
        classify(made(marketplace="nowhere"), taxonomies, {})
    assert raised.value.kind is ErrorKind.INVALID_REQUEST and "nowhere" in raised.value.reason


def test_the_same_prediction_twice_in_one_batch_is_published_once(tmp_path, taxonomies):
    from services.results.core import ClassificationRecorder
    from services.results.store import ClassificationStore

    class Acknowledged:
        def get(self, timeout):
            return None

    published = []
    store = ClassificationStore(f"sqlite:///{tmp_path / 'store.sqlite3'}")
    store.start()
    recorder = ClassificationRecorder(store, taxonomies, {},
                                      lambda event: published.append(event) or Acknowledged())
    recorder.record_predictions([made(), made()])
    recorder.record_predictions([made()])  # redelivered later: already published
    assert len(published) == 1 and store.count_for_listing("l-1") == 1
    store.stop()


def test_kafka_security_settings_reach_kafka_python_and_the_password_stays_secret():
    from services.common.settings import KafkaSettings

    settings = KafkaSettings(bootstrap_servers="a:9093,b:9093", security_protocol="SASL_SSL",
                             sasl_mechanism="SCRAM-SHA-512", sasl_username="classifier",
                             sasl_password="s3cret-password", ssl_cafile="/etc/kafka/ca.pem",
                             ssl_certfile="/etc/kafka/client.pem", ssl_keyfile="/etc/kafka/client.key")
    options = settings.client_options()
    assert options["bootstrap_servers"] == ["a:9093", "b:9093"] and options["security_protocol"] == "SASL_SSL"
    assert options["sasl_plain_password"] == "s3cret-password" and options["ssl_certfile"] == "/etc/kafka/client.pem"
    assert "s3cret-password" not in repr(settings) and "s3cret-password" not in str(settings.model_dump())
