"""A second stack on the Triton another already runs (what bench-gpu's pipeline part does with the Triton it serves on
the GPU): its listings go through Kafka to classifications, what each process spent is measured, and stopping it
leaves that Triton serving."""

from __future__ import annotations

from services.drivers.benchmarks.pipeline_runs import EVERY_PHOTO_DECODED, StackRuns
from services.drivers.traffic import labelled_photos
from services.localstack.stack import LocalStack, StackOptions


def test_a_stack_on_a_shared_triton_classifies_through_kafka_and_leaves_that_triton_serving(stack, tmp_path):
    photos = [(path.read_bytes(), "original") for path, _ in labelled_photos()[:12]]
    options = StackOptions(work_dir=tmp_path / "second", triton=stack.triton,  # SQLite: the embedded default
                           extra_env={"PREPROCESSING_PARALLEL_MODEL_CALLS": "true", **EVERY_PHOTO_DECODED})
    with LocalStack(options) as second:
        assert second.triton is stack.triton
        assert second.services["preprocessing"].process.env["PREPROCESSING_TRITON_URL"] == stack.triton.grpc_url
        with StackRuns(second) as runs:
            first = runs.run(photos, "shared-triton-1")
            figures = runs.run(photos, "shared-triton-2", held=True)  # the workers stopped while it is submitted
    assert first["classified"] == figures["classified"] == len(photos) and figures["listings_per_s"] > 0
    assert figures["held"] and not first["held"]
    # The second run read its own classifications, not the first run's again as well.
    assert len(photos) <= figures["classifications_read"] < 2 * len(photos)
    spent = figures["cpu_ms_per_listing"]
    assert {"gateway", "preprocessing", "results", "services_total", "broker", "triton", "load_generator"} <= set(spent)
    assert spent["preprocessing"] > 0 and spent["triton"] > 0  # the shared Triton did the models' work
    client = stack.triton.client()
    try:
        assert client.is_server_ready() and all(client.is_model_ready(name) for name in stack.triton.model_names)
    finally:
        client.close()
