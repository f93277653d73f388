"""CPU checks of the GPU benchmarks' pure helpers (the benchmarks themselves need CUDA)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import sparsefuse.plugins  # noqa: F401  (registers the ops)

ROOT = Path(__file__).resolve().parents[2]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script executes
    spec.loader.exec_module(module)
    return module


bevpool = load_script("gpu_bevpool")
sparseconv = load_script("gpu_sparseconv")


def random_ranks(gen, cells=30, points=400):
    ranks_bev = torch.sort(torch.randint(0, cells, (points,), generator=gen)).values.to(torch.int32)
    ranks_depth = torch.randint(0, 2 * 3 * 4 * 5, (points,), generator=gen, dtype=torch.int32)
    ranks_feat = torch.randint(0, 2 * 4 * 5, (points,), generator=gen, dtype=torch.int32)
    return ranks_depth, ranks_feat, ranks_bev


@pytest.mark.parametrize("pool", ["cumsum_pool", "index_add_pool"])
def test_bevpool_baselines_match_the_reference(pool):
    gen = torch.Generator().manual_seed(1)
    depth = torch.rand(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    feat = torch.randn(2, 4, 5, 6, generator=gen, dtype=torch.float64)
    rd, rf, rb = random_ranks(gen)
    ref = torch.ops.sparsefuse.bev_pool(depth, feat, rd, rf, rb, rb[:0], rb[:0], [1, 5, 6])
    out = getattr(bevpool, pool)(depth, feat, rd, rf, rb, [1, 5, 6])
    torch.testing.assert_close(out, ref)


def test_cumsum_pool_without_points():
    empty = torch.zeros(0, dtype=torch.int32)
    out = bevpool.cumsum_pool(torch.rand(1, 2, 2, 2), torch.rand(1, 2, 2, 3), empty, empty, empty, [1, 2, 2])
    assert torch.equal(out, torch.zeros(1, 3, 2, 2))


def test_bytes_moved_and_ratio():
    assert bevpool.bytes_moved(10, 20, 5, 2, 30, 2) == (10 + 20 + 30) * 2 + (15 + 4) * 4
    assert bevpool.ratio(6.0, 2.0) == 3.0
    assert bevpool.ratio(None, 2.0) is None and bevpool.ratio(1.0, 0) is None


def test_sparseconv_layers_cover_the_brief():
    layers = sparseconv.layer_specs()
    channels = {layer.c_in for layer in layers} | {layer.c_out for layer in layers}
    assert {16, 32, 64, 128, 256} <= channels
    assert any(not layer.subm for layer in layers) and any(layer.subm for layer in layers)
    assert sparseconv.level_shape(0) == [41, 1440, 1440]
    assert sparseconv.level_shape(1) == [21, 720, 720]
    assert sparseconv.dense_bytes([2, 3, 4], 8, 16, 2) == 24 * 24 * 2


@pytest.mark.parametrize("subm", [True, False])
def test_torch_baseline_matches_the_reference_op(subm):
    gen = torch.Generator().manual_seed(2)
    shape = [6, 7, 8]
    keys = torch.randperm(6 * 7 * 8, generator=gen)[:60]
    coords = torch.stack([keys * 0, keys // 56, keys // 8 % 7, keys % 8], 1).to(torch.int32)
    layer = sparseconv.Layer("t", 0, 4, 5, subm)
    feats = torch.randn(60, 4, generator=gen)
    weight = torch.randn(5, 3, 3, 3, 4, generator=gen)
    ref, _ = torch.ops.sparsefuse.sparse_conv3d(feats, coords, weight, None, shape, layer.kernel,
                                                layer.stride, layer.padding, [1, 1, 1], subm, "none")
    torch.testing.assert_close(sparseconv.torch_gather_mm_scatter(feats, coords, weight, layer, shape), ref)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
@pytest.mark.parametrize("script", [bevpool, sparseconv])
def test_benchmarks_exit_cleanly_without_cuda(script, capsys):
    assert script.main([]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
