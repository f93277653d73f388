"""ONNX schema of ``sparsefuse::SparseConv3d`` (opset 1). Semantics: reference.py (spconv 2.x)."""

from __future__ import annotations

from onnx import TensorProto
from onnx.defs import OpSchema

from sparsefuse.plugins.onnx_helpers import INT32, AttrSpec, OpSpec, OutputType, ShapeContext, register

OP_TYPE = "SparseConv3d"
NUM_OUT = "num_out"


def _output_types(ctx: ShapeContext) -> list[OutputType]:
    """[M,Cout], [M,4] int32, num_out [] int32; M = N for a submanifold conv, data-dependent otherwise."""
    rows = ctx.dim("features", 0) if ctx.attr("subm") else None
    return [(ctx.elem("features"), [rows, ctx.dim("weight", 0)]), (TensorProto.INT32, [rows, 4]),
            (TensorProto.INT32, [])]


SPEC = OpSpec(
    op_type=OP_TYPE,
    doc=(
        "features[N,Cin], coords[N,4] int32 (b, z, y, x), weight[Cout,kz,ky,kx,Cin], bias[Cout]? -> "
        "features[M,Cout], coords[M,4] int32, num_out[] int32 = M (optional). subm=1: submanifold "
        "(M=N, same coords, stride/padding ignored); subm=0: regular conv, output sites ordered by "
        "linear key over the output grid."
    ),
    inputs=[("features", "T"), ("coords", INT32), ("weight", "T"), ("bias", "T")],
    # num_out [] int32 = M, optional: the TensorRT plugin of a strided conv (subm=0) declares this
    # size tensor (plugin.cpp) and the ONNX parser requires node outputs == plugin outputs, so the
    # tensorrt lowering lists it on those nodes. The function body always produces it (ONNX Runtime
    # needs a node to list every output of its function: passes/lower.py fills it in).
    outputs=[("out_features", "T"), ("out_coords", INT32), (NUM_OUT, INT32)],
    attributes=[
        AttrSpec("spatial_shape", "INTS", "input grid (Z, Y, X)"),
        AttrSpec("kernel_size", "INTS", "(kz, ky, kx)"),
        AttrSpec("stride", "INTS", "(sz, sy, sx); ignored when subm=1", [1, 1, 1]),
        AttrSpec("padding", "INTS", "(pz, py, px); ignored when subm=1", [0, 0, 0]),
        AttrSpec("dilation", "INTS", "(dz, dy, dx)", [1, 1, 1]),
        AttrSpec("subm", "INT", "1: submanifold conv, 0: regular conv", 0),
        AttrSpec("activation", "STRING", '"none" or "relu", applied after the bias', "none"),
        AttrSpec("plugin_namespace", "STRING", "TensorRT plugin namespace (the tensorrt lowering)", ""),
    ],
    optional_inputs=frozenset({"bias", NUM_OUT}),  # OpSpec marks outputs optional by name too
    infer=_output_types,
)


def register_schema() -> OpSchema:
    """Register the schema with onnx.defs (idempotent)."""
    return register(SPEC)
