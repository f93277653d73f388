"""SparseConv3d on a GPU: our kernels (gather-GEMM-scatter, implicit GEMM) against spconv-triton
(fp16), a pure torch gather-matmul-scatter (the reference) and dense Conv3d where it fits, per layer.

    python bench/gpu_sparseconv.py [--voxels 70000] [--reps 20] [--no-tune] [--out results.json]

Layers follow a SECOND / VoxelNet encoder (BEVFusion's LiDAR branch) on a synthetic LiDAR sweep
voxelized on a 41x1440x1440 grid (0.075 m x 0.075 m x 0.2 m), subsampled to ``--voxels`` active
voxels (default 70k, inside the 50k-90k band): submanifold and stride-2 layers from C=16 to 128,
plus the C=256 layer of spconv-triton's own benchmark. Per layer it reports medians of CUDA-event
timings (measured), the ratio spconv-triton / ours (> 1: we are faster; goal >= 1 in fp16) and the
best (epsilon, S) of a small grouping sweep (TorchSparse adaptive grouping). Needs CUDA.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from dataclasses import asdict, dataclass

import numpy as np
import torch

from sparsefuse.targets.profiler import cuda_median_ms

GRID = (41, 1440, 1440)  # (Z, Y, X) of the SECOND input (40 voxel slices + 1)
TUNE_EPSILON = (0.0, 0.2, 0.4, 0.6, 1.0)
TUNE_THRESHOLD = (0, 4096, 16384, 1 << 30)


@dataclass(frozen=True)
class Layer:
    name: str
    level: int  # input resolution level: grid / 2**level
    c_in: int
    c_out: int
    subm: bool

    @property
    def kernel(self) -> list[int]:
        return [3, 3, 3]

    @property
    def stride(self) -> list[int]:
        return [1, 1, 1] if self.subm else [2, 2, 2]

    @property
    def padding(self) -> list[int]:
        return [1, 1, 1] if not self.subm else [0, 0, 0]


def layer_specs() -> list[Layer]:
    """SECOND-like encoder: subm blocks per stage, stride-2 between stages, then the C=256 layer."""
    return [
        Layer("subm1_16", 0, 16, 16, True),
        Layer("down1_16_32", 0, 16, 32, False),
        Layer("subm2_32", 1, 32, 32, True),
        Layer("down2_32_64", 1, 32, 64, False),
        Layer("subm3_64", 2, 64, 64, True),
        Layer("down3_64_128", 2, 64, 128, False),
        Layer("subm4_128", 3, 128, 128, True),
        Layer("subm_256", 2, 256, 256, True),
    ]


def level_shape(level: int) -> list[int]:
    """Spatial shape after ``level`` stride-2, kernel-3, padding-1 convs."""
    shape = list(GRID)
    for _ in range(level):
        shape = [(s + 2 - 2 - 1) // 2 + 1 for s in shape]
    return shape


def dense_bytes(shape: list[int], c_in: int, c_out: int, elem_bytes: int = 2) -> int:
    """Memory of dense Conv3d input + output (stride 1) for one sample."""
    cells = shape[0] * shape[1] * shape[2]
    return cells * (c_in + c_out) * elem_bytes


def torch_gather_mm_scatter(features, coords, weight, layer: Layer, shape: list[int]) -> torch.Tensor:
    """Pure-torch baseline: the reference kernel map and gather-matmul-index_add_ (one GEMM per offset)."""
    from sparsefuse.plugins.sparse_conv3d.reference import apply_kernel_map, build_kernel_map

    kmap = build_kernel_map(coords, shape, layer.kernel, layer.stride, layer.padding, [1, 1, 1], layer.subm)
    return apply_kernel_map(features, weight, None, kmap, "none")


def synthetic_voxels(num_voxels: int, seed: int) -> torch.Tensor:
    """Unique (b, z, y, x) int32 coords of a voxelized synthetic sweep, ``num_voxels`` of them, sorted."""
    from sparsefuse.models.frames import random_points
    from sparsefuse.models.presets import get_preset
    from sparsefuse.plugins.voxelize.reference import voxelize

    preset = get_preset("bevfusion-base")
    rng = np.random.default_rng(seed)
    points = random_points(rng, preset, max(4 * num_voxels, preset.num_points_typical))
    _, coords, _ = voxelize(points, list(preset.point_range), list(preset.voxel_size), 10**9)
    if coords.shape[0] > num_voxels:
        keep = torch.from_numpy(np.sort(rng.choice(coords.shape[0], num_voxels, replace=False)))
        coords = coords[keep]
    return coords.contiguous()



def run(num_voxels: int, reps: int, tune: bool, seed: int = 0) -> dict:
    import sparsefuse.plugins.cuda as sfcuda

    sfcuda.load()
    have_triton = importlib.util.find_spec("spconv_triton") is not None
    gen = torch.Generator().manual_seed(seed)
    coords = {0: synthetic_voxels(num_voxels, seed).cuda()}
    ops = torch.ops.sparsefuse
    for level in (1, 2, 3):  # output sites of the stride-2 layers feed the next stage
        f = torch.zeros(coords[level - 1].shape[0], 1, device="cuda")
        w = torch.zeros(1, 3, 3, 3, 1, device="cuda")
        _, coords[level] = ops.sparse_conv3d(f, coords[level - 1], w, None, level_shape(level - 1), [3, 3, 3],
                                             [2, 2, 2], [1, 1, 1], [1, 1, 1], False, "none")
    rows = [measure_layer(layer, coords[layer.level], gen, reps, tune, have_triton)
            for layer in layer_specs()]
    return {"benchmark": "sparseconv", "label": "measured", "device": torch.cuda.get_device_name(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "spconv_triton": have_triton,
            "voxels": num_voxels, "reps": reps, "statistic": "median", "results": rows}


def measure_layer(layer: Layer, crd: torch.Tensor, gen: torch.Generator, reps: int, tune: bool,
                  have_triton: bool) -> dict:
    """One layer: ours (fp16, fp32, optional grouping sweep), torch baseline, spconv-triton, dense."""
    import sparsefuse.plugins.cuda as sfcuda

    shape = level_shape(layer.level)
    feats = torch.randn(crd.shape[0], layer.c_in, generator=gen).cuda()
    weight = (torch.randn(layer.c_out, 3, 3, 3, layer.c_in, generator=gen) * 0.05).cuda()

    def ours(dtype):
        f, w = feats.to(dtype), weight.to(dtype)
        return lambda: torch.ops.sparsefuse.sparse_conv3d(f, crd, w, None, shape, layer.kernel, layer.stride,
                                                          layer.padding, [1, 1, 1], layer.subm, "none")

    sfcuda.set_tuning(algo="gather_gemm_scatter", epsilon=0.4, threshold=8192)
    row = {**asdict(layer), "active_in": int(crd.shape[0]), "shape": shape,
           "ours_fp16_ms": cuda_median_ms(ours(torch.float16), reps),
           "ours_fp32_ms": cuda_median_ms(ours(torch.float32), reps)}
    sfcuda.set_tuning(algo="implicit_gemm")
    row["ours_implicit_fp16_ms"] = cuda_median_ms(ours(torch.float16), reps)
    row["ours_implicit_fp32_ms"] = cuda_median_ms(ours(torch.float32), reps)
    sfcuda.set_tuning(algo="gather_gemm_scatter")
    if tune:
        best = None
        for eps in TUNE_EPSILON:
            for threshold in TUNE_THRESHOLD:
                sfcuda.set_tuning(epsilon=eps, threshold=threshold)
                candidate = (cuda_median_ms(ours(torch.float16), max(3, reps // 4)), eps, threshold)
                best = candidate if best is None else min(best, candidate)
        row["tuned_fp16_ms"], row["tuned_epsilon"], row["tuned_threshold"] = best
        sfcuda.set_tuning(epsilon=0.4, threshold=8192)
    half_f, half_w = feats.half(), weight.half()
    row["torch_gather_mm_scatter_fp16_ms"] = cuda_median_ms(
        lambda: torch_gather_mm_scatter(half_f, crd, half_w, layer, shape), max(3, reps // 4))
    row["spconv_triton_fp16_ms"] = (spconv_triton_ms(feats, crd, weight, layer, shape, reps)
                                    if have_triton else None)
    row["dense_conv3d_fp16_ms"] = dense_ms(layer, shape, reps)
    candidates = (row["ours_fp16_ms"], row["ours_implicit_fp16_ms"], row.get("tuned_fp16_ms") or float("inf"))
    best_ours = min(candidates)
    triton = row["spconv_triton_fp16_ms"]
    row["ratio_spconv_triton_over_ours"] = triton / best_ours if triton else None
    row["ratio_torch_over_ours"] = row["torch_gather_mm_scatter_fp16_ms"] / best_ours
    return row


def spconv_triton_ms(feats, coords, weight, layer: Layer, shape, reps: int) -> float:
    import spconv_triton.pytorch as spconv

    cls = spconv.SubMConv3d if layer.subm else spconv.SparseConv3d
    conv = cls(layer.c_in, layer.c_out, 3, stride=layer.stride[0], padding=1, bias=False).cuda().half()
    with torch.no_grad():
        conv.weight.copy_(weight.half())
    x = spconv.SparseConvTensor(feats.half(), coords, shape, 1)
    with torch.no_grad():
        return cuda_median_ms(lambda: conv(x), reps)


def dense_ms(layer: Layer, shape: list[int], reps: int, limit_bytes: int = 8 << 30) -> float | None:
    """Dense Conv3d over the whole grid, fp16, or None where it does not fit in ``limit_bytes``."""
    if dense_bytes(shape, layer.c_in, layer.c_out) > limit_bytes:
        return None
    x = torch.zeros(1, layer.c_in, *shape, device="cuda", dtype=torch.float16)
    conv = torch.nn.Conv3d(layer.c_in, layer.c_out, 3, stride=layer.stride, padding=1, bias=False)
    conv = conv.cuda().half()
    with torch.no_grad():
        try:
            return cuda_median_ms(lambda: conv(x), max(3, reps // 4))
        except torch.OutOfMemoryError:
            return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxels", type=int, default=70000)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--no-tune", action="store_true", help="skip the (epsilon, S) sweep")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_sparseconv: needs a CUDA device (none found); run it on a GPU machine", file=sys.stderr)
        return 2
    text = json.dumps(run(args.voxels, args.reps, not args.no_tune), indent=2)
    print(text)
    if args.out:
        from sparsefuse.atomic import write_text

        write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
