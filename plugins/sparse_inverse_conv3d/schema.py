"""ONNX schema of ``sparsefuse::SparseInverseConv3d`` (opset 1). Semantics: reference.py (spconv 2.x)."""

from __future__ import annotations

from onnx.defs import OpSchema

from sparsefuse.plugins.onnx_helpers import INT32, AttrSpec, OpSpec, OutputType, ShapeContext, register

OP_TYPE = "SparseInverseConv3d"


def _output_types(ctx: ShapeContext) -> list[OutputType]:
    """[M,Cout] with M = out_coords' rows (static with respect to the inputs)."""
    return [(ctx.elem("features"), [ctx.dim("out_coords", 0), ctx.dim("weight", 0)])]


SPEC = OpSpec(
    op_type=OP_TYPE,
    doc=(
        "features[N,Cin] at coords[N,4] int32 (coarse sites b, z, y, x), out_coords[M,4] int32 (fine sites), "
        "weight[Cout,kz,ky,kx,Cin], bias[Cout]? -> features[M,Cout] at out_coords (same rows, same order). "
        "The inverse of the strided SparseConv3d with input grid spatial_shape and input sites out_coords: "
        "out[x] += W[k] in[o] for o = (x + padding - k*dilation)/stride exactly, o an active coarse site."
    ),
    inputs=[("features", "T"), ("coords", INT32), ("out_coords", INT32), ("weight", "T"), ("bias", "T")],
    outputs=[("out_features", "T")],
    attributes=[
        AttrSpec("spatial_shape", "INTS", "fine grid (Z, Y, X): the paired strided conv's input grid"),
        AttrSpec("kernel_size", "INTS", "(kz, ky, kx)"),
        AttrSpec("stride", "INTS", "(sz, sy, sx) of the paired conv", [1, 1, 1]),
        AttrSpec("padding", "INTS", "(pz, py, px) of the paired conv", [0, 0, 0]),
        AttrSpec("dilation", "INTS", "(dz, dy, dx)", [1, 1, 1]),
        AttrSpec("activation", "STRING", '"none" or "relu", applied after the bias', "none"),
        AttrSpec("plugin_namespace", "STRING", "TensorRT plugin namespace (the tensorrt lowering)", ""),
    ],
    optional_inputs=frozenset({"bias"}),
    infer=_output_types,
)


def register_schema() -> OpSchema:
    """Register the schema with onnx.defs (idempotent)."""
    return register(SPEC)
