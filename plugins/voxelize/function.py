"""``sparsefuse::Voxelize`` as an ONNX FunctionProto in standard ops (slow, exact).

Bins in float32 with a true Div like the reference, drops points outside the grid, orders
voxels with Unique(sorted=1) over the linear key, keeps the first max_voxels and averages
features: points sorted by voxel (TopK), float64 prefix sums per voxel / counts. Deterministic: no
ScatterND(reduction="add"), whose ORT CPU kernel races on duplicate indices. Empty inputs give V = 0.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto

from sparsefuse.plugins.onnx_helpers import MIN_BODY_OPSET, FunctionBuilder
from sparsefuse.plugins.voxelize.schema import SPEC


def function_proto(opset: int = MIN_BODY_OPSET) -> onnx.FunctionProto:
    """The FunctionProto ``sparsefuse::Voxelize`` with its body in the standard domain at ``opset``."""
    fb = FunctionBuilder(SPEC)
    point_range, voxel_size = fb.attr("point_range"), fb.attr("voxel_size")
    lo = fb.slice(point_range, [0], [3], [0])
    hi = fb.slice(point_range, [3], [6], [0])
    grid_f = fb.op("Round", fb.op("Div", fb.op("Sub", hi, lo), voxel_size))  # (X, Y, Z) as float

    xyz = fb.op("Cast", fb.slice("points", [0], [3], [1]), to=TensorProto.FLOAT)
    index_f = fb.op("Floor", fb.op("Div", fb.op("Sub", xyz, lo), voxel_size))  # [P,3] (x, y, z)
    # Compare in float: floor() is integral, and NaN / huge values fail the test instead of
    # going through an out-of-range float->int cast.
    ok = fb.op(
        "And",
        fb.op("GreaterOrEqual", index_f, fb.const(0.0, TensorProto.FLOAT)),
        fb.op("Less", index_f, grid_f),
    )
    cols = [fb.squeeze(fb.slice(ok, [i], [i + 1], [1]), [1]) for i in range(3)]
    inside = fb.op("And", fb.op("And", cols[0], cols[1]), cols[2])  # [P]
    index = fb.op("Cast", fb.op("Compress", index_f, inside, axis=0), to=TensorProto.INT64)  # [Q,3]
    feats = fb.op("Compress", "points", inside, axis=0)  # [Q,F]

    grid = fb.op("Cast", grid_f, to=TensorProto.INT64)
    size_x, size_y, size_z = (fb.slice(grid, [i], [i + 1], [0]) for i in range(3))
    ix, iy, iz = (fb.squeeze(fb.slice(index, [i], [i + 1], [1]), [1]) for i in range(3))
    key = fb.op("Add", fb.op("Mul", fb.op("Add", fb.op("Mul", iz, size_y), iy), size_x), ix)  # [Q]
    uniq, _, inverse, counts = fb.op("Unique", key, sorted=1, n_out=4)

    n_unique = fb.dim(uniq, 0)
    num = fb.op(
        "Max", fb.op("Min", n_unique, fb.op("Unsqueeze", fb.attr("max_voxels"), fb.const([0]))), fb.const([0])
    )  # [1]
    _, order = fb.op("TopK", inverse, fb.dim(inverse, 0), largest=0, sorted=1, n_out=2)  # points by voxel
    ends = fb.op("CumSum", counts, fb.const(0))  # [U] voxel u's points are sorted rows [end - count, end)
    sums = fb.segment_sums(fb.op("Gather", feats, order, axis=0), fb.op("Sub", ends, counts), ends)  # [U,F]
    start = fb.const([0])
    sums = fb.op("Slice", sums, start, num, start)
    counts = fb.op("Cast", fb.op("Slice", counts, start, num, start), to=TensorProto.DOUBLE)
    mean = fb.op("CastLike", fb.op("Div", sums, fb.unsqueeze(counts, [1])), "points")

    keys = fb.op("Slice", uniq, start, num, start)
    x = fb.op("Mod", keys, size_x)
    rest = fb.op("Div", keys, size_x)
    y = fb.op("Mod", rest, size_y)
    z = fb.op("Div", rest, size_y)
    batch = fb.op("Mul", z, fb.const(0))
    coords = fb.op("Concat", *[fb.unsqueeze(c, [1]) for c in (batch, z, y, x)], axis=1)
    return fb.build(
        [
            mean,
            fb.op("Cast", coords, to=TensorProto.INT32),
            fb.op("Cast", fb.squeeze(num, [0]), to=TensorProto.INT32),
        ],
        opset,
    )
