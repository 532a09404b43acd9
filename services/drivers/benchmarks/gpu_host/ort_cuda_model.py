"""Triton Python-backend model for a GPU: runs a production model.onnx with ONNX Runtime's CUDA execution provider,
the graph converted to FP16 (its uint8 input and float32 output keep their types).

For `make bench-gpu --engine ort-cuda` on a lent GPU machine: the production Triton runs these graphs in its ONNX
Runtime backend (TensorRT in FP16 first, CUDA for the rest: config.pbtxt); the tritonserver that can travel has only
the Python backend, so this model runs the same library inside it. onnxruntime-gpu reaches the machine in parts
(ort_gpu.py, beside this file). Requests the dynamic batcher groups run as one call; inputs may arrive on the GPU
(from photo_decode) or on the CPU (from a client); with PyTorch present they are bound to the session where they lie
(IO binding), so nothing goes through host memory that need not. Without a GPU (a rehearsal, a test) it runs the FP32
graph on the CPU provider.

On the GPU every call runs at the model's max batch size, the rows the batcher did not fill being zeros whose answers
are dropped (BATCH_FIXED, the default): the CUDA provider prepares its convolutions again whenever the input's shape
differs from the call before (onnxruntime issue 23006, "x15 slower" with interleaved shapes), and the dynamic batcher
forms a different batch size from one call to the next under load. BATCH_AS_FORMED runs each batch at its own size;
the model config's parameter `batch` picks one, else GPU_BENCH_ORT_BATCH.
"""

import json
import os
import sys

# The Python backend's stub ignores PYTHONPATH; what was carried to the machine is named here instead.
sys.path[:0] = [p for p in os.environ.get("GPU_BENCH_PYTHONPATH", "").split(":") if p]

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils

from services.localstack.onnx_python_model import output_tensor

try:  # on the GPU machine: loads the CUDA libraries ONNX Runtime's provider links, and moves tensors by DLPack
    import torch
except ImportError:
    torch = None

CUDA_PROVIDER = "CUDAExecutionProvider"
BATCH_FIXED, BATCH_AS_FORMED = "fixed", "as_formed"


def fp16_graph(path: str) -> bytes:
    """The graph with float tensors and computation in FP16, inputs and outputs as they were."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(onnx.load(path), keep_io_types=True).SerializeToString()


def cuda_usable() -> bool:
    return (torch is not None and torch.cuda.is_available()
            and CUDA_PROVIDER in onnxruntime.get_available_providers())


def padded(images, rows: int):
    """images (a torch tensor) with zero rows added up to `rows` (as it is when it has as many or more)."""
    if images.shape[0] >= rows:
        return images
    return torch.cat([images, images.new_zeros((rows - images.shape[0], *images.shape[1:]))])


def batch_setting(config: dict) -> str:
    """The model config's parameter `batch`, else GPU_BENCH_ORT_BATCH, else BATCH_FIXED."""
    parameter = config.get("parameters", {}).get("batch", {}).get("string_value")
    value = parameter or os.environ.get("GPU_BENCH_ORT_BATCH") or BATCH_FIXED
    if value not in (BATCH_FIXED, BATCH_AS_FORMED):
        raise ValueError(f"batch must be {BATCH_FIXED} or {BATCH_AS_FORMED}, not {value!r}")
    return value


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.classes = int(config["output"][0]["dims"][0])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.cuda = cuda_usable()
        self.device_id = int(args.get("model_instance_device_id") or 0)  # absent on KIND_CPU instances
        fp16 = os.environ.get("GPU_BENCH_PRECISION", "fp16") == "fp16"
        batch_mode = batch_setting(config)
        self.max_batch = max(1, int(config.get("max_batch_size", 1)))
        self.fixed_batch = self.max_batch if batch_mode == BATCH_FIXED else 0
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        # the CPU pool's threads spin between runs by default: CPU taken from the services for nothing
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.cuda:
            from services.drivers.benchmarks.gpu_host.torch_threads import limit_cpu_threads

            limit_cpu_threads(True)  # torch only moves tensors here
            options.intra_op_num_threads = 1  # the GPU computes; the host only launches
            # HEURISTIC: an exhaustive search would run again for every batch size the dynamic batcher forms
            provider = (CUDA_PROVIDER, {"device_id": self.device_id, "cudnn_conv_algo_search": "HEURISTIC",
                                        "do_copy_in_default_stream": True})
            self.session = onnxruntime.InferenceSession(fp16_graph(path) if fp16 else path, options,
                                                        providers=[provider])
            if self.session.get_providers()[0] != CUDA_PROVIDER:  # a silent CPU fallback would be a false figure
                raise RuntimeError(f"ONNX Runtime did not take the CUDA provider: {self.session.get_providers()}")
        else:
            self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        logger = getattr(pb_utils, "Logger", None)  # into tritonserver.log, which the bench sends back
        if logger is not None:
            logger.log_info(f"{config.get('name')}: onnxruntime {onnxruntime.__version__} ({onnxruntime.__file__}), "
                            f"providers {self.session.get_providers()}, FP16 {self.cuda and fp16}, batch {batch_mode}")
        dims = [int(d) for d in config["input"][0]["dims"]]
        for batch in (1, self.max_batch):  # kernels and workspaces picked here
            self._run_numpy(np.zeros([batch] + dims, np.uint8))

    def _run_numpy(self, images: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: images})[0]

    def _run_bound(self, images):
        """images: a contiguous uint8 torch tensor on this GPU; returns float32 probabilities on the CPU, a row each."""
        rows = images.shape[0]
        images = padded(images, self.fixed_batch)
        outputs = torch.empty((images.shape[0], self.classes), dtype=torch.float32, device=images.device)
        binding = self.session.io_binding()
        binding.bind_input(self.input_name, "cuda", self.device_id, np.uint8, list(images.shape), images.data_ptr())
        binding.bind_output(self.output_name, "cuda", self.device_id, np.float32, list(outputs.shape),
                            outputs.data_ptr())
        torch.cuda.current_stream(images.device).synchronize()  # the inputs are written before ONNX Runtime reads
        self.session.run_with_iobinding(binding)  # synchronises its own stream before returning
        return outputs[:rows].cpu()

    def execute(self, requests):
        tensors = [pb_utils.get_input_tensor_by_name(r, self.input_name) for r in requests]
        if self.cuda:
            device = torch.device("cuda", self.device_id)
            batches = [torch.from_dlpack(t.to_dlpack()) for t in tensors]
            outputs = self._run_bound(torch.cat([b.to(device, non_blocking=True) for b in batches]).contiguous())
            sizes = [len(b) for b in batches]
            parts = torch.split(outputs, sizes)
            return [pb_utils.InferenceResponse([pb_utils.Tensor.from_dlpack(
                self.output_name, torch.utils.dlpack.to_dlpack(part.contiguous()))]) for part in parts]
        batches = [np.from_dlpack(t) for t in tensors]
        outputs = self._run_numpy(np.concatenate(batches))
        responses, start = [], 0
        for batch in batches:
            part = outputs[start:start + len(batch)]
            start += len(batch)
            responses.append(pb_utils.InferenceResponse([output_tensor(self.output_name, part)]))
        return responses

    def finalize(self):
        self.session = None

