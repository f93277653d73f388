"""Run the FP32 graph in ONNX Runtime on calibration frames and keep its intermediate tensors.

The graph is the pre-lowering one (custom ops as single nodes): a copy gets the function bodies
attached (plugins/onnx_ops.py) so that ORT CPU runs it, and every main-graph tensor asked for
becomes an extra graph output.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx

Frame = Mapping[str, np.ndarray]
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every main-graph tensor (inputs, initializers, node outputs, outputs),
    from ONNX shape inference with our custom-op schemas registered."""
    from sparsefuse.plugins import onnx_ops

    onnx_ops.register_schemas()
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    types: dict[str, int] = {}
    graph = inferred.graph
    for info in [*graph.input, *graph.value_info, *graph.output]:
        if info.type.HasField("tensor_type"):
            types[info.name] = info.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    return types


def session(model: onnx.ModelProto, optimize: bool = False) -> object:
    """A single-threaded ORT CPU session on ``model`` with our function bodies attached."""
    import onnxruntime as ort

    from sparsefuse.plugins import onnx_ops

    runnable = onnx_ops.attach_functions(model) if onnx_ops.custom_op_types(model) else model
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    if not optimize:  # we compare numerics, not speed: no fusions that change the arithmetic
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(runnable.SerializeToString(), options, providers=["CPUExecutionProvider"])


def with_outputs(model: onnx.ModelProto, names: Iterable[str], types: Mapping[str, int]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph also outputs ``names`` (element types from ``types``)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    listed = {o.name for o in out.graph.output}
    for name in names:
        if name not in listed and name in types:
            out.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
            listed.add(name)
    return out


def capture(model: onnx.ModelProto, frames: Sequence[Frame], names: Iterable[str] | None = None,
            ) -> dict[str, list[np.ndarray]]:
    """{tensor name: [array per frame]} for ``names`` (default: every node output) plus the graph
    inputs of each frame."""
    types = tensor_types(model)
    wanted = list(names) if names is not None else [o for n in model.graph.node for o in n.output if o]
    probe = with_outputs(model, wanted, types)
    sess = session(probe)
    input_names = [i.name for i in model.graph.input]
    output_names = [o.name for o in probe.graph.output]
    captured: dict[str, list[np.ndarray]] = {name: [] for name in [*input_names, *output_names]}
    for frame in frames:
        feeds = {k: np.ascontiguousarray(frame[k]) for k in input_names}
        for name, value in zip(output_names, sess.run(output_names, feeds), strict=True):
            captured[name].append(np.asarray(value))
        for name in input_names:
            captured[name].append(feeds[name])
    return captured


def check_finite(frames: Sequence[Frame]) -> None:
    """Refuse calibration frames holding NaN or inf (they would poison every range)."""
    from sparsefuse.errors import SparsefuseError

    for index, frame in enumerate(frames):
        for name, value in frame.items():
            array = np.asarray(value)
            if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
                bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
                raise SparsefuseError(
                    f"calibration frame {index} input {name!r} holds {bad} NaN/inf values",
                    "calibration frames must be finite: clean or drop that frame (the first frames "
                    "of --frames calibrate)")
