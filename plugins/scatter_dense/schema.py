"""ONNX schema of ``sparsefuse::ScatterDense`` (opset 1). Semantics: reference.py."""

from __future__ import annotations

from onnx.defs import OpSchema

from sparsefuse.plugins.onnx_helpers import INT32, AttrSpec, OpSpec, OutputType, ShapeContext, register

OP_TYPE = "ScatterDense"


def _output_types(ctx: ShapeContext) -> list[OutputType]:
    """[B, C*Z, Y, X]."""
    z_size, y_size, x_size = (int(v) for v in ctx.attr("spatial_shape"))
    channels = ctx.dim("features", 1)
    folded = channels * z_size if isinstance(channels, int) else None
    return [(ctx.elem("features"), [int(ctx.attr("batch_size")), folded, y_size, x_size])]


SPEC = OpSpec(
    op_type=OP_TYPE,
    doc=(
        "features[N,C], coords[N,4] int32 (b, z, y, x), unique -> dense[B, C*Z, Y, X]; channel c*Z + z "
        "holds feature c of height slice z; empty cells are zero."
    ),
    inputs=[("features", "T"), ("coords", INT32)],
    outputs=[("dense", "T")],
    attributes=[
        AttrSpec("spatial_shape", "INTS", "grid (Z, Y, X)"),
        AttrSpec("batch_size", "INT", "B", 1),
        AttrSpec("plugin_namespace", "STRING", "TensorRT plugin namespace (the tensorrt lowering)", ""),
    ],
    infer=_output_types,
)


def register_schema() -> OpSchema:
    """Register the schema with onnx.defs (idempotent)."""
    return register(SPEC)
