"""``sparsefuse::ScatterDense`` as an ONNX FunctionProto: ScatterND into zeros [B,Z,Y,X,C], then
Transpose/Reshape to [B, C*Z, Y, X] (channel c*Z + z)."""

from __future__ import annotations

import onnx
from onnx import TensorProto

from sparsefuse.plugins.onnx_helpers import MIN_BODY_OPSET, FunctionBuilder
from sparsefuse.plugins.scatter_dense.schema import SPEC


def function_proto(opset: int = MIN_BODY_OPSET) -> onnx.FunctionProto:
    """The FunctionProto ``sparsefuse::ScatterDense`` with its body in the standard domain at ``opset``."""
    fb = FunctionBuilder(SPEC)
    grid = fb.attr("spatial_shape")  # (Z, Y, X)
    batch = fb.unsqueeze(fb.attr("batch_size"), [0])
    channels = fb.dim("features", 1)
    dense = fb.zeros_like_type(fb.op("Concat", batch, grid, channels, axis=0), "features")
    dense = fb.op("ScatterND", dense, fb.op("Cast", "coords", to=TensorProto.INT64), "features")
    dense = fb.op("Transpose", dense, perm=[0, 4, 1, 2, 3])  # [B,C,Z,Y,X]
    folded = fb.op("Mul", channels, fb.slice(grid, [0], [1], [0]))
    shape = fb.op("Concat", batch, folded, fb.slice(grid, [1], [3], [0]), axis=0)
    return fb.build([fb.op("Reshape", dense, shape)], opset)
