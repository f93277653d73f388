"""``sparsefuse::SparseConv3d`` as an ONNX FunctionProto in standard ops (slow, exact).

Attributes cannot change a function body's structure, so the body is vectorized over all
Kt = kz*ky*kx kernel offsets at once:

1. subm=0: the valid candidate output keys o = (x + p - k*d)/s of every input x and offset k are
   sorted once (TopK); their distinct values are the output sites (ordered by linear key over the
   output grid) and each candidate is a kernel-map pair (site, k) <- x, written with one
   ScatterElements (:func:`_strided_map`; no lookup);
2. subm=1: the output sites are the input coords; the input site of (site o, offset k) is
   o + (k - K//2)*d, looked up among the input keys (:func:`lookup_rows`: a dense index table of the
   B*Z*Y*X grid while that has <= TABLE_MAX_CELLS cells, else one sort, exact and in memory
   O(N*Kt) whatever the grid; both in the one body, chosen at run time);
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


def _sorted_runs(fb: FunctionBuilder, values: str) -> tuple[str, str]:
    """(run starts [T] bool, run id [T] int64) of ascending ``values`` [T] (all >= 0): equal values
    share a run; run id = CumSum(starts) - 1."""
    previous = fb.op("Concat", fb.const([-1]), fb.slice(values, [0], [-1], [0]), axis=0)
    start = fb.op("Not", fb.op("Equal", values, previous))
    return start, fb.op("Sub", fb.op("CumSum", fb.op("Cast", start, to=I64), fb.const(0)), fb.const(1))


def exact_quotient(fb: FunctionBuilder, num: str, stride: str, bound: str) -> tuple[str, str]:
    """(num / stride [..., 3] int64, valid [...] bool): valid where, on all three axes, num >= 0, stride
    divides num and the quotient is < bound [3] (the site o of o*s = x + p - k*d on the output grid)."""
    quotient = fb.op("Div", num, stride)
    ok = fb.op(
        "And",
        fb.op(
            "And", fb.op("GreaterOrEqual", num, fb.const(0)),
            fb.op("Equal", fb.op("Mul", quotient, stride), num),
        ),
        fb.op("Less", quotient, bound),
    )
    return quotient, _all_last(fb, ok)


def _strided_map(
    fb: FunctionBuilder, rows: str, pad: str, off_d: str, stride: str, out_shape: str, key_shape: str,
    n_offsets: str, miss: str,
) -> tuple[str, str]:
    """(sites [M,4] int64 sorted by linear key, nbr [M,Kt] int64) of a regular conv over input sites
    ``rows`` [R,4] int64; nbr = input row, or ``miss`` ([1]: the zero row) where no input reaches.

    The map comes from the candidates themselves: one TopK sorts the valid candidate keys
    (o = (x + p - k*d)/s of input x, offset k); run starts give the sites, run ids their rows, and a
    ScatterElements writes input x at (row, k) (one input per (site, offset): unique indices).
    out_shape: the output grid (possibly empty); key_shape: the same clamped to >= 1 for the keys.
    """
    xyz = fb.slice(rows, [1], [4], [1])
    num = fb.op("Sub", fb.op("Add", fb.unsqueeze(xyz, [1]), pad), fb.unsqueeze(off_d, [0]))  # [R,Kt,3]
    out, ok = exact_quotient(fb, num, stride, out_shape)
    flat = fb.const([-1])
    valid = fb.op("Reshape", ok, flat)  # [R*Kt]
    keys = _linear_key(fb, fb.slice(rows, [0], [1], [1]), out, key_shape)  # b [R,1] broadcasts over Kt
    cand = fb.op("Compress", fb.op("Reshape", keys, flat), valid, axis=0)  # [C]
    pair = fb.op("Compress", fb.op("Range", fb.const(0), fb.op("Size", valid), fb.const(1)), valid, axis=0)
    values, order = fb.op("TopK", cand, fb.dim(cand, 0), axis=0, largest=0, sorted=1, n_out=2)
    start, site_row = _sorted_runs(fb, values)
    uniq = fb.op("Compress", values, start, axis=0)  # [M] ascending
    pair = fb.op("Gather", pair, order, axis=0)  # input row * Kt + offset, in sorted order
    kt = fb.unsqueeze(n_offsets, [0])
    slot = fb.op("Add", fb.op("Mul", site_row, kt), fb.op("Mod", pair, kt))
    n_sites = fb.dim(uniq, 0)
    empty = fb.op("Expand", miss, fb.op("Mul", n_sites, kt))
    nbr = fb.op("ScatterElements", empty, slot, fb.op("Div", pair, kt), axis=0)
    rest, parts = uniq, []
    for i in (2, 1, 0):
        size = fb.slice(key_shape, [i], [i + 1], [0])
        parts.append(fb.op("Mod", rest, size))
        rest = fb.op("Div", rest, size)
    cols = [rest, *reversed(parts)]  # b, z, y, x
    sites = fb.op("Concat", *[fb.unsqueeze(c, [1]) for c in cols], axis=1)
    return sites, fb.op("Reshape", nbr, fb.op("Concat", n_sites, kt, axis=0))


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
    start, run = _sorted_runs(fb, fb.op("Div", values, two))
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
    off_d, n_offsets = scaled_offsets(fb, ksize, dil)
    regular_shape = regular_out_shape(fb, grid, ksize, stride, pad, dil)
    # Decoding divides by the output grid: keep it >= 1 even where it is empty (a submanifold conv
    # never uses it, but ORT rejects a constant zero divisor when it builds the Mod kernel).
    key_shape = fb.op("Max", regular_shape, one)

    # Without an If (ORT warns on renaming a branch's outer-scope inputs): the rows of `coords` go
    # either to the submanifold part or to the strided part, and the other part is empty.
    n_in = fb.dim("coords", 0)
    to_subm = fb.op("Expand", subm, n_in)
    kept = fb.op("Compress", coords, to_subm, axis=0)
    rest = fb.op("Compress", coords, fb.op("Not", to_subm), axis=0)
    strided, strided_nbr = _strided_map(
        fb, rest, pad, off_d, stride, regular_shape, key_shape, n_offsets, n_in
    )

    # Submanifold: the input site of (site o, offset k) is o + (k - K//2)*d, looked up among the inputs.
    kept_b = fb.op("Reshape", fb.slice(kept, [0], [1], [1]), fb.const([-1]))
    kept_xyz = fb.slice(kept, [1], [4], [1])
    half = fb.op("Mul", fb.op("Div", ksize, fb.const(2)), dil)
    query = fb.op("Add", fb.unsqueeze(fb.op("Sub", kept_xyz, half), [1]), fb.unsqueeze(off_d, [0]))
    inside = _all_last(
        fb, fb.op("And", fb.op("GreaterOrEqual", query, fb.const(0)), fb.op("Less", query, grid))
    )
    query_keys = _linear_key(fb, fb.unsqueeze(kept_b, [1]), query, grid)
    subm_nbr = lookup_rows(fb, _linear_key(fb, kept_b, kept_xyz, grid), kept_b, grid, query_keys, inside,
                           table_max_cells)
    out_coords = fb.op("Concat", kept, strided, axis=0)  # [M,4] int64
    nbr = fb.op("Concat", subm_nbr, strided_nbr, axis=0)  # [M,Kt]
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
