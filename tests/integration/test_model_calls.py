"""The production default calls the models at once (GPU Triton); the local stack calls them one after the other.
Both paths, through the real Triton, give the same answers."""

from __future__ import annotations

import numpy as np

from services.preprocessing.images import ImageLimits, prepare_image
from services.preprocessing.triton_models import TritonClassifier
from services.drivers.traffic import sample_listings


def test_parallel_and_sequential_model_calls_agree(stack):
    photos = sample_listings(6, seed=137, prefix="paths")
    outputs = {}
    for parallel in (True, False):
        classifier = TritonClassifier(stack.triton.grpc_url, stack.triton.model_names, parallel=parallel)
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
