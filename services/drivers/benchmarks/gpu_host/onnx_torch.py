"""A published ONNX graph as a PyTorch module (onnx2torch), for the GPU bench's CUDA twins of the Triton models.

Two steps make the Keras-exported graphs (opset 20) convertible and lean:
- ONNX Runtime's basic graph optimisations (constant folding, redundant Cast/Identity/Transpose removal; standard ONNX
  operators only) shrink the hundreds of Casts and Transposes that the export leaves between layers;
- operators whose opset-19/20 revision changed nothing these graphs use (Cast, Identity, Pad, Reshape, Shape,
  Constant: new types or modes) are converted with onnx2torch's converter for their previous revision.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
from onnx import defs


def optimised(path: Path) -> onnx.ModelProto:
    import onnxruntime

    with tempfile.TemporaryDirectory() as folder:
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(Path(folder) / "optimised.onnx")
        onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


# Revisions that only widened types or added modes these graphs do not use: converted as their previous revision.
SAME_AS_PREVIOUS = {"Cast": 19, "Identity": 19, "Pad": 19, "Reshape": 19, "Shape": 19, "Constant": 19,
                    "AveragePool": 19}  # AveragePool-19 added dilations (these graphs: none)


def _reduce_18(node, graph):
    """ReduceMean and friends from opset 18 take their axes as an input; a constant one becomes static axes."""
    from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, get_const_value

    axes = None
    if len(node.input_values) > 1 and node.input_values[1]:
        axes = get_const_value(node.input_values[1], graph).tolist()  # KeyError: not a constant (not in these graphs)
    if not axes and node.attributes.get("noop_with_empty_axes", 0):
        raise NotImplementedError(f"{node.operation_type}-18 with noop_with_empty_axes")
    return OperationConverterResult(
        torch_module=OnnxReduceStaticAxes(node.operation_type, axes, node.attributes.get("keepdims", 1)),
        onnx_mapping=OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values))


def register_newer_revisions(model: onnx.ModelProto) -> list[str]:
    """Registers what onnx2torch lacks for this graph's opset (see the module's docstring); returns what it did."""
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription

    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    registered = []
    for op_type in sorted({n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")}):
        version = defs.get_schema(op_type, max_inclusive_version=opset).since_version
        if OperationDescription("", op_type, version) in _CONVERTER_REGISTRY:
            continue
        if op_type in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd") and version == 18:
            _CONVERTER_REGISTRY[OperationDescription("", op_type, 18)] = _reduce_18
            registered.append(f"{op_type}-18 with constant axes")
        elif SAME_AS_PREVIOUS.get(op_type) == version:
            older = max(d.version for d in _CONVERTER_REGISTRY if d.domain == "" and d.operation_type == op_type
                        and d.version < version)
            _CONVERTER_REGISTRY[OperationDescription("", op_type, version)] = _CONVERTER_REGISTRY[
                OperationDescription("", op_type, older)]
            registered.append(f"{op_type}-{version} as {op_type}-{older}")
    return registered


def to_torch(path: Path):
    from onnx2torch import convert

    model = optimised(path)
    for index, node in enumerate(model.graph.node):  # onnx2torch keys nodes by name; the optimiser repeats some
        node.name = f"{node.op_type}_{index}"
    register_newer_revisions(model)
    return convert(model)
