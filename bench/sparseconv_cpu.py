"""SparseConv3d on one CPU thread: our ONNX function body in ONNX Runtime against spconv 2.x's CPU
implementation (and our torch reference), same layer, same weights, side by side.

    python bench/sparseconv_cpu.py [--voxels 20000] [--channels 32] [--reps 20]

Voxels: a synthetic LiDAR sweep of the bevfusion-base preset voxelized on its 40x1440x1440 grid
(0.075 m x 0.075 m x 0.2 m), subsampled to ``--voxels``. Layers: a submanifold conv (SubMConv3d) and
a stride-2 conv (SparseConv3d, padding 1), kernel 3, C -> C, no bias (spconv's CPU path has no fused
bias). Every runtime rebuilds its
kernel map on each call (as in a model). 1 thread everywhere (torch.set_num_threads(1), ORT intra-op
and inter-op 1); runtimes interleaved, order flipping every rep. Prints JSON: median ms per runtime
(measured), ratio ORT / spconv (> 1: the ONNX body is slower) and the largest difference between the
two outputs, compared per output coordinate.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch


def synthetic_voxels(num_voxels: int, seed: int) -> tuple[torch.Tensor, list[int]]:
    """(coords [N,4] int32 (b, z, y, x), unique, by linear key; grid (Z, Y, X)) of a voxelized sweep."""
    from sparsefuse.models.frames import random_points
    from sparsefuse.models.presets import get_preset
    from sparsefuse.plugins.voxelize.reference import grid_shape, voxelize

    preset = get_preset("bevfusion-base")
    rng = np.random.default_rng(seed)
    points = random_points(rng, preset, max(4 * num_voxels, preset.num_points_typical))
    _, coords, _ = voxelize(points, list(preset.point_range), list(preset.voxel_size), 10**9)
    if coords.shape[0] > num_voxels:
        coords = coords[torch.from_numpy(np.sort(rng.choice(coords.shape[0], num_voxels, replace=False)))]
    return coords.contiguous(), list(grid_shape(list(preset.point_range), list(preset.voxel_size)))


def sort_by_key(features: np.ndarray, coords: np.ndarray, shape: list[int]) -> np.ndarray:
    """Rows of ``features`` ordered by the linear key of ``coords`` over ``shape`` (Z, Y, X)."""
    c = coords.astype(np.int64)
    keys = ((c[:, 0] * shape[0] + c[:, 1]) * shape[1] + c[:, 2]) * shape[2] + c[:, 3]
    return features[np.argsort(keys, kind="stable")]


def measure_layer(subm: bool, coords: torch.Tensor, shape: list[int], channels: int, reps: int,
                  warmup: int, gen: torch.Generator) -> dict[str, Any]:
    """Median ms of ORT (our body), spconv CPU and our torch reference for one layer, and max errors."""
    import onnxruntime as ort
    import spconv.pytorch as spconv

    from sparsefuse.plugins import onnx_ops
    from sparsefuse.plugins.sparse_conv3d import output_spatial_shape, sparse_conv3d

    geometry = {"kernel_size": [3, 3, 3], "stride": [1, 1, 1] if subm else [2, 2, 2],
                "padding": [0, 0, 0] if subm else [1, 1, 1], "dilation": [1, 1, 1]}
    features = torch.randn(coords.shape[0], channels, generator=gen)
    weight = torch.randn(channels, 3, 3, 3, channels, generator=gen) / (27 * channels) ** 0.5
    feeds = {"features": features.numpy(), "coords": coords.numpy(), "weight": weight.numpy()}
    attrs = dict(geometry, spatial_shape=shape, subm=subm, activation="none")
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    model = onnx_ops.single_node_model("SparseConv3d", feeds, attrs)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    cls = spconv.SubMConv3d if subm else spconv.SparseConv3d
    layer = cls(channels, channels, 3, stride=geometry["stride"], padding=geometry["padding"], bias=False)
    with torch.no_grad():  # spconv 2.x weight layout [Cout, kz, ky, kx, Cin], as ours
        layer.weight.copy_(weight)
    layer.eval()

    def run_spconv() -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            out = layer(spconv.SparseConvTensor(features, coords, shape, 1))
        return out.features.numpy(), out.indices.numpy()

    def run_ort() -> tuple[np.ndarray, np.ndarray]:
        out, out_coords, _ = session.run(None, feeds)
        return out, out_coords

    def run_reference() -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            out, out_coords = sparse_conv3d(features, coords, weight, None, shape, subm=subm,
                                            activation="none", **geometry)
        return out.numpy(), out_coords.numpy()

    runners: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
        "ort_function_body": run_ort, "spconv_cpu": run_spconv, "torch_reference": run_reference}
    results = {name: fn() for name, fn in runners.items()}
    for _ in range(warmup - 1):
        for fn in runners.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            runners[name]()
            times[name].append((time.perf_counter() - start) * 1e3)
    out_shape = output_spatial_shape(shape, subm=subm, **geometry)
    ours, our_coords = results["ort_function_body"]
    theirs, their_coords = results["spconv_cpu"]
    same_sites = np.array_equal(sort_by_key(our_coords, our_coords, out_shape),
                                sort_by_key(their_coords, their_coords, out_shape))
    diff = np.abs(sort_by_key(ours, our_coords, out_shape) - sort_by_key(theirs, their_coords, out_shape))
    ref = results["torch_reference"][0]
    medians = {name: round(statistics.median(v), 3) for name, v in times.items()}
    return {
        "layer": "SubMConv3d" if subm else "SparseConv3d stride 2",
        "n_in": int(coords.shape[0]), "n_out": int(ours.shape[0]), "channels": channels,
        "in_shape": shape, "out_shape": out_shape,
        "median_ms": medians,
        "p10_p90_ms": {name: [round(float(np.percentile(v, 10)), 3), round(float(np.percentile(v, 90)), 3)]
                       for name, v in times.items()},
        "ratio_ort_over_spconv": round(medians["ort_function_body"] / medians["spconv_cpu"], 3),
        "same_output_sites": bool(same_sites),
        "max_abs_diff_ort_vs_spconv": float(diff.max()) if diff.size else 0.0,
        "max_abs_diff_ort_vs_reference": float(np.abs(ours - ref).max()) if ref.size else 0.0,
        "max_abs_output": float(np.abs(ref).max()) if ref.size else 0.0,
    }


def machine(load_start: tuple[float, float, float]) -> dict[str, Any]:
    import onnxruntime as ort
    import spconv

    from sparsefuse.targets.profiler import cpu_model_name

    return {"cpu": cpu_model_name(), "cores": os.cpu_count(), "threads": 1, "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": ort.__version__,
            "spconv": getattr(spconv, "__version__", "unknown"),
            "loadavg_start": [round(x, 2) for x in load_start],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxels", type=int, default=20_000)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.reps < 1 or args.warmup < 1:
        parser.error("--reps and --warmup must be >= 1")
    torch.set_num_threads(1)
    load_start = os.getloadavg()
    gen = torch.Generator().manual_seed(args.seed)
    coords, shape = synthetic_voxels(args.voxels, args.seed)
    layers = [measure_layer(subm, coords, shape, args.channels, args.reps, args.warmup, gen)
              for subm in (True, False)]
    print(json.dumps({
        "bench": "sparseconv_cpu", "label": "measured",
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "reps": args.reps, "warmup": args.warmup, "voxels": int(coords.shape[0]), "seed": args.seed,
        "layers": layers, "machine": machine(load_start),
        "note": "wall-clock per call on 1 thread, kernel map rebuilt every call; the machine may be shared",
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
