"""Per-node work of an ONNX graph: FLOPs, bytes moved, weight name and sparse-conv geometry.

Shapes come from the graph's value_info (the dynamo exporter records them), with symbolic dims
("num_points", "u0", ...) resolved from ``dims``: observed sizes (e.g. LiDAR points and active
voxel sites measured on calibration frames by :func:`observe_dynamic_dims`) or defaults.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Ops that move no data on a GPU engine (metadata only or folded by the builder).
FREE_OPS = frozenset(
    {
        "Shape",
        "Reshape",
        "Squeeze",
        "Unsqueeze",
        "Constant",
        "Identity",
        "Flatten",
        "Size",
        "ConstantOfShape",
        "Cast",
    }
)
# Sparse conv op types -> input index of their weight [Cout, kz, ky, kx, Cin].
SPARSE_CONV_WEIGHT_SLOT = {"SparseConv3d": 2, "SparseInverseConv3d": 3}
TENSOR_CORE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", *SPARSE_CONV_WEIGHT_SLOT})
# Assumed share of a sparse-conv kernel's offsets that hit an active site, when no rulebook
# statistics are given: LiDAR voxels are surface-like, so a 3x3x3 neighbourhood is mostly empty.
SPARSE_NEIGHBOR_FRACTION = 0.25
DEFAULT_NUM_POINTS = 20000


@dataclass(frozen=True)
class NodeWork:
    """Work of one node. flops: multiply-adds x 2; bytes: inputs + weights + outputs at the
    graph's element sizes (the cost model rescales to the target precision). in_channels is the
    GEMM reduction width per group (C/g), the dimension 2:4 groups run along."""

    name: str
    op_type: str
    flops: float
    act_bytes: float
    weight_bytes: float
    weight: str | None = None
    out_bytes: float = 0.0
    in_channels: int = 0
    out_channels: int = 0
    kernel_volume: int = 1


def _value_shapes(model: Any) -> dict[str, list[int | str]]:
    graph = model.graph
    shapes: dict[str, list[int | str]] = {}
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _size(shape: Sequence[int | str] | None, dims: Mapping[str, int]) -> int:
    if shape is None:
        return 0
    total = 1
    for d in shape:
        total *= int(d) if isinstance(d, int) else int(dims.get(d, 0))
    return total


def _attr(node: Any, name: str, default: Any = None) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def default_dims(model: Any, num_points: int = DEFAULT_NUM_POINTS) -> dict[str, int]:
    """Sizes for symbolic dims when nothing was observed: points = ``num_points``; a Voxelize
    output = min(points, max_voxels); a sparse-conv output = its input's sites (an upper bound
    for strided convs)."""
    shapes = _value_shapes(model)
    dims: dict[str, int] = {}
    for value in model.graph.input:
        for d in shapes.get(value.name, []):
            if isinstance(d, str):
                dims.setdefault(d, num_points)
    for node in model.graph.node:
        if node.op_type == "Voxelize":
            limit = int(_attr(node, "max_voxels", num_points))
            points = _size(shapes.get(node.input[0], [num_points])[:1], dims) or num_points
            for out in node.output[:2]:
                lead = (shapes.get(out) or [None])[0]
                if isinstance(lead, str):
                    dims.setdefault(lead, min(points, limit))
        elif node.op_type == "SparseConv3d":
            lead_in = (shapes.get(node.input[0]) or [None])[0]
            n_in = lead_in if isinstance(lead_in, int) else dims.get(lead_in or "", num_points)
            for out in node.output:
                lead = (shapes.get(out) or [None])[0]
                if isinstance(lead, str):
                    dims.setdefault(lead, n_in)
    return dims


def node_work(model: Any, dims: Mapping[str, int]) -> list[NodeWork]:
    """FLOPs and bytes of every node (4 bytes per float element in the graph as exported)."""
    shapes = _value_shapes(model)
    inits = {i.name for i in model.graph.initializer}
    works = []
    for node in model.graph.node:
        outs = [_size(shapes.get(o), dims) for o in node.output if o]
        ins = [(_size(shapes.get(i), dims), i in inits) for i in node.input if i]
        act = 4.0 * (sum(n for n, is_w in ins if not is_w) + sum(outs))
        wbytes = 4.0 * sum(n for n, is_w in ins if is_w)
        slot = SPARSE_CONV_WEIGHT_SLOT.get(node.op_type, 1)
        weight = next((i for i in node.input[slot : slot + 1] if i in inits), None)
        flops, cin, cout, kvol = _flops(node, shapes, dims, outs)
        if node.op_type in FREE_OPS:
            act, wbytes, flops = 0.0, 0.0, 0.0
        out_bytes = 4.0 * outs[0] if outs and act else 0.0
        works.append(
            NodeWork(node.name, node.op_type, flops, act, wbytes, weight, out_bytes, cin, cout, kvol)
        )
    return works


def _flops(node: Any, shapes: dict, dims: Mapping[str, int], outs: list[int]) -> tuple[float, int, int, int]:
    op = node.op_type
    out0 = outs[0] if outs else 0
    if op in ("Conv", "ConvTranspose") and len(node.input) > 1:
        w = shapes.get(node.input[1]) or []
        if len(w) >= 3 and all(isinstance(d, int) for d in w):
            kvol = math.prod(w[2:])
            group = int(_attr(node, "group", 1))
            if op == "Conv":  # w = [K, C/g, kh, kw]: each output element reads C/g * kvol inputs
                return 2.0 * out0 * w[1] * kvol, w[1], w[0], kvol
            x = _size(shapes.get(node.input[0]), dims)  # ConvTranspose: w = [C, K/g, kh, kw]
            return 2.0 * x * w[1] * kvol, w[0] // group, w[1] * group, kvol
    if op in ("Gemm", "MatMul") and len(node.input) > 1:
        b = shapes.get(node.input[1]) or []
        if b and all(isinstance(d, int) for d in b):
            if op == "Gemm":
                k = b[1] if int(_attr(node, "transB", 0)) else b[0]
                n = b[0] if int(_attr(node, "transB", 0)) else b[1]
            else:
                k, n = (b[-2], b[-1]) if len(b) >= 2 else (b[0], 1)
            return 2.0 * out0 * k, int(k), int(n), 1
    if op in SPARSE_CONV_WEIGHT_SLOT:
        w = shapes.get(node.input[SPARSE_CONV_WEIGHT_SLOT[op]]) or []
        if len(w) == 5 and all(isinstance(d, int) for d in w):
            kvol = w[1] * w[2] * w[3]
            sites = _size((shapes.get(node.output[0]) or [0])[:1], dims)
            pairs = sites * max(1.0, kvol * SPARSE_NEIGHBOR_FRACTION)
            return 2.0 * pairs * w[0] * w[4], w[4], w[0], kvol
    if op == "BEVPool" and len(node.input) > 2:
        points = _size(shapes.get(node.input[2]), dims)
        feat = shapes.get(node.input[1]) or [0]
        channels = feat[-1] if isinstance(feat[-1], int) else 0
        return 2.0 * points * channels, 0, channels, 1
    return float(out0), 0, 0, 1


def observe_dynamic_dims(model: Any, feeds_list: Sequence[Mapping[str, np.ndarray]]) -> dict[str, int]:
    """Median size of every symbolic leading dim over ``feeds_list``, measured by running the
    model in ONNX Runtime (CPU) with the tensors that carry those dims as extra outputs.

    The model must run in ORT (custom ops with their FunctionProto bodies attached).
    """
    import onnx
    import onnxruntime as ort

    shapes = _value_shapes(model)
    probe: dict[str, str] = {}  # symbol -> a tensor whose leading dim is that symbol
    outputs = {o.name for o in model.graph.output}
    for name, shape in shapes.items():
        if shape and isinstance(shape[0], str) and shape[0] != "?" and shape[0] not in probe:
            probe[shape[0]] = name
    extra = onnx.ModelProto.FromString(model.SerializeToString())
    for tensor in probe.values():
        if tensor not in outputs and tensor not in {i.name for i in model.graph.input}:
            extra.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(extra.SerializeToString(), options, providers=["CPUExecutionProvider"])
    wanted = [t for t in probe.values() if t not in {i.name for i in model.graph.input}]
    seen: dict[str, list[int]] = {s: [] for s in probe}
    input_names = [i.name for i in session.get_inputs()]
    for feeds in feeds_list:
        values = {}
        if wanted:  # run([]) would return every output
            values = dict(zip(wanted, session.run(wanted, {n: feeds[n] for n in input_names}), strict=True))
        for symbol, tensor in probe.items():
            array = values.get(tensor, feeds.get(tensor))
            if array is not None and np.ndim(array) > 0:
                seen[symbol].append(int(np.shape(array)[0]))
    # The upper median: an observed size (like the optimization profile's opt shape).
    return {s: sorted(v)[len(v) // 2] for s, v in seen.items() if v}
