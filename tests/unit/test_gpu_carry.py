"""What travels to a lent GPU machine: a graph stripped of its weights there gets weights of the same shapes back,
so the same network runs (at the same cost); a graph that was not stripped keeps its own."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

from services.drivers.bench_gpu import filled_onnx
from services.drivers.gpu.carry import strip_weights


def small_graph(path) -> np.ndarray:
    """uint8 (N, 8) -> float (N, 4): a matrix product with an 8x2000 weight, a bias, and a shape constant."""
    weight = np.random.default_rng(1).standard_normal((8, 2000)).astype(np.float32)
    bias = np.arange(4, dtype=np.float32)
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["xf", "w"], ["h"]),
             helper.make_node("Reshape", ["h", "shape"], ["r"]),
             helper.make_node("ReduceMean", ["r"], ["m"], axes=[2], keepdims=0),
             helper.make_node("Add", ["m", "b"], ["y"])]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.UINT8, [None, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
                              [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b"),
                               numpy_helper.from_array(np.array([-1, 4, 500], np.int64), "shape")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return weight


def run(path, x):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_stripped_weights_are_refilled_with_the_same_shapes_and_the_graph_runs(tmp_path):
    weight = small_graph(tmp_path / "model.onnx")
    strip_weights(tmp_path / "model.onnx", tmp_path / "stripped.onnx")
    assert (tmp_path / "stripped.onnx").stat().st_size < weight.nbytes / 10
    assert filled_onnx(tmp_path / "stripped.onnx", tmp_path / "filled.onnx") is False  # not the real weights
    filled = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "filled.onnx")).graph.initializer}
    assert filled["w"].shape == weight.shape and not np.allclose(filled["w"], weight) and filled["w"].std() > 0
    assert np.array_equal(filled["b"], np.arange(4, dtype=np.float32))  # small tensors travel as they are
    assert np.array_equal(filled["shape"], [-1, 4, 500])
    x = np.random.default_rng(2).integers(0, 256, (3, 8), dtype=np.uint8)
    assert run(tmp_path / "filled.onnx", x).shape == (3, 4)


def test_a_graph_with_its_weights_is_copied_as_it_is(tmp_path):
    small_graph(tmp_path / "model.onnx")
    assert filled_onnx(tmp_path / "model.onnx", tmp_path / "copy.onnx") is True
    x = np.random.default_rng(3).integers(0, 256, (2, 8), dtype=np.uint8)
    assert np.array_equal(run(tmp_path / "copy.onnx", x), run(tmp_path / "model.onnx", x))
