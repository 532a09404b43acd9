"""What bench-gpu's pipeline part reports of a run's Triton calls, from counters read before and after it."""

from __future__ import annotations

from services.drivers.benchmarks.gpu_host.pipeline import calls_between


def test_a_runs_triton_calls_are_the_counters_differences_per_request():
    before = {"efficientnet_lite0": {"requests": 10, "images": 300, "executions": 10, "request_us": 100_000,
                                     "queue_us": 5_000, "compute_us": 90_000},
              "resnet50": {"requests": 4, "images": 40, "executions": 4, "request_us": 1, "queue_us": 1,
                           "compute_us": 1},
              "preprocessing": {"calls": 10, "call_s": 1.0, "images": 300}}
    after = {"efficientnet_lite0": {"requests": 30, "images": 900, "executions": 15, "request_us": 1_100_000,
                                    "queue_us": 405_000, "compute_us": 690_000},
             "resnet50": {"requests": 4, "images": 40, "executions": 4, "request_us": 1, "queue_us": 1,
                          "compute_us": 1},  # not called during the run: left out
             "photo_decode": {"requests": 2, "images": 64, "executions": 1, "request_us": 20_000, "queue_us": 0,
                              "compute_us": 20_000},  # first seen after the run began
             "preprocessing": {"calls": 30, "call_s": 3.0, "images": 900}}
    assert calls_between(before, after) == {
        "efficientnet_lite0": {"requests": 20, "images_per_request": 30.0, "images_per_execution": 120.0,
                               "request_ms": 50.0, "queue_ms": 20.0, "compute_ms": 30.0},
        "photo_decode": {"requests": 2, "images_per_request": 32.0, "images_per_execution": 64.0, "request_ms": 10.0,
                         "queue_ms": 0.0, "compute_ms": 10.0},
        "preprocessing": {"calls": 20, "images_per_call": 30.0, "call_ms": 100.0}}


def test_the_bench_names_the_pipelines_paths_as_the_pipeline_runs_them():
    from services.drivers.benchmarks.gpu import PIPELINE_PATHS
    from services.drivers.benchmarks.gpu_host.pipeline import PATHS

    assert sorted(PIPELINE_PATHS) == sorted(PATHS)


def test_the_bench_names_the_pipelines_transports_as_the_pipeline_runs_them():
    from services.drivers.benchmarks.gpu import PIPELINE_TRANSPORTS
    from services.drivers.benchmarks.gpu_host.pipeline import TRANSPORTS

    assert sorted(PIPELINE_TRANSPORTS) == sorted(TRANSPORTS)
    assert TRANSPORTS["shared_memory"]["PREPROCESSING_TRITON_SHARED_MEMORY"] == "true"


def test_a_gpu_stub_cuts_torchs_cpu_pool_and_a_cpu_one_keeps_it(monkeypatch):
    import torch

    from services.drivers.benchmarks.gpu_host.torch_threads import TORCH_THREADS_ENV, limit_cpu_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv(TORCH_THREADS_ENV, "0")
        assert limit_cpu_threads(True) == before  # 0: PyTorch's own default
        monkeypatch.setenv(TORCH_THREADS_ENV, "1")
        assert limit_cpu_threads(False) == before  # without a GPU the pool computes: left alone
        assert limit_cpu_threads(True) == 1
        monkeypatch.delenv(TORCH_THREADS_ENV)
        torch.set_num_threads(before)
        assert limit_cpu_threads(True) == before  # unset: PyTorch's default, as the fifth session measured
    finally:
        torch.set_num_threads(before)
