"""The ways preprocessing calls the models through the real Triton give the same answers: the models at once (GPU
Triton), one after the other (the local stack's per-model calls), and pixels_ensemble, one request per batch for
every called model (the default where Triton serves it)."""

from __future__ import annotations

import time

import numpy as np

from services.common.decode_path import PIXELS_ENSEMBLE
from services.preprocessing.images import ImageLimits, prepare_image
from services.drivers.traffic import sample_listings


def test_parallel_and_sequential_model_calls_agree(stack):
    photos = sample_listings(6, seed=137, prefix="paths")
    outputs = {}
    for parallel in (True, False):
        classifier = stack.triton.classifier(stack.triton.model_names, parallel=parallel)
        classifier.start()
        try:
            sizes = classifier.input_sizes()
            prepared = [prepare_image(p.listing.image_bytes, sizes, ImageLimits()) for p in photos]
            outputs[parallel] = classifier.classify({size: np.stack([p.tensors[size] for p in prepared])
                                                     for size in set(sizes)})
        finally:
            classifier.stop()
    assert set(outputs[True]) == set(stack.triton.model_names)
    for name in outputs[True]:
        assert outputs[True][name].shape == (6, 10)
        assert np.allclose(outputs[True][name], outputs[False][name], atol=1e-5), name


def _success_count(client, model: str) -> int:
    [stats] = client.get_inference_statistics(model, as_json=True)["model_stats"]
    return int(stats["inference_stats"]["success"].get("count", 0))


def _success_counts_after(client, before: dict[str, int], requests: int, wait_s: float = 5.0) -> dict[str, int]:
    """Each model's success count once every one has counted `requests` more, or as it is after wait_s: Triton
    records a request's statistics after it answered it (a full suite once read the ensemble's second request
    uncounted)."""
    deadline = time.monotonic() + wait_s
    while True:
        after = {name: _success_count(client, name) for name in before}
        if all(after[name] - before[name] >= requests for name in before) or time.monotonic() > deadline:
            return after
        time.sleep(0.05)


def test_the_pixels_ensemble_answers_as_the_models_do_in_one_request_per_batch(stack):
    """The CPU path's default: a batch's squares go to pixels_ensemble once. Its answers are the models' own, one
    request carries the batch (each model still runs once), and a Triton that does not serve the ensemble, or serves
    it for other models, gets one request per model instead, with the same answers."""
    photos = sample_listings(40, seed=139, prefix="ensemble")  # more than the models' max batch: two requests
    names = stack.called_models
    per_model = stack.triton.classifier(names, parallel=False)
    ensemble = stack.triton.classifier(names, pixels_ensemble=PIXELS_ENSEMBLE)
    missing = stack.triton.classifier(names, pixels_ensemble="no_such_ensemble")
    other_models = stack.triton.classifier(names[:1], pixels_ensemble=PIXELS_ENSEMBLE)
    classifiers = [per_model, ensemble, missing, other_models]
    for classifier in classifiers:
        classifier.start()
    try:
        sizes = per_model.input_sizes()
        prepared = [prepare_image(p.listing.image_bytes, sizes, ImageLimits()) for p in photos]
        batches = {size: np.stack([p.tensors[size] for p in prepared]) for size in set(sizes)}
        expected = per_model.classify(batches)
        client = ensemble._client
        batch_limit = min(spec.max_batch_size for spec in ensemble.specs)  # read (with a blank call each) first
        before = {name: _success_count(client, name) for name in [PIXELS_ENSEMBLE, *names]}
        answers = ensemble.classify(batches)
        requests = -(-len(photos) // batch_limit)
        after = _success_counts_after(client, before, requests)
        assert after[PIXELS_ENSEMBLE] - before[PIXELS_ENSEMBLE] == requests
        for name in names:
            assert after[name] - before[name] == requests  # each model once per request, not once per model call
            assert answers[name].shape == (len(photos), 10) and answers[name].dtype == np.float32
            assert np.allclose(answers[name], expected[name], atol=1e-5), name
        for fallback in (missing, other_models):
            counted = _success_count(client, PIXELS_ENSEMBLE)
            answered = fallback.classify({size: batches[size] for size in set(fallback.input_sizes())})
            time.sleep(0.2)  # time for a request's statistics to be recorded, were it called
            assert _success_count(client, PIXELS_ENSEMBLE) == counted  # not called
            for name in fallback.model_names:
                assert np.allclose(answered[name], expected[name], atol=1e-5), name
    finally:
        for classifier in classifiers:
            classifier.stop()
