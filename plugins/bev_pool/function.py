"""``sparsefuse::BEVPool`` as an ONNX FunctionProto: Gather depth and features per frustum point,
Mul, sum each interval (a run of points of one BEV cell; ranks are sorted by cell) with a float64
prefix sum, ScatterND (unique cells, no reduction) into [B*Y*X, C], Reshape/Transpose to [B,C,Y,X].

Deterministic: no ScatterND(reduction="add"), whose ORT CPU kernel races on duplicate indices.
"""

from __future__ import annotations

import onnx

from sparsefuse.plugins.bev_pool.schema import SPEC
from sparsefuse.plugins.onnx_helpers import MIN_BODY_OPSET, FunctionBuilder


def function_proto(opset: int = MIN_BODY_OPSET) -> onnx.FunctionProto:
    """The FunctionProto ``sparsefuse::BEVPool`` with its body in the standard domain at ``opset``."""
    fb = FunctionBuilder(SPEC)
    bev_shape = fb.attr("bev_shape")  # (B, Y, X)
    channels = fb.dim("feat", -1)
    weights = fb.op("Gather", fb.op("Reshape", "depth", fb.const([-1])), "ranks_depth", axis=0)  # [P]
    rows = fb.op("Reshape", "feat", fb.op("Concat", fb.const([-1]), channels, axis=0))  # [Ncam*H*W, C]
    values = fb.op("Gather", rows, "ranks_feat", axis=0)  # [P,C]
    contrib = fb.op("Mul", fb.unsqueeze(fb.op("CastLike", weights, "feat"), [1]), values)
    starts = fb.op("Cast", "interval_starts", to=onnx.TensorProto.INT64)  # [I]
    ends = fb.op("Add", starts, fb.op("Cast", "interval_lengths", to=onnx.TensorProto.INT64))
    sums = fb.op("Cast", fb.segment_sums(contrib, starts, ends), to=onnx.TensorProto.FLOAT)  # [I, C]
    cells = fb.op("ReduceProd", bev_shape, keepdims=1)
    bev = fb.op("ConstantOfShape", fb.op("Concat", cells, channels, axis=0))  # float32 zeros
    cell_of = fb.op("Gather", fb.op("Cast", "ranks_bev", to=onnx.TensorProto.INT64), starts, axis=0)
    bev = fb.op("CastLike", fb.op("ScatterND", bev, fb.unsqueeze(cell_of, [1]), sums), "feat")
    bev = fb.op("Reshape", bev, fb.op("Concat", bev_shape, channels, axis=0))  # [B,Y,X,C]
    return fb.build([fb.op("Transpose", bev, perm=[0, 3, 1, 2])], opset)
