"""ONNX schema of ``sparsefuse::BEVPool`` (opset 1, BEVPoolv2 interface). Semantics: reference.py."""

from __future__ import annotations

from onnx.defs import OpSchema

from sparsefuse.plugins.onnx_helpers import INT32, AttrSpec, OpSpec, OutputType, ShapeContext, register

OP_TYPE = "BEVPool"


def _output_types(ctx: ShapeContext) -> list[OutputType]:
    """[B, C, Y, X]."""
    batch, y_size, x_size = (int(v) for v in ctx.attr("bev_shape"))
    return [(ctx.elem("feat"), [batch, ctx.dim("feat", -1), y_size, x_size])]


SPEC = OpSpec(
    op_type=OP_TYPE,
    doc=(
        "depth[Ncam,D,H,W], feat[Ncam,H,W,C], ranks_depth/ranks_feat/ranks_bev[P] int32 (sorted by "
        "ranks_bev), interval_starts/interval_lengths[I] int32 -> bev[B,C,Y,X]: bev[b,c,y,x] = sum of "
        "depth.flat[ranks_depth[p]] * feat[..., c].flat[ranks_feat[p]] over p with "
        "ranks_bev[p] = (b*Y + y)*X + x."
    ),
    inputs=[
        ("depth", "T"),
        ("feat", "T"),
        ("ranks_depth", INT32),
        ("ranks_feat", INT32),
        ("ranks_bev", INT32),
        ("interval_starts", INT32),
        ("interval_lengths", INT32),
    ],
    outputs=[("bev", "T")],
    attributes=[
        AttrSpec("bev_shape", "INTS", "(B, Y, X)"),
        AttrSpec("plugin_namespace", "STRING", "TensorRT plugin namespace (the tensorrt lowering)", ""),
    ],
    infer=_output_types,
)


def register_schema() -> OpSchema:
    """Register the schema with onnx.defs (idempotent)."""
    return register(SPEC)
