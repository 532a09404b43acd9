"""PREPROCESSING_TRITON_SHARED_MEMORY through the real Triton: the ensembles' tensors go through system shared memory
and the answers are the gRPC path's, under concurrent calls, with a photo Triton refuses in the batch, after Triton
forgot a region (a restart), and after a worker holding regions was killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from services.common.decode_path import ENSEMBLE_MODEL, PIXELS_ENSEMBLE
from services.drivers.traffic import sample_listings
from services.preprocessing.images import ImageLimits, prepare_image
from services.preprocessing.triton_shared_memory import REGION_PREFIX, SHM_DIRECTORY


def our_regions(triton) -> set[str]:
    client = triton.client()
    try:
        regions = client.get_system_shared_memory_status(as_json=True).get("regions", {})
    finally:
        client.close()
    return {name for name in regions if name.startswith(REGION_PREFIX)}


@pytest.fixture(scope="module")
def photos():
    return [s.listing.image_bytes for s in sample_listings(12, seed=191, prefix="shm")]


@pytest.fixture
def classifiers(stack):
    """The decode path's classifier over gRPC and through shared memory, on the stack's Triton."""
    made = {shared: stack.triton.classifier(stack.called_models, ensemble=ENSEMBLE_MODEL,
                                     shared_memory=shared) for shared in (False, True)}
    for classifier in made.values():
        classifier.start()
    yield made
    for classifier in made.values():
        classifier.stop()
    assert our_regions(stack.triton) == set()  # stop unregistered every region it made


def assert_same_answers(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for name in expected:
        assert got[name].shape == expected[name].shape, name
        assert np.allclose(got[name], expected[name], atol=1e-5), name


def test_both_ensembles_answer_through_shared_memory_as_over_grpc(stack, classifiers, photos):
    expected, _ = classifiers[False].classify_photos(photos[:5], thumbnails=True)
    got, refused = classifiers[True].classify_photos(photos[:5], thumbnails=True)
    assert refused == {}
    assert_same_answers(got, expected)
    assert len(our_regions(stack.triton)) == 1
    pixels = {shared: stack.triton.classifier(stack.called_models, pixels_ensemble=PIXELS_ENSEMBLE,
                                       shared_memory=shared) for shared in (False, True)}
    for classifier in pixels.values():
        classifier.start()
    try:
        sizes = pixels[False].input_sizes()
        prepared = [prepare_image(photo, sizes, ImageLimits()) for photo in photos[:5]]
        squares = {size: np.stack([p.tensors[size] for p in prepared]) for size in set(sizes)}
        assert_same_answers(pixels[True].classify(squares), pixels[False].classify(squares))
    finally:
        for classifier in pixels.values():
            classifier.stop()


def test_concurrent_calls_each_get_their_own_answers(stack, classifiers, photos):
    """Eight threads at once, each its own batch: every answer is its batch's, never another call's bytes."""
    batches = [photos[i:i + 3] for i in range(0, 12, 3)] * 2
    expected = [classifiers[False].classify_photos(batch)[0] for batch in batches]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda batch: classifiers[True].classify_photos(batch)[0], batches))
    for answers, wanted in zip(got, expected):
        assert_same_answers(answers, wanted)
    assert 1 <= len(our_regions(stack.triton)) <= 4  # the pool's bound; the other calls went over gRPC


def test_a_photo_triton_refuses_fails_alone_and_the_region_is_kept(stack, classifiers, photos):
    truncated = photos[0][:len(photos[0]) // 2]
    batch = [photos[1], truncated, photos[2]]
    expected, _ = classifiers[False].classify_photos([photos[1], photos[2]])
    got, refused = classifiers[True].classify_photos(batch)
    regions = our_regions(stack.triton)
    assert set(refused) == {1} and "decode" in refused[1].reason
    assert_same_answers(got, expected)
    classifiers[True].classify_photos(photos[:2])
    assert our_regions(stack.triton) == regions  # Triton answered about a photo: the region stays in use


def test_a_region_triton_forgot_is_replaced_within_the_call(stack, classifiers, photos):
    """A restarted Triton knows none of the regions: the call that finds out makes a new one and goes on."""
    classifiers[True].classify_photos(photos[:2])
    [forgotten] = our_regions(stack.triton)
    client = stack.triton.client()
    try:
        client.unregister_system_shared_memory(forgotten)
    finally:
        client.close()
    expected, _ = classifiers[False].classify_photos(photos[:2])
    got, refused = classifiers[True].classify_photos(photos[:2])
    assert refused == {}
    assert_same_answers(got, expected)
    [replacement] = our_regions(stack.triton)
    assert replacement != forgotten and not (SHM_DIRECTORY / forgotten).exists()


def test_a_killed_workers_regions_are_removed_by_the_next_worker_to_start(stack, photos, tmp_path):
    """SIGKILL leaves the region registered in Triton (which keeps it mapped) and its object in /dev/shm; the next
    classifier to start on the host removes both, and leaves a live worker's region alone."""
    photo_file = tmp_path / "photo.jpg"
    photo_file.write_bytes(photos[0])
    script = textwrap.dedent(f"""
        import pathlib, time
        from services.preprocessing.triton_models import TritonClassifier
        classifier = TritonClassifier({stack.triton.grpc_url!r}, {stack.called_models!r}, ensemble={ENSEMBLE_MODEL!r},
                                      shared_memory=True, access_token={stack.triton.access_token!r})
        classifier.start()
        classifier.classify_photos([pathlib.Path({str(photo_file)!r}).read_bytes()])
        print("called", flush=True)
        time.sleep(600)
    """)
    live = stack.triton.classifier(stack.called_models, ensemble=ENSEMBLE_MODEL, shared_memory=True)
    live.start()
    worker = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        live.classify_photos(photos[:1])
        [live_region] = our_regions(stack.triton)
        assert worker.stdout.readline().strip() == "called"
        [dead_region] = our_regions(stack.triton) - {live_region}
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
        assert (SHM_DIRECTORY / dead_region).exists()  # nobody removed it: the process had no chance to
        next_worker = stack.triton.classifier(stack.called_models, ensemble=ENSEMBLE_MODEL,
                                       shared_memory=True)
        next_worker.start()
        next_worker.stop()
        assert our_regions(stack.triton) == {live_region}
        assert not (SHM_DIRECTORY / dead_region).exists()
        got, _ = live.classify_photos(photos[:1])  # the live worker's region still works
        assert got[stack.called_models[0]].shape == (1, 10)
    finally:
        worker.kill()
        worker.wait(10)
        live.stop()
