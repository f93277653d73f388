"""``sparsefuse::Voxelize`` as an ONNX FunctionProto in standard ops (slow, exact).

Bins in float32 with a true Div like the reference, drops points outside the grid, orders
voxels with Unique(sorted=1) over the linear key (key order; "arrival" reorders them by the first
point Unique reports, with TopK), keeps the first max_voxels; sorts the points by voxel with TopK
(ties by input index, so each voxel's points stay in input order and its first
max_points_per_voxel rows are the counted ones); "mean": float64 prefix sums per voxel / counts;
"none": Gather of each voxel's rows into [V,P,F] with zeros past the count. Deterministic: no
Scatter at all (ORT's CPU ScatterND(reduction="add") races on duplicate indices). Empty inputs
give V = 0.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx
from onnx import TensorProto

from sparsefuse.plugins.common import DOMAIN
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
    uniq, inverse, counts = _voxels_in_order(fb, key)

    n_unique = fb.dim(uniq, 0)
    num = fb.op(
        "Max", fb.op("Min", n_unique, fb.op("Unsqueeze", fb.attr("max_voxels"), fb.const([0]))), fb.const([0])
    )  # [1]
    # Points by voxel, input order within a voxel (TopK breaks ties by the lower index).
    _, order = fb.op("TopK", inverse, fb.dim(inverse, 0), largest=0, sorted=1, n_out=2)
    sorted_feats = fb.op("Gather", feats, order, axis=0)  # [Q,F]; voxel u's rows [start, start + count)
    starts = fb.op("Sub", fb.op("CumSum", counts, fb.const(0)), counts)  # [U]
    max_points = fb.attr("max_points_per_voxel")
    limit = fb.op("Where", fb.op("Greater", max_points, fb.const(0)), max_points, fb.dim(inverse, 0))
    kept = fb.op("Min", counts, limit)  # [U] counted points: the first max_points_per_voxel of each voxel
    start = fb.const([0])
    starts = fb.op("Slice", starts, start, num, start)  # [V]
    kept = fb.op("Slice", kept, start, num, start)

    sums = fb.segment_sums(sorted_feats, starts, fb.op("Add", starts, kept))  # [V,F] float64
    divisor = fb.unsqueeze(fb.op("Cast", kept, to=TensorProto.DOUBLE), [1])
    mean = fb.op("CastLike", fb.op("Div", sums, divisor), "points")
    padded = _point_lists(fb, sorted_feats, starts, kept, max_points)  # [V,P,F]
    features = _select_by_rank(fb, _string_is(fb, "reduce", "none"), padded, mean)

    keys = fb.op("Slice", uniq, start, num, start)
    x = fb.op("Mod", keys, size_x)
    rest = fb.op("Div", keys, size_x)
    y = fb.op("Mod", rest, size_y)
    z = fb.op("Div", rest, size_y)
    batch = fb.op("Mul", z, fb.const(0))
    coords = fb.op("Concat", *[fb.unsqueeze(c, [1]) for c in (batch, z, y, x)], axis=1)
    return fb.build(
        [
            features,
            fb.op("Cast", coords, to=TensorProto.INT32),
            fb.op("Cast", fb.squeeze(num, [0]), to=TensorProto.INT32),
            fb.op("Cast", kept, to=TensorProto.INT32),
        ],
        opset,
    )


def _voxels_in_order(fb: FunctionBuilder, key: str) -> tuple[str, str, str]:
    """(unique keys [U], voxel id per point [Q], points per voxel [U]) in the ``order`` attribute's order.

    Unique(sorted=1) gives key order and each voxel's first point; "arrival" reorders the voxels by
    that first point (TopK over U, cheaper than a second Unique over the Q points). A TopK of the
    permutation is its inverse, which renumbers the points' voxel ids.
    """
    uniq, first, inverse, counts = fb.op("Unique", key, sorted=1, n_out=4)
    n_unique = fb.dim(uniq, 0)
    position = fb.op("Range", fb.const(0), fb.squeeze(n_unique, [0]), fb.const(1))  # [U] key order
    rank = fb.op("Where", _string_is(fb, "order", "arrival"), first, position)
    _, perm = fb.op("TopK", rank, n_unique, largest=0, sorted=1, n_out=2)  # new voxel -> key-order voxel
    _, renumber = fb.op("TopK", perm, n_unique, largest=0, sorted=1, n_out=2)  # key-order voxel -> new
    return (
        fb.op("Gather", uniq, perm, axis=0),
        fb.op("Gather", renumber, inverse, axis=0),
        fb.op("Gather", counts, perm, axis=0),
    )


def _string_is(fb: FunctionBuilder, attribute: str, value: str) -> str:
    """0-D bool: the STRING attribute equals ``value`` (Unique of both has one element; string Equal
    needs opset 19)."""
    names = fb.op("Concat", fb.unsqueeze(fb.attr(attribute), [0]), fb.const_string(value), axis=0)
    return fb.op("Equal", fb.op("Size", fb.op("Unique", names)), fb.const(1))


def _point_lists(fb: FunctionBuilder, sorted_feats: str, starts: str, kept: str, max_points: str) -> str:
    """[V,P,F]: slot s of voxel v is sorted row starts[v] + s where s < kept[v], else zero. Gathers only."""
    slots = fb.op("Range", fb.const(0), max_points, fb.const(1))  # [P]
    rows = fb.op("Add", fb.unsqueeze(starts, [1]), fb.unsqueeze(slots, [0]))  # [V,P]
    used = fb.op("Less", fb.unsqueeze(slots, [0]), fb.unsqueeze(kept, [1]))  # [V,P]
    gathered = fb.op("Gather", sorted_feats, fb.op("Where", used, rows, fb.const(0)), axis=0)  # [V,P,F]
    zero = fb.op("CastLike", fb.const(0.0, TensorProto.FLOAT), sorted_feats)
    return fb.op("Where", fb.unsqueeze(used, [2]), gathered, zero)


def _select_by_rank(fb: FunctionBuilder, first: str, a: str, b: str) -> str:
    """``a`` where the 0-D bool ``first`` holds, else ``b``; the two may differ in rank (flatten both,
    keep one by slicing the other to nothing, reshape to the kept one's shape)."""
    big, none = fb.const([2**62]), fb.const([0])
    end_a = fb.op("Where", first, big, none)
    end_b = fb.op("Where", first, none, big)
    start = fb.const([0])
    flat = fb.op(
        "Concat",
        fb.op("Slice", fb.op("Reshape", a, fb.const([-1])), start, end_a),
        fb.op("Slice", fb.op("Reshape", b, fb.const([-1])), start, end_b),
        axis=0,
    )
    shape_a = fb.op("Slice", fb.op("Shape", a), start, end_a)
    shape = fb.op("Concat", shape_a, fb.op("Slice", fb.op("Shape", b), start, end_b), axis=0)
    return fb.op("Reshape", flat, shape)


def list_num_points(nodes: Iterable[onnx.NodeProto]) -> None:
    """In place: every Voxelize node lists the body's optional fourth output (num_points_per_voxel).

    ONNX Runtime requires a node to list every output of the function it calls; a hand-built node
    (or one from an older export) may have three.
    """
    for node in nodes:
        if node.domain == DOMAIN and node.op_type == SPEC.op_type and len(node.output) == 3:
            node.output.append(f"{node.output[0] or node.name}__num_points_per_voxel")
