"""Triton Python-backend model that runs the production `photo_decode` DALI pipeline on DALI's CPU backend.

The local Triton bundle has no DALI backend and this machine no GPU, so the local stack serves `photo_decode` with
this file and, beside it, the very pipeline file the trainer writes (model.dali, services/trainer/photo_ensemble.py),
with two words changed: its decoder runs on the CPU ("cpu" for "mixed", nvJPEG's) and it has no GPU device. Every
operator after the decoder is the one a GPU host runs. A request whose photos do not all decode fails with DALI's
reason (the service then sends them one at a time, so a broken photo fails alone); the pipeline an error invalidated
is built again for the next request, as Triton's DALI backend replaces it.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

NUMPY_2 = int(np.__version__.split(".")[0]) >= 2
GPU_WORDS = {'device="mixed"': 'device="cpu"', "device_id=0": "device_id=None"}


def output_tensor(name, array):
    """Through DLPack under numpy 2, where the stub's numpy bridge answers empty arrays; through that bridge under
    numpy 1, whose capsules complain when the stub consumes them (each model file stands alone in its repository)."""
    array = np.ascontiguousarray(array)
    return pb_utils.Tensor.from_dlpack(name, array) if NUMPY_2 else pb_utils.Tensor(name, array)


def cpu_pipeline_text(text: str) -> str:
    """The production pipeline file with its decoder on DALI's CPU backend; refuses a file of another shape."""
    for gpu, cpu in GPU_WORDS.items():
        if text.count(gpu) != 1:
            raise ValueError(f"model.dali: expected {gpu} once, found it {text.count(gpu)} times")
        text = text.replace(gpu, cpu)
    return text


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        # the pipeline's outputs, in the order photo_ensemble.py declares them: a square per size, thumbnail, shape
        self.output_names = [output["name"] for output in config["output"]]
        source = Path(__file__).with_name("model.dali").read_text()
        namespace = {}
        exec(compile(cpu_pipeline_text(source), "model.dali", "exec"), namespace)  # noqa: S102  (our own file)
        self.define = namespace["photo_decode"]
        self.pipeline = self._built()

    def _built(self):
        # one batch in, one batch out, in the stub's thread: nothing is prefetched that a request did not send
        pipeline = self.define(exec_async=False, exec_pipelined=False, prefetch_queue_depth=1)
        pipeline.build()
        return pipeline

    def execute(self, requests):
        responses = []
        for request in requests:
            photos = np.from_dlpack(pb_utils.get_input_tensor_by_name(request, self.input_name))
            try:
                self.pipeline.feed_input(self.input_name, [np.ascontiguousarray(row) for row in photos])
                outputs = self.pipeline.run()
                responses.append(pb_utils.InferenceResponse(
                    [output_tensor(name, np.array(output.as_tensor()))
                     for name, output in zip(self.output_names, outputs)]))
            except Exception as error:  # noqa: BLE001  (a photo that does not decode fails its request only)
                self.pipeline = self._built()
                reason = " ".join(str(error).split())[:500]
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"photo_decode: the photo cannot be decoded: {reason}")))
        return responses
