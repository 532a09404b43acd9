"""Triton Python-backend model for a GPU: runs a production model.onnx with PyTorch on CUDA, FP16 under autocast.

For `make bench-gpu` on a lent GPU machine, whose own inference engine is PyTorch (TensorRT cannot travel there;
onnxruntime-gpu can, in parts, for --engine ort-cuda: ort_cuda_model.py; the transfer is capped at 64 MiB a call): the
ONNX graph is converted with onnx2torch (onnx_torch.py, beside this file), so the network computed is the
published one. Requests the dynamic batcher
groups run as one CUDA call; inputs may arrive on the GPU (from photo_decode) or on the CPU (from a client).
"""

import json
import os
import sys

# The Python backend's stub ignores PYTHONPATH; what was carried to the machine is named here instead.
sys.path[:0] = [p for p in os.environ.get("GPU_BENCH_PYTHONPATH", "").split(":") if p]

import torch
import triton_python_backend_utils as pb_utils

from services.drivers.benchmarks.gpu_host.onnx_torch import to_torch
from services.drivers.benchmarks.gpu_host.torch_threads import limit_cpu_threads


def as_torch(tensor):
    # DLPack both ways, never the stub's numpy bridge: on the GPU machine (numpy 2) outputs made from numpy arrays
    # reached the client empty
    return torch.from_dlpack(tensor.to_dlpack())


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        cuda = torch.cuda.is_available()  # without a GPU (a smoke test of this file) it runs on the CPU, in FP32
        device_id = int(args.get("model_instance_device_id") or 0)  # absent on KIND_CPU instances
        self.device = torch.device("cuda", device_id) if cuda else torch.device("cpu")
        limit_cpu_threads(cuda)
        self.fp16 = cuda and os.environ.get("GPU_BENCH_PRECISION", "fp16") == "fp16"
        self.model = to_torch(path).eval().to(self.device)
        dims = [int(d) for d in config["input"][0]["dims"]]
        with torch.inference_mode():  # the first calls pick kernels; keep that out of the first requests
            for batch in (1, max(1, int(config.get("max_batch_size", 1)))):
                self._run(torch.zeros([batch] + dims, dtype=torch.uint8, device=self.device))

    def _run(self, images):
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.fp16):
            return self.model(images).float()

    def execute(self, requests):
        batches = [as_torch(pb_utils.get_input_tensor_by_name(r, self.input_name)) for r in requests]
        with torch.inference_mode():
            outputs = self._run(torch.cat([b.to(self.device, non_blocking=True) for b in batches])).cpu()
        responses, start = [], 0
        for batch in batches:
            part = outputs[start:start + len(batch)].contiguous()
            start += len(batch)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor.from_dlpack(
                self.output_name, torch.utils.dlpack.to_dlpack(part))]))
        return responses

    def finalize(self):
        self.model = None
