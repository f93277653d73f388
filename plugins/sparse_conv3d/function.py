"""``sparsefuse::SparseConv3d`` as an ONNX FunctionProto in standard ops (slow, exact).

Attributes cannot change a function body's structure, so the body is vectorized over all
Kt = kz*ky*kx kernel offsets at once:

1. output sites: subm=1 -> the input coords; subm=0 -> Unique(sorted) of the valid candidate
   output keys o = (x + p - k*d)/s, i.e. ordered by linear key over the output grid;
2. neighbours: for output o and offset k the input site is o*s' - p' + k*d, with (s', p') =
   (s, p) for a regular conv and (1, (K//2)*d) for a submanifold one; each is looked up among the
   input keys (:func:`lookup_rows`: a dense index table of the B*Z*Y*X grid while that has <=
   TABLE_MAX_CELLS cells, else one sort, exact and in memory O(N + M*Kt) whatever the grid; both in
   the one body, chosen at run time);
3. gather [M, Kt, Cin] with a zero row for misses, then one Gemm with weight [Cout, Kt*Cin]
   (and the optional bias as Gemm's C), then the activation;
4. the optional third output num_out [] int32 = M, which the TensorRT lowering requests on
   strided nodes (the plugin's size tensor).
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx
from onnx import TensorProto

from sparsefuse.plugins.common import DOMAIN
from sparsefuse.plugins.onnx_helpers import MIN_BODY_OPSET, FunctionBuilder
from sparsefuse.plugins.sparse_conv3d.schema import SPEC

I64 = TensorProto.INT64
# Largest B*Z*Y*X grid whose lookups go through a dense int32 index table (64 MiB, per node and run);
# bigger grids (nuScenes: 41x1440x1440 = 85M cells) use the sort. The table is ~2x faster on small grids.
TABLE_MAX_CELLS = 2**24


def _all_last(fb: FunctionBuilder, cond3: str) -> str:
    """AND over the last axis (size 3) of a bool tensor, dropping that axis."""
    parts = [fb.squeeze(fb.slice(cond3, [i], [i + 1], [-1]), [-1]) for i in range(3)]
    return fb.op("And", fb.op("And", parts[0], parts[1]), parts[2])


def _linear_key(fb: FunctionBuilder, b: str, xyz: str, shape: str) -> str:
    """((b*Z + z)*Y + y)*X + x over the last axis of xyz [..., 3]; b broadcasts; shape [3] (Z, Y, X)."""
    key = b
    for i in range(3):
        coord = fb.squeeze(fb.slice(xyz, [i], [i + 1], [-1]), [-1])
        key = fb.op("Add", fb.op("Mul", key, fb.slice(shape, [i], [i + 1], [0])), coord)
    return key


def _strided_sites(
    fb: FunctionBuilder, b: str, xyz: str, pad: str, off_d: str, stride: str, out_shape: str, key_shape: str
) -> str:
    """[M,4] int64 output sites of a regular conv, sorted by linear key (one Unique).

    out_shape: the output grid (possibly empty); key_shape: the same clamped to >= 1 for the keys.
    """
    num = fb.op("Sub", fb.op("Add", fb.unsqueeze(xyz, [1]), pad), fb.unsqueeze(off_d, [0]))  # [N,Kt,3]
    out = fb.op("Div", num, stride)
    ok = fb.op(
        "And",
        fb.op(
            "And", fb.op("GreaterOrEqual", num, fb.const(0)), fb.op("Equal", fb.op("Mul", out, stride), num)
        ),
        fb.op("Less", out, out_shape),
    )
    valid = _all_last(fb, ok)  # [N,Kt]
    keys = _linear_key(fb, b, out, key_shape)  # b [N,1] broadcasts over Kt
    flat = fb.const([-1])
    cand = fb.op("Compress", fb.op("Reshape", keys, flat), fb.op("Reshape", valid, flat), axis=0)
    uniq = fb.op("Unique", cand, sorted=1)
    rest, parts = uniq, []
    for i in (2, 1, 0):
        size = fb.slice(key_shape, [i], [i + 1], [0])
        parts.append(fb.op("Mod", rest, size))
        rest = fb.op("Div", rest, size)
    cols = [rest, *reversed(parts)]  # b, z, y, x
    return fb.op("Concat", *[fb.unsqueeze(c, [1]) for c in cols], axis=1)


def sorted_lookup(fb: FunctionBuilder, keys: str, queries: str) -> str:
    """Row of each query in ``keys`` or -1: keys [N] int64 (unique, >= 0, any order), queries [Q] int64
    (>= 0) -> [Q] int64. Exact, memory O(N + Q) whatever the grid size.

    One sort of the tagged keys 2*key (inputs) and 2*query + 1 (queries) with TopK: equal keys form a
    run whose first element is the input key when there is one. Run id = CumSum(run starts) - 1; the
    original index of each run's first element answers every member of the run (a hit iff < N); a
    ScatterElements through the sort permutation (unique indices, no reduction) restores query order.
    """
    two, one = fb.const(2), fb.const(1)
    tagged = fb.op("Concat", fb.op("Mul", keys, two), fb.op("Add", fb.op("Mul", queries, two), one), axis=0)
    total = fb.dim(tagged, 0)
    values, order = fb.op("TopK", tagged, total, axis=0, largest=0, sorted=1, n_out=2)
    run_key = fb.op("Div", values, two)
    previous = fb.op("Concat", fb.const([-1]), fb.slice(run_key, [0], [-1], [0]), axis=0)
    start = fb.op("Not", fb.op("Equal", run_key, previous))
    run = fb.op("Sub", fb.op("CumSum", fb.op("Cast", start, to=I64), fb.const(0)), one)
    first = fb.op("Gather", fb.op("Compress", order, start, axis=0), run, axis=0)  # [T] original index
    n_keys = fb.dim(keys, 0)
    found = fb.op("Where", fb.op("Less", first, n_keys), first, fb.const(-1))
    restored = fb.op("ScatterElements", fb.op("Mul", tagged, fb.const(0)), order, found, axis=0)
    return fb.op("Slice", restored, n_keys, fb.const([2**62]), fb.const([0]))


def table_lookup(fb: FunctionBuilder, keys: str, queries: str, cells: str) -> str:
    """As :func:`sorted_lookup` through a dense int32 table of ``cells`` ([1] int64) entries built with
    ScatterND (unique keys: collision-free); keys in [0, cells); queries >= cells are absent."""
    table = fb.op("ConstantOfShape", cells, value=onnx.helper.make_tensor("v", TensorProto.INT32, [1], [-1]))
    rows = fb.op("Cast", fb.op("Range", fb.const(0), fb.squeeze(fb.dim(keys, 0), [0]), fb.const(1)),
                 to=TensorProto.INT32)
    table = fb.op("ScatterND", table, fb.unsqueeze(keys, [1]), rows)
    inside = fb.op("Less", queries, cells)
    found = fb.op("Gather", table, fb.op("Where", inside, queries, fb.const(0)), axis=0)
    return fb.op("Where", inside, fb.op("Cast", found, to=I64), fb.const(-1))


def lookup_rows(
    fb: FunctionBuilder, keys: str, batch: str, grid: str, query_keys: str, valid: str, table_max_cells: int
) -> str:
    """Input rows [M,Kt] int64 of ``query_keys`` [M,Kt] among ``keys`` [N] (linear keys over ``grid``
    [3], batch index ``batch`` [N]), or N (the zero row that :func:`gather_gemm` appends) where absent
    or not ``valid`` [M,Kt] bool.

    Both lookups are in the body, without an If: the run-time test (max(batch)+1)*Z*Y*X <=
    table_max_cells sends every key and query to the table or to the sort; the other sees empty tensors.
    """
    n_batch = fb.op("Add", fb.op("ReduceMax", fb.op("Concat", batch, fb.const([0]), axis=0), keepdims=1),
                    fb.const(1))
    cells = fb.op("Mul", n_batch, fb.op("ReduceProd", grid, keepdims=1))  # [1]
    use_table = fb.op("LessOrEqual", cells, fb.const([table_max_cells]))  # [1]
    by_sort = fb.op("Not", use_table)
    queries = fb.op("Reshape", fb.op("Where", valid, query_keys, fb.const(0)), fb.const([-1]))

    def part(x: str, keep: str) -> str:
        return fb.op("Compress", x, fb.op("Expand", keep, fb.dim(x, 0)), axis=0)

    table_cells = fb.op("Where", use_table, cells, fb.const([0]))
    found = fb.op(
        "Concat",
        table_lookup(fb, part(keys, use_table), part(queries, use_table), table_cells),
        sorted_lookup(fb, part(keys, by_sort), part(queries, by_sort)),
        axis=0,
    )  # one of the two parts is empty
    rows = fb.op("Reshape", found, fb.op("Shape", query_keys))
    hit = fb.op("And", valid, fb.op("GreaterOrEqual", rows, fb.const(0)))
    return fb.op("Where", hit, rows, fb.dim(keys, 0))


def scaled_offsets(fb: FunctionBuilder, ksize: str, dil: str) -> tuple[str, str]:
    """(k*d [Kt,3] int64 with k row-major (kx fastest), Kt [] int64)."""
    ky_kx = fb.slice(ksize, [1], [3], [0])
    kx = fb.slice(ksize, [2], [3], [0])
    radix = fb.op("Concat", fb.op("ReduceProd", ky_kx, keepdims=1), kx, fb.const([1]), axis=0)
    n_offsets = fb.op("ReduceProd", ksize, keepdims=0)
    k_index = fb.unsqueeze(fb.op("Range", fb.const(0), n_offsets, fb.const(1)), [1])  # [Kt,1]
    return fb.op("Mul", fb.op("Mod", fb.op("Div", k_index, radix), ksize), dil), n_offsets


def regular_out_shape(fb: FunctionBuilder, grid: str, ksize: str, stride: str, pad: str, dil: str) -> str:
    """[3] int64 output grid of a regular conv: (in + 2p - d(k-1) - 1)/s + 1 (may be <= 0)."""
    one = fb.const(1)
    reach = fb.op("Add", fb.op("Mul", dil, fb.op("Sub", ksize, one)), one)  # d(k-1) + 1
    numerator = fb.op("Sub", fb.op("Add", grid, fb.op("Mul", pad, fb.const(2))), reach)
    return fb.op("Add", fb.op("Div", numerator, stride), one)


def gather_gemm(fb: FunctionBuilder, nbr: str, n_offsets: str) -> str:
    """act(Gemm(features gathered through nbr [M,Kt] (N = zero row), weight) + bias): [M,Cout]."""
    cin = fb.dim("features", 1)
    padded = fb.op(
        "Concat",
        "features",
        fb.zeros_like_type(fb.op("Concat", fb.const([1]), cin, axis=0), "features"),
        axis=0,
    )
    gathered = fb.op("Gather", padded, nbr, axis=0)  # [M,Kt,Cin]
    flat_shape = fb.op("Concat", fb.dim(nbr, 0), fb.op("Mul", fb.unsqueeze(n_offsets, [0]), cin), axis=0)
    gathered = fb.op("Reshape", gathered, flat_shape)
    weight = fb.op("Reshape", "weight", fb.op("Concat", fb.dim("weight", 0), fb.const([-1]), axis=0))
    out = fb.op("Gemm", gathered, weight, "bias", transB=1)
    # activation == "relu", tested with Unique so that the body needs no string Equal (opset 19).
    names = fb.op("Concat", fb.unsqueeze(fb.attr("activation"), [0]), fb.const_string("relu"), axis=0)
    is_relu = fb.op("Equal", fb.op("Size", fb.op("Unique", names)), fb.const(1))
    return fb.op("Where", is_relu, fb.op("Relu", out), out)


def function_proto(opset: int = MIN_BODY_OPSET, table_max_cells: int = TABLE_MAX_CELLS) -> onnx.FunctionProto:
    """The FunctionProto ``sparsefuse::SparseConv3d`` with its body in the standard domain at ``opset``;
    ``table_max_cells``: see :func:`lookup_rows` (tests force either lookup with it)."""
    fb = FunctionBuilder(SPEC)
    grid, ksize = fb.attr("spatial_shape"), fb.attr("kernel_size")
    stride, pad, dil = fb.attr("stride"), fb.attr("padding"), fb.attr("dilation")
    subm = fb.op("Cast", fb.attr("subm"), to=TensorProto.BOOL)
    one = fb.const(1)

    coords = fb.op("Cast", "coords", to=I64)
    b = fb.slice(coords, [0], [1], [1])  # [N,1]
    xyz = fb.slice(coords, [1], [4], [1])  # [N,3]
    off_d, n_offsets = scaled_offsets(fb, ksize, dil)
    regular_shape = regular_out_shape(fb, grid, ksize, stride, pad, dil)
    # Decoding divides by the output grid: keep it >= 1 even where it is empty (a submanifold conv
    # never uses it, but ORT rejects a constant zero divisor when it builds the Mod kernel).
    key_shape = fb.op("Max", regular_shape, one)
    eff_stride = fb.op("Where", subm, fb.const([1, 1, 1]), stride)
    eff_pad = fb.op("Where", subm, fb.op("Mul", fb.op("Div", ksize, fb.const(2)), dil), pad)

    # Output sites without an If (ORT warns on renaming a branch's outer-scope inputs): the rows of
    # `coords` go either to the submanifold part or to the strided candidates, the other part is empty.
    n_in = fb.dim("coords", 0)
    to_subm = fb.op("Expand", subm, n_in)
    kept = fb.op("Compress", coords, to_subm, axis=0)
    rest = fb.op("Compress", coords, fb.op("Not", to_subm), axis=0)
    strided = _strided_sites(
        fb, fb.slice(rest, [0], [1], [1]), fb.slice(rest, [1], [4], [1]), pad, off_d, stride, regular_shape,
        key_shape,
    )
    out_coords = fb.op("Concat", kept, strided, axis=0)  # [M,4] int64
    out_b = fb.slice(out_coords, [0], [1], [1])  # [M,1]
    out_xyz = fb.slice(out_coords, [1], [4], [1])  # [M,3]

    # Input site of (output o, offset k): o*s' - p' + k*d, looked up among the input keys.
    query = fb.op(
        "Add",
        fb.unsqueeze(fb.op("Sub", fb.op("Mul", out_xyz, eff_stride), eff_pad), [1]),
        fb.unsqueeze(off_d, [0]),
    )  # [M,Kt,3]
    inside = _all_last(
        fb, fb.op("And", fb.op("GreaterOrEqual", query, fb.const(0)), fb.op("Less", query, grid))
    )
    b_flat = fb.op("Reshape", b, fb.const([-1]))
    keys = _linear_key(fb, b_flat, xyz, grid)
    nbr = lookup_rows(fb, keys, b_flat, grid, _linear_key(fb, out_b, query, grid), inside, table_max_cells)
    out = gather_gemm(fb, nbr, n_offsets)
    num_out = fb.op("Cast", fb.squeeze(fb.dim(out_coords, 0), [0]), to=TensorProto.INT32)  # TensorRT's size
    return fb.build([out, fb.op("Cast", out_coords, to=TensorProto.INT32), num_out], opset)


def list_num_out(nodes: Iterable[onnx.NodeProto]) -> None:
    """In place: every SparseConv3d node lists the body's optional third output (num_out).

    ONNX Runtime requires a node to list every output of the function it calls, while the torch op
    (hence a freshly built node) and TensorRT's subm=1 plugin have two.
    """
    for node in nodes:
        if node.domain == DOMAIN and node.op_type == SPEC.op_type and len(node.output) == 2:
            node.output.append(f"{node.output[0] or node.name}__num_out")
