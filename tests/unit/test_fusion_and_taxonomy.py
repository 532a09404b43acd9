"""Fusion of the two models and the mapping of a label to a marketplace's category: pure functions."""

import pytest

from services.common.contracts.product_classification.v1 import common_pb2, events_pb2
from services.common.errors import ClassificationError, ErrorKind
from services.results.core import classify
from services.results.fusion import fuse, parse_weights
from services.results.settings import SAMPLE_TAXONOMY
from services.results.taxonomy import Taxonomies


def prediction(name, labels, probabilities, version="1"):
    return common_pb2.ModelPrediction(model_name=name, model_version=version, labels=labels,
                                      probabilities=probabilities)


def test_fusion_is_a_weighted_mean_aligned_by_label():
    fused = fuse([prediction("a", ["x", "y"], [0.8, 0.2]), prediction("b", ["y", "x"], [0.6, 0.4])],
                 {"a": 3, "b": 1})
    assert fused["x"] == pytest.approx((3 * 0.8 + 0.4) / 4)
    assert fused["y"] == pytest.approx((3 * 0.2 + 0.6) / 4)


def test_fusion_rejects_mismatched_outputs():
    with pytest.raises(ClassificationError) as raised:
        fuse([prediction("a", ["x", "y"], [1.0])], {})
    assert raised.value.kind is ErrorKind.INVALID_REQUEST


def test_parse_weights():
    assert parse_weights("resnet50=0.7, inception_v3=0.3") == {"resnet50": 0.7, "inception_v3": 0.3}


def made(marketplace="eu-fashion", locale="de-DE"):
    return events_pb2.PredictionMade(
        listing_id="l-1", marketplace=marketplace, locale=locale, image_digest="ab",
        predictions=[prediction("resnet50", ["sneakers", "boots", "mug"], [0.2, 0.7, 0.1]),
                     prediction("inception_v3", ["sneakers", "boots", "mug"], [0.6, 0.3, 0.1], version="2")])


def test_classify_maps_the_fused_best_label_to_the_localised_category():
    classification = classify(made(), Taxonomies.load(SAMPLE_TAXONOMY), {"resnet50": 0.5, "inception_v3": 0.5})
    assert classification.label == "boots"
    assert classification.confidence == pytest.approx(0.5)
    assert list(classification.category.path) == ["Mode", "Schuhe", "Stiefel"]
    assert classification.category.id.startswith("EUF-")
    assert [c.label for c in classification.candidates] == ["boots", "sneakers", "mug"]
    assert classification.model_versions == "inception_v3:2,resnet50:1"


def test_weights_change_the_decision():
    classification = classify(made(), Taxonomies.load(SAMPLE_TAXONOMY), {"resnet50": 0.1, "inception_v3": 0.9})
    assert classification.label == "sneakers"


def test_unknown_locale_falls_back_to_the_marketplace_default():
    classification = classify(made(locale="fr-FR"), Taxonomies.load(SAMPLE_TAXONOMY), {})
    assert classification.locale == "fr-FR" and classification.category.path[0] == "Fashion"


def test_unknown_marketplace_is_an_invalid_request():
    with pytest.raises(ClassificationError) as raised:
        classify(made(marketplace="nowhere"), Taxonomies.load(SAMPLE_TAXONOMY), {})
    assert raised.value.kind is ErrorKind.INVALID_REQUEST and "nowhere" in raised.value.reason


def test_the_same_prediction_twice_in_one_batch_is_published_once(tmp_path):
    from services.results.core import ClassificationRecorder
    from services.results.store import ClassificationStore

    class Acknowledged:
        def get(self, timeout):
            return None

    published = []
    store = ClassificationStore(f"sqlite:///{tmp_path / 'store.sqlite3'}")
    store.start()
    recorder = ClassificationRecorder(store, Taxonomies.load(SAMPLE_TAXONOMY), {},
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
