"""DP allocator speed: our budget-discretized knapsack DP vs RD-Prune's DP over surviving-weight counts.

Both solve the same instance (L layers, K levels, per-layer RD curves; budget = surviving weights).
RD-Prune's DP (reimplemented from its description, passes/sparsity/allocate.py::rdprune_dp) is exact
and O(L·S·K) with S = surviving weights; ours rounds costs up to S/resolution units (feasible, gap
bounded by OPT(budget − L·u)). Prints JSON: median solve times, speedup, distortion gap. CPU only.

    python bench/sparsity_dp.py [--layers 100] [--levels 21] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np

from sparsefuse.passes.sparsity.allocate import rdprune_dp, solve_mckp


def instance(layers: int, levels: int, seed: int) -> tuple[list[int], list[list[int]], list[list[float]]]:
    rng = np.random.default_rng(seed)
    sizes = np.exp(rng.uniform(np.log(1e3), np.log(1e5), layers)).astype(int)
    grid = np.linspace(0.0, 1.0, levels)
    kept = [[int(n - round(g * n)) for g in grid] for n in sizes]
    curves = []
    for _ in range(layers):
        a, b = np.exp(rng.uniform(np.log(1e-4), np.log(1.0))), rng.uniform(2.0, 10.0)
        curves.append(list(a * (np.exp(b * grid) - 1.0) / (np.exp(b) - 1.0)))
    return [int(s) for s in sizes], kept, curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=100)
    parser.add_argument("--levels", type=int, default=21)
    parser.add_argument("--keep", type=float, default=0.5, help="fraction of weights kept")
    parser.add_argument("--resolution", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes, kept, curves = instance(args.layers, args.levels, args.seed)
    target = int(args.keep * sum(sizes))
    ours_t, ref_t = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ref = rdprune_dp(sizes, kept, curves, target)
        ref_t.append(time.perf_counter() - start)
        start = time.perf_counter()
        ours = solve_mckp(kept, curves, float(target), args.resolution)
        ours_t.append(time.perf_counter() - start)
    gap = (ours.total_distortion - ref.total_distortion) / ref.total_distortion
    print(
        json.dumps(
            {
                "bench": "sparsity_dp",
                "machine": platform.node(),
                "processor": platform.processor() or platform.machine(),
                "layers": args.layers,
                "levels": args.levels,
                "total_weights": sum(sizes),
                "budget_weights": target,
                "resolution": args.resolution,
                "unit": ours.unit,
                "repeats": args.repeats,
                "rdprune_dp_median_s": statistics.median(ref_t),
                "ours_median_s": statistics.median(ours_t),
                "speedup": statistics.median(ref_t) / statistics.median(ours_t),
                "rdprune_distortion": ref.total_distortion,
                "ours_distortion": ours.total_distortion,
                "distortion_gap_rel": gap,
                "ours_cost": ours.total_cost,
                "rdprune_cost": ref.total_cost,
                "error_bound": ours.error_bound,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
