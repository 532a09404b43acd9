"""A stand-in for Triton's `triton_python_backend_utils`, the module a Python-backend model imports inside Triton's
stub process (not installed here): the seam the model files' unit tests fake."""

from __future__ import annotations

import types

import numpy as np


class Tensor:
    def __init__(self, name, values):
        self.name, self.values = name, np.asarray(values)

    @classmethod
    def from_dlpack(cls, name, values):
        return cls(name, np.from_dlpack(values))


class InferenceResponse:
    """tensors: output name -> values; error: the TritonError's message, or None."""

    def __init__(self, tensors=(), error=None):
        self.tensors, self.error = {t.name: t.values for t in tensors}, error


def backend_utils() -> types.ModuleType:
    """The module, with requests as dicts of input name -> array."""
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor, module.InferenceResponse = Tensor, InferenceResponse
    module.TritonError = lambda message: message
    module.get_input_tensor_by_name = lambda request, name: request[name]
    return module
