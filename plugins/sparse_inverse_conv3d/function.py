"""``sparsefuse::SparseInverseConv3d`` as an ONNX FunctionProto in standard ops (slow, exact).

Vectorized over all Kt = kz*ky*kx kernel offsets, like the SparseConv3d body (whose helpers it uses):
1. for fine site x (row of out_coords) and offset k, the coarse site o = (x + p - k*d)/s, valid when
   exactly divisible and inside the coarse grid (the paired conv's output grid);
2. o is looked up among the coarse ``coords`` (sparse_conv3d.function.lookup_rows: a dense table of
   the coarse grid while small, else one sort; exact either way);
3. gather [M, Kt, Cin] with a zero row for misses, one Gemm with weight [Cout, Kt*Cin] and the
   optional bias, then the activation. Output rows = out_coords rows.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto

from sparsefuse.plugins.onnx_helpers import MIN_BODY_OPSET, FunctionBuilder
from sparsefuse.plugins.sparse_conv3d.function import (
    TABLE_MAX_CELLS,
    _linear_key,
    exact_quotient,
    gather_gemm,
    lookup_rows,
    regular_out_shape,
    scaled_offsets,
)
from sparsefuse.plugins.sparse_inverse_conv3d.schema import SPEC

I64 = TensorProto.INT64


def function_proto(opset: int = MIN_BODY_OPSET, table_max_cells: int = TABLE_MAX_CELLS) -> onnx.FunctionProto:
    """The FunctionProto ``sparsefuse::SparseInverseConv3d``, body in the standard domain at ``opset``;
    ``table_max_cells`` as for SparseConv3d (the table spans the coarse grid)."""
    fb = FunctionBuilder(SPEC)
    grid, ksize = fb.attr("spatial_shape"), fb.attr("kernel_size")
    stride, pad, dil = fb.attr("stride"), fb.attr("padding"), fb.attr("dilation")
    off_d, n_offsets = scaled_offsets(fb, ksize, dil)
    coarse = regular_out_shape(fb, grid, ksize, stride, pad, dil)
    key_shape = fb.op("Max", coarse, fb.const(1))  # an empty grid has no sites; keep divisors >= 1

    coords = fb.op("Cast", "coords", to=I64)
    batch = fb.op("Reshape", fb.slice(coords, [0], [1], [1]), fb.const([-1]))
    keys = _linear_key(fb, batch, fb.slice(coords, [1], [4], [1]), key_shape)  # [N]
    fine = fb.op("Cast", "out_coords", to=I64)
    num = fb.op(
        "Sub", fb.unsqueeze(fb.op("Add", fb.slice(fine, [1], [4], [1]), pad), [1]), fb.unsqueeze(off_d, [0])
    )  # [M,Kt,3] = x + p - k*d
    site, valid = exact_quotient(fb, num, stride, coarse)
    query_keys = _linear_key(fb, fb.slice(fine, [0], [1], [1]), site, key_shape)  # [M,Kt]
    nbr = lookup_rows(fb, keys, batch, key_shape, query_keys, valid, table_max_cells)
    return fb.build([gather_gemm(fb, nbr, n_offsets)], opset)
