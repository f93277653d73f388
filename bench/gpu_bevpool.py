"""BEVPool on a GPU at the BEVFusion workload: our interval-reduction kernel against the LSS
cumsum trick (torch), torch index_add_, and the DRAM floor (bytes moved / measured copy bandwidth).

    python bench/gpu_bevpool.py [--grid 180 360] [--reps 50] [--out results.json]

Workload: the base preset's rig (6 cameras, feature map 32x88, D=118 depth bins, C=80), ranks
precomputed from the rig geometry (BEVFusion §5.1.3), BEV grids of 180x180 (the fusion grid) and
360x360 (the finer camera pooling grid of the base preset). Goals (issue 5): >= 40x faster than
the cumsum baseline, within 3x of the DRAM floor. Prints one JSON document; all latencies are
measured medians of CUDA-event timings on the named device. Needs CUDA; exits with a message
otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

import torch

from sparsefuse.targets.profiler import cuda_median_ms


def cumsum_pool(depth, feat, ranks_depth, ranks_feat, ranks_bev, bev_shape) -> torch.Tensor:
    """LSS 'cumsum trick' (QuickCumsum forward): materialize the frustum features, prefix-sum them,
    keep the last row of every run of equal ranks, difference, scatter. -> bev[B,C,Y,X]."""
    batch, y_size, x_size = bev_shape
    channels = feat.shape[-1]
    x = depth.reshape(-1)[ranks_depth.long()][:, None] * feat.reshape(-1, channels)[ranks_feat.long()]
    ranks = ranks_bev.long()
    bev = feat.new_zeros(batch * y_size * x_size, channels)
    if ranks.numel() == 0:
        return bev.reshape(batch, y_size, x_size, channels).permute(0, 3, 1, 2).contiguous()
    x = x.cumsum(0)
    kept = torch.ones_like(ranks, dtype=torch.bool)
    kept[:-1] = ranks[1:] != ranks[:-1]
    x, ranks = x[kept], ranks[kept]
    x = torch.cat([x[:1], x[1:] - x[:-1]])
    bev[ranks] = x
    return bev.reshape(batch, y_size, x_size, channels).permute(0, 3, 1, 2).contiguous()


def index_add_pool(depth, feat, ranks_depth, ranks_feat, ranks_bev, bev_shape) -> torch.Tensor:
    """Gather, multiply, index_add_ (atomics on the GPU). -> bev[B,C,Y,X]."""
    batch, y_size, x_size = bev_shape
    channels = feat.shape[-1]
    values = depth.reshape(-1)[ranks_depth.long()][:, None] * feat.reshape(-1, channels)[ranks_feat.long()]
    bev = feat.new_zeros(batch * y_size * x_size, channels).index_add_(0, ranks_bev.long(), values)
    return bev.reshape(batch, y_size, x_size, channels).permute(0, 3, 1, 2).contiguous()


def bytes_moved(depth_numel: int, feat_numel: int, points: int, intervals: int, out_numel: int,
                elem_bytes: int) -> int:
    """Compulsory DRAM traffic of one BEVPool: read depth, feat, 3 rank arrays (P) and 2 interval
    arrays (I) once, write the output once."""
    return (depth_numel + feat_numel + out_numel) * elem_bytes + (3 * points + 2 * intervals) * 4


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator in (None, 0):
        return None
    return numerator / denominator



def copy_bandwidth_gbps(reps: int, nbytes: int = 1 << 30) -> float:
    """Measured device-to-device copy bandwidth (read + write bytes per second, GB/s)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    ms = cuda_median_ms(lambda: dst.copy_(src), reps, warmup=5)
    return 2 * nbytes / (ms * 1e-3) / 1e9


@dataclass(frozen=True)
class Workload:
    depth: torch.Tensor
    feat: torch.Tensor
    ranks: list[torch.Tensor]  # ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths
    bev_shape: list[int]


def make_workload(grid: int, dtype: torch.dtype, gen: torch.Generator) -> Workload:
    from sparsefuse.models.geometry import camera_bev_ranks
    from sparsefuse.models.presets import get_preset, preset_rig

    preset = get_preset("bevfusion-base")
    rig = preset_rig(preset)
    subdivision = grid // rig.bev_shape[0]
    if subdivision * rig.bev_shape[0] != grid:
        raise SystemExit(f"--grid must be a multiple of the fusion grid {rig.bev_shape[0]}")
    ranks = camera_bev_ranks(rig, preset.feature_stride, subdivision)
    height, width = preset.feature_size
    ncam, depth_bins, channels = len(rig.cameras), rig.num_depth_bins, preset.camera_channels
    depth = torch.rand(ncam, depth_bins, height, width, generator=gen).softmax(1)
    feat = torch.randn(ncam, height, width, channels, generator=gen)
    arrays = (ranks.ranks_depth, ranks.ranks_feat, ranks.ranks_bev, ranks.interval_starts,
              ranks.interval_lengths)
    idx = [torch.as_tensor(a, dtype=torch.int32).cuda() for a in arrays]
    return Workload(depth.to(dtype).cuda(), feat.to(dtype).cuda(), idx, [1, grid, grid])


def measure(w: Workload, reps: int, bandwidth_gbps: float) -> dict:
    """One grid x dtype row: medians of ours / cumsum / index_add_, the floor, the ratios."""
    ranks = w.ranks
    args = (w.depth, w.feat, *ranks[:3], w.bev_shape)
    def ours_pool() -> torch.Tensor:
        return torch.ops.sparsefuse.bev_pool(w.depth, w.feat, *ranks, w.bev_shape)

    ours = cuda_median_ms(ours_pool, reps, warmup=5)
    cumsum = cuda_median_ms(lambda: cumsum_pool(*args), max(3, reps // 5), warmup=5)
    index_add = cuda_median_ms(lambda: index_add_pool(*args), max(3, reps // 5), warmup=5)
    grid = w.bev_shape[1] * w.bev_shape[2]
    moved = bytes_moved(w.depth.numel(), w.feat.numel(), ranks[0].numel(), ranks[3].numel(),
                        w.feat.shape[-1] * grid, w.feat.element_size())
    floor_ms = moved / (bandwidth_gbps * 1e9) * 1e3
    ref = index_add_pool(w.depth.float(), w.feat.float(), *ranks[:3], w.bev_shape)
    out = torch.ops.sparsefuse.bev_pool(w.depth, w.feat, *ranks, w.bev_shape)
    return {
        "bev_grid": w.bev_shape[1:], "dtype": str(w.feat.dtype).removeprefix("torch."),
        "points": ranks[0].numel(), "intervals": ranks[3].numel(), "channels": w.feat.shape[-1],
        "ours_ms": ours, "cumsum_ms": cumsum, "index_add_ms": index_add, "dram_floor_ms": floor_ms,
        "bytes_moved": moved, "speedup_vs_cumsum": ratio(cumsum, ours),
        "speedup_vs_index_add": ratio(index_add, ours), "ours_over_floor": ratio(ours, floor_ms),
        "goal_40x_cumsum": ratio(cumsum, ours) >= 40, "goal_within_3x_floor": ratio(ours, floor_ms) <= 3,
        "max_abs_err_vs_fp32_index_add": float((out.float() - ref).abs().max()),
        "max_abs_ref": float(ref.abs().max()),
    }


def run(grids: list[int], reps: int) -> dict:
    import sparsefuse.plugins.cuda as sfcuda

    sfcuda.load()
    gen = torch.Generator().manual_seed(0)
    bandwidth = copy_bandwidth_gbps(reps)
    rows = [measure(make_workload(grid, dtype, gen), reps, bandwidth)
            for grid in grids for dtype in (torch.float32, torch.float16)]
    return {
        "benchmark": "bevpool", "label": "measured", "device": torch.cuda.get_device_name(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "copy_bandwidth_gbps": bandwidth,
        "workload": "bevfusion-base rig: 6 cams, 32x88 features, D=118, C=80", "reps": reps,
        "statistic": "median", "results": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, nargs="+", default=[180, 360], help="BEV grid sizes (square)")
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_bevpool: needs a CUDA device (none found); run it on a GPU machine", file=sys.stderr)
        return 2
    report = run(args.grid, args.reps)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        from sparsefuse.atomic import write_text

        write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
