"""ONNX schema of ``sparsefuse::Voxelize`` (opset 1). Semantics: reference.py."""

from __future__ import annotations

from onnx import TensorProto
from onnx.defs import OpSchema

from sparsefuse.plugins.onnx_helpers import INT32, AttrSpec, OpSpec, OutputType, ShapeContext, register

OP_TYPE = "Voxelize"


def _output_types(ctx: ShapeContext) -> list[OutputType]:
    """[V,F], [V,4] int32, [] int32 with V data-dependent."""
    return [
        (ctx.elem("points"), [None, ctx.dim("points", 1)]),
        (TensorProto.INT32, [None, 4]),
        (TensorProto.INT32, []),
    ]


SPEC = OpSpec(
    op_type=OP_TYPE,
    doc=(
        "points[P,F] (x, y, z, ...) -> mean voxel features [V,F], voxel coords [V,4] int32 (b=0, z, y, x) "
        "ordered by linear key, num_voxels [] int32 = V <= max_voxels. Index = floor((p - min) / size) in "
        "float32; points outside the grid are dropped."
    ),
    inputs=[("points", "T")],
    outputs=[("voxel_features", "T"), ("voxel_coords", INT32), ("num_voxels", INT32)],
    attributes=[
        AttrSpec("point_range", "FLOATS", "[xmin, ymin, zmin, xmax, ymax, zmax] in metres"),
        AttrSpec("voxel_size", "FLOATS", "[vx, vy, vz] in metres"),
        AttrSpec("max_voxels", "INT", "keep the first max_voxels voxels in linear-key order"),
        AttrSpec("plugin_namespace", "STRING", "TensorRT plugin namespace (the tensorrt lowering)", ""),
    ],
    infer=_output_types,
)


def register_schema() -> OpSchema:
    """Register the schema with onnx.defs (idempotent)."""
    return register(SPEC)
