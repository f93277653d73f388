"""CUDA kernels against the torch references (docs/tolerances.md, docs/design.md §8 `gpu` tier).

Fresh random inputs on every run (the seed is printed for reproduction), every output and
workspace poisoned before launch, fp32 and fp16 tolerances, edge cases. Needs a CUDA device and
the kernels library (``bash bench/run_gpu_suite.sh`` builds it and runs this file).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

import sparsefuse.plugins  # noqa: F401  (registers the ops)
from sparsefuse.plugins.bev_pool.precompute import precompute_ranks
from sparsefuse.plugins.common import linear_key

pytestmark = pytest.mark.gpu
ops = torch.ops.sparsefuse
TOL = {torch.float32: (1e-4, 1e-5), torch.float16: (1e-2, 1e-3)}  # (relative to max|ref|, absolute)


@pytest.fixture(scope="module")
def sfcuda():
    import sparsefuse.plugins.cuda as module

    module.load()
    module.set_poison(True)
    yield module
    module.set_poison(False)
    module.set_tuning(**{f: getattr(module.SpconvTuning(), f) for f in ("epsilon", "threshold", "algo",
                                                                         "max_grid_cells")})


@pytest.fixture
def gen() -> torch.Generator:
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"seed={seed}")
    return torch.Generator().manual_seed(seed)


def assert_close(actual: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    rel, absolute = TOL[dtype]
    assert actual.shape == ref.shape
    a, r = actual.detach().float().cpu(), ref.detach().float().cpu()
    assert torch.isfinite(a).all(), "non-finite output (a poisoned element was not written?)"
    err = (a - r).abs().max().item() if r.numel() else 0.0
    bound = rel * (r.abs().max().item() if r.numel() else 0.0) + absolute
    assert err <= bound, f"max abs error {err:.3g} > {bound:.3g}"


# ---- BEVPool ------------------------------------------------------------------------------------

def bev_inputs(gen, ncam=2, depth=7, height=5, width=6, channels=80, cells=(1, 9, 11), empty_share=0.3):
    batch, y, x = cells
    cell = torch.randint(0, batch * y * x, (ncam, depth, height, width), generator=gen)
    cell[torch.rand(cell.shape, generator=gen) < empty_share] = -1
    ranks = precompute_ranks(cell.numpy())
    depth_t = torch.rand(ncam, depth, height, width, generator=gen)
    feat = torch.randn(ncam, height, width, channels, generator=gen)
    arrays = (ranks.ranks_depth, ranks.ranks_feat, ranks.ranks_bev, ranks.interval_starts,
              ranks.interval_lengths)
    idx = [torch.from_numpy(np.ascontiguousarray(a)).to(torch.int32) for a in arrays]
    return depth_t, feat, idx, list(cells)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("channels", [80, 64, 6, 3])
def test_bev_pool_matches_reference(sfcuda, gen, dtype, channels):
    depth, feat, idx, shape = bev_inputs(gen, channels=channels)
    depth, feat = depth.to(dtype), feat.to(dtype)
    ref = ops.bev_pool(depth.float(), feat.float(), *idx, shape)
    out = ops.bev_pool(depth.cuda(), feat.cuda(), *[t.cuda() for t in idx], shape)
    assert out.dtype == dtype and out.is_cuda
    assert_close(out, ref, dtype)


def test_bev_pool_without_points_is_zero(sfcuda, gen):
    depth, feat, idx, shape = bev_inputs(gen, empty_share=1.0)
    assert idx[3].numel() == 0
    out = ops.bev_pool(depth.cuda(), feat.cuda(), *[t.cuda() for t in idx], shape)
    assert torch.equal(out.cpu(), torch.zeros_like(out.cpu()))


def test_bev_pool_batched_grid(sfcuda, gen):
    depth, feat, idx, shape = bev_inputs(gen, cells=(2, 4, 5), empty_share=0.0)
    ref = ops.bev_pool(depth, feat, *idx, shape)
    assert_close(ops.bev_pool(depth.cuda(), feat.cuda(), *[t.cuda() for t in idx], shape), ref, torch.float32)


# ---- ScatterDense ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("channels", [16, 5])
def test_scatter_dense_is_an_exact_copy(sfcuda, gen, dtype, channels):
    shape, batch = [3, 8, 9], 2
    keys = torch.randperm(batch * 3 * 8 * 9, generator=gen)[:40]
    coords = torch.stack([keys // 216, keys // 72 % 3, keys // 9 % 8, keys % 9], 1).to(torch.int32)
    feats = torch.randn(40, channels, generator=gen).to(dtype)
    ref = ops.scatter_dense(feats, coords, shape, batch)
    out = ops.scatter_dense(feats.cuda(), coords.cuda(), shape, batch)
    assert torch.equal(out.cpu(), ref)


def test_scatter_dense_empty(sfcuda):
    coords = torch.zeros(0, 4, dtype=torch.int32).cuda()
    out = ops.scatter_dense(torch.zeros(0, 4).cuda(), coords, [2, 3, 4], 1)
    assert out.shape == (1, 8, 3, 4) and torch.equal(out.cpu(), torch.zeros(1, 8, 3, 4))


# ---- Voxelize -------------------------------------------------------------------------------------

RANGE = [-4.0, -4.0, -1.0, 4.0, 4.0, 1.0]
SIZE = [0.5, 0.5, 0.25]


def voxel_points(gen, n, features=4, spread=5.0):
    pts = (torch.rand(n, features, generator=gen) * 2 - 1) * spread
    pts[:, 2] /= 3.0
    return pts


def check_voxelize(points, max_voxels, size=SIZE, point_range=RANGE):
    ref = ops.voxelize(points, point_range, size, max_voxels)
    out = ops.voxelize(points.cuda(), point_range, size, max_voxels)
    assert int(out[2]) == int(ref[2])
    assert torch.equal(out[1].cpu(), ref[1])
    assert_close(out[0], ref[0], torch.float32)
    return out


def test_voxelize_matches_reference(sfcuda, gen):
    check_voxelize(voxel_points(gen, 5000), 100000)


def test_voxelize_max_voxels_keeps_first_by_key(sfcuda, gen):
    out = check_voxelize(voxel_points(gen, 3000), 37)
    assert int(out[2]) == 37


def test_voxelize_duplicates_and_boundaries(sfcuda, gen):
    # Points exactly on voxel faces stress the float32 division; duplicates stress the mean.
    grid = torch.arange(-8, 9, dtype=torch.float32) * 0.5
    zs = torch.arange(-4, 5) * 0.25
    faces = torch.stack(torch.meshgrid(grid, grid, zs, indexing="ij"), -1).reshape(-1, 3)
    faces = torch.cat([faces, torch.rand(faces.shape[0], 2, generator=gen)], 1)
    dup = voxel_points(gen, 50, features=5)
    points = torch.cat([faces, dup, dup, dup[:7]])[torch.randperm(faces.shape[0] + 107, generator=gen)]
    check_voxelize(points.contiguous(), 100000)


@pytest.mark.parametrize("n", [0, 1])
def test_voxelize_tiny_inputs(sfcuda, gen, n):
    out = check_voxelize(voxel_points(gen, n, spread=1.0), 10)
    assert int(out[2]) == n


def test_voxelize_all_outside(sfcuda, gen):
    out = check_voxelize(voxel_points(gen, 100) + 100.0, 10)
    assert int(out[2]) == 0


@pytest.mark.parametrize(("max_points", "reduce", "order"), [
    (4, "none", "arrival"), (3, "mean", "arrival"), (5, "none", "key"), (0, "mean", "arrival"),
    (2, "mean", "key")])
@pytest.mark.parametrize("max_voxels", [23, 100000])
def test_voxelize_hard_modes_match_reference(sfcuda, gen, max_points, reduce, order, max_voxels):
    """Hard voxelization (spconv / mmcv): first points per voxel, arrival order, the counts output."""
    points = voxel_points(gen, 4000, spread=2.0)  # crowded: many voxels hold more than max_points
    args = (RANGE, SIZE, max_voxels, max_points, reduce, order)
    ref = ops.voxelize_with_counts(points, *args)
    out = ops.voxelize_with_counts(points.cuda(), *args)
    assert int(out[2]) == int(ref[2])
    assert torch.equal(out[1].cpu(), ref[1]) and torch.equal(out[3].cpu(), ref[3])
    if reduce == "none":
        assert torch.equal(out[0].cpu(), ref[0])  # copies of the points, zero padding
    else:
        assert_close(out[0], ref[0], torch.float32)
    three = ops.voxelize(points.cuda(), *args)
    assert torch.equal(three[1], out[1])


# ---- SparseConv3d ---------------------------------------------------------------------------------

def sparse_input(gen, n, shape, batch=2, channels=16):
    total = batch * shape[0] * shape[1] * shape[2]
    keys = torch.randperm(total, generator=gen)[: min(n, total)]
    z, y, x = shape
    coords = torch.stack([keys // (z * y * x), keys // (y * x) % z, keys // x % y, keys % x], 1)
    coords = coords.to(torch.int32)
    return torch.randn(coords.shape[0], channels, generator=gen), coords


CONV_CASES = [
    # kernel, stride, padding, dilation, subm
    ([3, 3, 3], [1, 1, 1], [0, 0, 0], [1, 1, 1], True),
    ([1, 3, 3], [1, 1, 1], [0, 0, 0], [1, 1, 1], True),
    ([3, 3, 3], [1, 1, 1], [0, 0, 0], [2, 1, 2], True),
    ([3, 3, 3], [2, 2, 2], [1, 1, 1], [1, 1, 1], False),
    ([3, 1, 1], [2, 1, 1], [0, 0, 0], [1, 1, 1], False),
    ([2, 2, 2], [2, 2, 2], [0, 0, 0], [1, 1, 1], False),
    ([3, 3, 3], [1, 1, 1], [1, 1, 1], [1, 1, 1], False),
]


def run_conv(feats, coords, weight, bias, shape, case, activation):
    kernel, stride, padding, dilation, subm = case
    return ops.sparse_conv3d(feats, coords, weight, bias, shape, kernel, stride, padding, dilation, subm,
                             activation)


@pytest.mark.parametrize("algo", ["gather_gemm_scatter", "implicit_gemm", "direct"])
@pytest.mark.parametrize("channels", [(5, 7), (16, 32)])  # scalar and 16-byte vector paths
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", CONV_CASES)
def test_sparse_conv3d_matches_reference(sfcuda, gen, case, dtype, channels, algo):
    sfcuda.set_tuning(algo=algo)
    shape = [9, 12, 10]
    c_in, c_out = channels
    feats, coords = sparse_input(gen, 500, shape, channels=c_in)
    weight = torch.randn(c_out, *case[0], c_in, generator=gen) * 0.2
    bias = torch.randn(c_out, generator=gen)
    ref_f, ref_c = run_conv(feats.to(dtype).float(), coords, weight.to(dtype).float(), bias.to(dtype).float(),
                            shape, case, "relu")
    out_f, out_c = run_conv(feats.to(dtype).cuda(), coords.cuda(), weight.to(dtype).cuda(),
                            bias.to(dtype).cuda(), shape, case, "relu")
    assert torch.equal(out_c.cpu(), ref_c)
    assert out_f.dtype == dtype
    assert_close(out_f, ref_f, dtype)


TUNINGS = [
    dict(epsilon=0.0, threshold=1 << 30),  # symmetric-like: a new group whenever sizes differ
    dict(epsilon=1.0, threshold=1 << 30),  # one grouped launch for everything
    dict(epsilon=0.5, threshold=0),  # separate launches
    dict(max_grid_cells=0),  # hash table
    dict(max_grid_cells=1 << 30),  # grid table
]


@pytest.mark.parametrize("tuning", TUNINGS)
def test_sparse_conv3d_grouping_and_tables_do_not_change_results(sfcuda, gen, tuning):
    sfcuda.set_tuning(algo="gather_gemm_scatter", epsilon=0.4, threshold=8192, max_grid_cells=1 << 25)
    sfcuda.set_tuning(**tuning)
    shape = [11, 30, 28]
    feats, coords = sparse_input(gen, 3000, shape, channels=32)
    weight = torch.randn(64, 3, 3, 3, 32, generator=gen) * 0.1
    for case in (CONV_CASES[0], CONV_CASES[3]):
        ref = run_conv(feats, coords, weight, None, shape, case, "none")
        out = run_conv(feats.cuda(), coords.cuda(), weight.cuda(), None, shape, case, "none")
        assert torch.equal(out[1].cpu(), ref[1])
        assert_close(out[0], ref[0], torch.float32)


@pytest.mark.parametrize("algo", ["gather_gemm_scatter", "implicit_gemm"])
def test_sparse_conv3d_is_deterministic(sfcuda, gen, algo):
    sfcuda.set_tuning(algo=algo)
    shape = [11, 40, 40]
    feats, coords = sparse_input(gen, 6000, shape, channels=64)
    weight = (torch.randn(64, 3, 3, 3, 64, generator=gen) * 0.1).half().cuda()
    args = (feats.half().cuda(), coords.cuda(), weight, None, shape)
    first = run_conv(*args, CONV_CASES[0], "none")[0]
    for _ in range(3):
        assert torch.equal(run_conv(*args, CONV_CASES[0], "none")[0], first)


@pytest.mark.parametrize("algo", ["gather_gemm_scatter", "implicit_gemm"])
@pytest.mark.parametrize("n", [0, 1])
@pytest.mark.parametrize("case", [CONV_CASES[0], CONV_CASES[3]])
def test_sparse_conv3d_tiny_inputs(sfcuda, gen, n, case, algo):
    sfcuda.set_tuning(algo=algo)
    feats, coords = sparse_input(gen, n, [5, 5, 5], channels=8)
    weight = torch.randn(8, 3, 3, 3, 8, generator=gen)
    ref = run_conv(feats, coords, weight, None, [5, 5, 5], case, "none")
    out = run_conv(feats.cuda(), coords.cuda(), weight.cuda(), None, [5, 5, 5], case, "none")
    assert torch.equal(out[1].cpu(), ref[1])
    assert_close(out[0], ref[0], torch.float32)


INVERSE_CASES = [*CONV_CASES[3:6], ([3, 3, 3], [2, 2, 2], [1, 1, 1], [2, 1, 1], False)]


@pytest.mark.parametrize("algo", ["gather_gemm_scatter", "implicit_gemm", "direct"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("max_grid_cells", [0, 1 << 25])  # hash and grid tables
@pytest.mark.parametrize("case", INVERSE_CASES)
def test_sparse_inverse_conv3d_matches_reference(sfcuda, gen, case, dtype, max_grid_cells, algo):
    sfcuda.set_tuning(algo=algo, max_grid_cells=max_grid_cells)
    shape, (kernel, stride, padding, dilation, _) = [9, 12, 10], case
    feats, fine = sparse_input(gen, 500, shape, channels=16)
    down = torch.randn(32, *kernel, 16, generator=gen) * 0.2
    _, coarse = ops.sparse_conv3d(feats, fine, down, None, shape, kernel, stride, padding, dilation, False,
                                  "none")
    up = torch.randn(coarse.shape[0], 32, generator=gen).to(dtype)
    weight = (torch.randn(16, *kernel, 32, generator=gen) * 0.2).to(dtype)
    bias = torch.randn(16, generator=gen).to(dtype)
    geometry = (shape, kernel, stride, padding, dilation, "relu")
    ref = ops.sparse_inverse_conv3d(up.float(), coarse, fine, weight.float(), bias.float(), *geometry)
    out = ops.sparse_inverse_conv3d(up.cuda(), coarse.cuda(), fine.cuda(), weight.cuda(), bias.cuda(),
                                    *geometry)
    assert out.dtype == dtype
    assert_close(out, ref, dtype)


@pytest.mark.skipif(importlib.util.find_spec("spconv_triton") is None, reason="spconv-triton not installed")
@pytest.mark.parametrize("algo", ["gather_gemm_scatter", "implicit_gemm"])
@pytest.mark.parametrize("subm", [True, False])
def test_sparse_conv3d_matches_spconv_triton(sfcuda, gen, subm, algo):
    import spconv_triton.pytorch as spconv

    sfcuda.set_tuning(algo=algo)
    shape, c_in, c_out = [21, 64, 64], 32, 64
    feats, coords = sparse_input(gen, 20000, shape, batch=1, channels=c_in)
    feats, coords = feats.half().cuda(), coords.cuda()
    if subm:
        layer = spconv.SubMConv3d(c_in, c_out, 3, padding=1, bias=False)
        case = CONV_CASES[0]
    else:
        layer = spconv.SparseConv3d(c_in, c_out, 3, stride=2, padding=1, bias=False)
        case = CONV_CASES[3]
    layer = layer.cuda().half()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen).half() * 0.1)
        theirs = layer(spconv.SparseConvTensor(feats, coords, shape, 1))
    ours_f, ours_c = run_conv(feats, coords, layer.weight.detach(), None, shape, case, "none")
    # spconv does not promise an output order; compare by linear key.
    out_shape = [int(s) for s in theirs.spatial_shape]
    order = torch.argsort(linear_key(theirs.indices, out_shape))
    assert torch.equal(theirs.indices[order].int().cpu(), ours_c.cpu())
    assert_close(ours_f, theirs.features[order], torch.float16)


# ---- end to end -----------------------------------------------------------------------------------

def test_tiny_model_on_gpu_matches_cpu_reference(sfcuda):
    from sparsefuse.models.frames import random_frame
    from sparsefuse.models.presets import build_model, get_preset

    sfcuda.set_tuning(algo="auto")
    torch.backends.cudnn.allow_tf32 = False  # fp32 tolerance: no TF32 in torch's own convs either
    torch.backends.cuda.matmul.allow_tf32 = False
    model = build_model("bevfusion-tiny")
    frame = random_frame(get_preset("bevfusion-tiny"), seed=int.from_bytes(os.urandom(2), "little"))
    with torch.no_grad():
        ref = model(frame["images"], frame["points"])
        out = model.cuda()(frame["images"].cuda(), frame["points"].cuda())
    assert len(out) == len(ref)
    for a, r in zip(out, ref, strict=True):
        assert a.is_cuda
        assert_close(a, r, torch.float32)
