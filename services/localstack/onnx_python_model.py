"""Triton Python-backend model that runs a production ONNX file with onnxruntime on the CPU.

The local Triton bundle has no onnxruntime backend, so each production model (platform onnxruntime_onnx) is served
here under the same name, tensors, batch size and batcher by this file, copied as `<version>/model.py` beside a
link to the same `model.onnx`. Requests the dynamic batcher groups are run as one onnxruntime call. Tensors come in
through DLPack; they go out through DLPack under numpy 2 (the stub's own numpy bridge answers empty arrays there) and
through that bridge under numpy 1 (whose capsules complain, once per response, when the stub consumes them).
"""

import json
import os

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils

NUMPY_2 = int(np.__version__.split(".")[0]) >= 2


def output_tensor(name, array):
    array = np.ascontiguousarray(array)
    return pb_utils.Tensor.from_dlpack(name, array) if NUMPY_2 else pb_utils.Tensor(name, array)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        options = onnxruntime.SessionOptions()
        threads = int(os.environ.get("LOCAL_TRITON_ONNX_THREADS", "0"))
        if threads:
            options.intra_op_num_threads = threads
        # onnxruntime's pool threads spin between runs by default: on a machine whose few cores the services share,
        # that is CPU taken from them for nothing (LOCAL_TRITON_ONNX_SPIN=1 turns it back on)
        options.add_session_config_entry("session.intra_op.allow_spinning",
                                         "1" if os.environ.get("LOCAL_TRITON_ONNX_SPIN") == "1" else "0")
        model_path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = onnxruntime.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
        self.session_input = self.session.get_inputs()[0].name

    def execute(self, requests):
        batches = [np.from_dlpack(pb_utils.get_input_tensor_by_name(r, self.input_name)) for r in requests]
        # one request's tensor as it is (concatenating one would copy a batch of 224 px squares, 4.8 MB, for nothing)
        inputs = batches[0] if len(batches) == 1 else np.concatenate(batches)
        outputs = self.session.run(None, {self.session_input: inputs})[0]
        responses, start = [], 0
        for batch in batches:
            part = outputs[start:start + len(batch)]
            start += len(batch)
            responses.append(pb_utils.InferenceResponse([output_tensor(self.output_name, part.astype(np.float32))]))
        return responses

    def finalize(self):
        self.session = None
