"""What travels to a lent GPU machine: a graph stripped of its weights there gets weights of the same shapes back,
so the same network runs (at the same cost); a graph that was not stripped keeps its own."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

from services.drivers.benchmarks.gpu import filled_onnx
from services.drivers.benchmarks.gpu_host.carry import fitting_photos, halve_weights, locked, strip_weights


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


def test_halved_weights_travel_in_half_the_bytes_and_come_back_as_float32_with_the_same_answers(tmp_path):
    weight = small_graph(tmp_path / "model.onnx")
    halve_weights(tmp_path / "model.onnx", tmp_path / "halved.onnx")
    assert (tmp_path / "halved.onnx").stat().st_size < 0.6 * (tmp_path / "model.onnx").stat().st_size
    assert filled_onnx(tmp_path / "halved.onnx", tmp_path / "restored.onnx") is True  # the real weights
    restored = onnx.load(str(tmp_path / "restored.onnx"))
    values = {t.name: numpy_helper.to_array(t) for t in restored.graph.initializer}
    assert values["w"].dtype == np.float32 and np.allclose(values["w"], weight, rtol=1e-3, atol=1e-4)
    assert not np.array_equal(values["w"], weight)  # it did travel as float16
    assert np.array_equal(values["b"], np.arange(4, dtype=np.float32))
    assert not any(p.key == "weights_halved" for p in restored.metadata_props)
    x = np.random.default_rng(4).integers(0, 256, (3, 8), dtype=np.uint8)
    assert np.allclose(run(tmp_path / "restored.onnx", x), run(tmp_path / "model.onnx", x), rtol=1e-2, atol=1e-2)


def test_the_services_packages_travel_at_the_service_images_pins(tmp_path):
    lock = tmp_path / "requirements-services.lock"
    lock.write_text("# a comment\nkafka-python==3.0.12\npydantic_core==2.50.5\nimportlib_metadata==10.2.0\n")
    assert locked(("kafka-python", "pydantic-core", "importlib_metadata"), lock) == (
        "kafka-python==3.0.12", "pydantic-core==2.50.5", "importlib_metadata==10.2.0")
    try:
        locked(("grpcio",), lock)
    except SystemExit as error:
        assert "grpcio" in str(error)
    else:
        raise AssertionError("a package the lock does not pin was packed")


def test_the_photos_that_travel_fit_the_budget_with_the_same_share_of_each_category(tmp_path):
    source = tmp_path / "validation"
    for category, count in (("hat", 5), ("pants", 2), ("shoes", 5)):
        (source / category).mkdir(parents=True)
        for index in range(count):
            (source / category / f"{index}.jpg").write_bytes(b"x" * 100)
    assert fitting_photos(source, tmp_path / "all", 10_000) == (12, 12)
    assert fitting_photos(source, tmp_path / "some", 750) == (7, 12)
    carried = {category.name: len(list(category.iterdir())) for category in (tmp_path / "some").iterdir()}
    assert carried == {"hat": 3, "pants": 2, "shoes": 2}  # in turn: hat, pants, shoes, hat, pants, shoes, hat
