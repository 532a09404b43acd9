"""The Triton client's answer to a model reloaded during an ensemble's call (the real Triton, in the integration and
chaos tests, shows the reload itself; here the client is faked at its seam to place the reload exactly)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from services.common.decode_path import PIXELS_ENSEMBLE, probabilities_output
from services.common.errors import ClassificationError, ErrorKind
from services.preprocessing import triton_models
from services.preprocessing.triton_models import ModelSpec, TritonClassifier

LABELS = tuple(f"label{i}" for i in range(3))


class FakeTriton:
    """Serves lite0 and lite1 at `version`, through pixels_ensemble; reloads them at the next version after the
    infer calls listed in reload_after (1-based), as Triton would while a request is in flight."""

    def __init__(self, reload_after: set[int]):
        self.version = 1
        self.reload_after = reload_after
        self.infers: list[int] = []  # the version that answered each call

    def is_model_ready(self, name):
        return name == PIXELS_ENSEMBLE

    def get_model_metadata(self, name, as_json=False):
        return {"inputs": [{"name": "image_224", "shape": [-1, 224, 224, 3]}],
                "outputs": [{"name": probabilities_output(m)} for m in ("lite0", "lite1")]}

    def get_model_config(self, name, as_json=False):
        return {"config": {"max_batch_size": 32}}

    def infer(self, model, inputs, **kwargs):
        self.infers.append(self.version)
        if len(self.infers) in self.reload_after:
            self.version += 1
        rows = int(inputs[0].shape()[0])
        answered = self.infers[-1]

        class Result:
            def as_numpy(self, name):
                return np.full((rows, 3), answered, np.float32)
        return Result()

    def get_model_repository_index(self, as_json=False, client_timeout=None):
        return {"models": [{"name": m, "version": str(self.version), "state": "READY"} for m in ("lite0", "lite1")]}

    def close(self):
        pass


@pytest.fixture
def make_classifier(monkeypatch):
    def make(triton: FakeTriton) -> TritonClassifier:
        monkeypatch.setattr(triton_models, "read_model_spec", lambda client, name: ModelSpec(
            name, str(client.version), "image", 224, 32, "probabilities", LABELS))
        classifier = TritonClassifier("unused:0", ["lite0", "lite1"], pixels_ensemble=PIXELS_ENSEMBLE)
        classifier._client = triton
        return classifier
    return make


def squares(count: int = 2) -> dict[int, np.ndarray]:
    return {224: np.zeros((count, 224, 224, 3), np.uint8)}


def test_an_answer_given_during_a_reload_is_asked_again_and_named_by_the_new_version(make_classifier):
    triton = FakeTriton(reload_after={1})
    classifier = make_classifier(triton)
    answers = classifier.classify(squares())
    assert triton.infers == [1, 2]  # the first answer (version 1, or 2: it cannot tell) is not used
    assert [spec.version for spec in classifier.specs] == ["2", "2"]
    assert [spec.version for spec in classifier.answered_by()] == ["2", "2"]
    assert np.all(answers["lite0"] == 2) and np.all(answers["lite1"] == 2)


def test_without_a_reload_one_call_and_the_versions_read_at_start(make_classifier):
    triton = FakeTriton(reload_after=set())
    classifier = make_classifier(triton)
    classifier.classify(squares())
    classifier.classify(squares())
    assert triton.infers == [1, 1] and [spec.version for spec in classifier.specs] == ["1", "1"]


def test_two_reloads_in_a_row_make_the_batch_unavailable_not_mislabelled(make_classifier):
    triton = FakeTriton(reload_after={1, 2})
    classifier = make_classifier(triton)
    with pytest.raises(ClassificationError) as raised:
        classifier.classify(squares())
    assert raised.value.kind is ErrorKind.UNAVAILABLE and "reloaded" in raised.value.reason
    assert classifier.classify(squares())["lite0"][0, 0] == 3  # then served by version 3, named 3
    assert [spec.version for spec in classifier.specs] == ["3", "3"]


def test_squares_of_a_size_the_models_no_longer_take_make_the_batch_unavailable(make_classifier):
    classifier = make_classifier(FakeTriton(reload_after=set()))
    with pytest.raises(ClassificationError) as raised:
        classifier.classify({240: np.zeros((2, 240, 240, 3), np.uint8)})
    assert raised.value.kind is ErrorKind.UNAVAILABLE and "prepared again" in raised.value.reason


def test_the_answer_is_named_by_the_versions_that_gave_it_though_another_thread_read_them_again(make_classifier):
    triton = FakeTriton(reload_after=set())
    classifier = make_classifier(triton)
    answers = classifier.classify(squares())
    triton.version = 2  # reloaded; another thread's call found it and read the versions again
    with classifier._lock:
        classifier._specs = {}
    assert [s.version for s in classifier.specs] == ["2", "2"]
    assert [s.versioned_name for s in classifier.answered_by()] == ["lite0:1", "lite1:1"]
    assert answers["lite0"][0, 0] == 1.0
    seen_elsewhere: list = []
    thread = threading.Thread(target=lambda: seen_elsewhere.append(classifier.answered_by()))
    thread.start()
    thread.join()
    assert [s.version for s in seen_elsewhere[0]] == ["2", "2"]  # a thread that asked nothing: the versions read last
