"""ONNX schema of ``sparsefuse::Voxelize`` (opset 1). Semantics: reference.py."""

from __future__ import annotations

from onnx import TensorProto
from onnx.defs import OpSchema

from sparsefuse.plugins.onnx_helpers import INT32, AttrSpec, OpSpec, OutputType, ShapeContext, register

OP_TYPE = "Voxelize"


def _output_types(ctx: ShapeContext) -> list[OutputType]:
    """[V,F] (reduce "mean") or [V,P,F] ("none"), [V,4] int32, [] int32, [V] int32; V data-dependent."""
    features: list = [None, ctx.dim("points", 1)]
    reduce = ctx.attr("reduce")
    if (reduce.decode() if isinstance(reduce, bytes) else reduce) == "none":
        features.insert(1, int(ctx.attr("max_points_per_voxel")))
    return [
        (ctx.elem("points"), features),
        (TensorProto.INT32, [None, 4]),
        (TensorProto.INT32, []),
        (TensorProto.INT32, [None]),
    ]


SPEC = OpSpec(
    op_type=OP_TYPE,
    doc=(
        "points[P,F] (x, y, z, ...) -> voxel features: mean [V,F] (reduce=\"mean\") or the first "
        "max_points_per_voxel points zero-padded [V,P,F] (\"none\"), voxel coords [V,4] int32 (b=0, z, y, x) "
        "ordered by linear key (order=\"key\") or first point (\"arrival\"), num_voxels [] int32 = V <= "
        "max_voxels, optional num_points_per_voxel [V] int32. Index = floor((p - min) / size) in float32; "
        "points outside the grid are dropped; max_points_per_voxel > 0 counts only each voxel's first "
        "that many points (input order)."
    ),
    inputs=[("points", "T")],
    outputs=[
        ("voxel_features", "T"),
        ("voxel_coords", INT32),
        ("num_voxels", INT32),
        ("num_points_per_voxel", INT32),
    ],
    optional_inputs=frozenset({"num_points_per_voxel"}),  # OpSpec marks outputs optional by name too
    attributes=[
        AttrSpec("point_range", "FLOATS", "[xmin, ymin, zmin, xmax, ymax, zmax] in metres"),
        AttrSpec("voxel_size", "FLOATS", "[vx, vy, vz] in metres"),
        AttrSpec("max_voxels", "INT", "keep the first max_voxels voxels in the voxel order"),
        AttrSpec("max_points_per_voxel", "INT", "count a voxel's first that many points; 0 = all", 0),
        AttrSpec("reduce", "STRING", '"mean" (features [V,F]) or "none" (point lists [V,P,F])', "mean"),
        AttrSpec("order", "STRING", '"key" (linear key) or "arrival" (first point in input order)', "key"),
        AttrSpec("plugin_namespace", "STRING", "TensorRT plugin namespace (the tensorrt lowering)", ""),
    ],
    infer=_output_types,
)


def register_schema() -> OpSchema:
    """Register the schema with onnx.defs (idempotent)."""
    return register(SPEC)
