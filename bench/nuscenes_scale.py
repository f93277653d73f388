"""A user model at real nuScenes scale through ``sparsefuse compile --target cpu``.

The LiDAR branch of BEVFusion's nuScenes setup, written as a user would with spconv 2.x: voxels of
0.075 x 0.075 x 0.2 m over [-54, 54] x [-54, 54] x [-5, 3] m, so ``sparse_shape`` is 41 x 1440 x
1440, with about 60k non-empty voxels per frame; an mmdet3d SparseEncoder-style backbone (SubM
input conv, 4 stages, strided SparseConv3d downsampling with mixed paddings, a (3,1,1) / (2,1,1)
output conv, conv -> BatchNorm1d -> ReLU everywhere) and ``.dense()`` to BEV [1, 256, 180, 180].

    python bench/nuscenes_scale.py --out build/nuscenes-scale [--voxels 60000] [--frames 3]

writes the frames (one .npz each) and runs the CLI under /usr/bin/time, printing JSON with the wall
time and the peak resident memory (measured, this machine). The factory is ``build`` in this file.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "models"))
from building_blocks import init_weights, sparse_block  # noqa: E402

SPARSE_SHAPE = (41, 1440, 1440)  # (Z, Y, X): 40 voxels of 0.2 m plus one, as BEVFusion
POINT_RANGE = (-54.0, -54.0, -5.0, 54.0, 54.0, 3.0)
VOXEL_SIZE = (0.075, 0.075, 0.2)
IN_CHANNELS = 5  # x, y, z, intensity, time lag
# (channels, padding of the stride-2 conv that opens the stage); stage 0 has none
STAGES = (((16,), None), ((32, 32, 32), 1), ((64, 64, 64), 1), ((128, 128, 128), (0, 1, 1)))
OUT_CHANNELS = 128


class NuScenesSparseEncoder(nn.Module):
    """voxel_features [N,5] f32, voxel_coords [N,4] i32 (b,z,y,x) -> BEV [1, 256, 180, 180]."""

    def __init__(self) -> None:
        import spconv.pytorch as spconv

        super().__init__()
        self.conv_input = sparse_block(IN_CHANNELS, 16, 3, padding=1, key="subm1")
        layers, c_in = [], 16
        for i, (channels, down_padding) in enumerate(STAGES):
            blocks = []
            for j, c_out in enumerate(channels):
                if down_padding is not None and j == 0:
                    blocks.append(sparse_block(c_in, c_out, 3, stride=2, padding=down_padding, subm=False,
                                         key=f"spconv{i + 1}"))
                else:
                    blocks.append(sparse_block(c_in, c_out, 3, padding=1, key=f"subm{i + 1}"))
                c_in = c_out
            layers.append(spconv.SparseSequential(*blocks))
        self.encoder_layers = spconv.SparseSequential(*layers)
        self.conv_out = sparse_block(c_in, OUT_CHANNELS, (3, 1, 1), stride=(2, 1, 1), subm=False,
                                     key="spconv_down2")

    def forward(self, voxel_features: torch.Tensor, voxel_coords: torch.Tensor) -> torch.Tensor:
        import spconv.pytorch as spconv

        x = spconv.SparseConvTensor(voxel_features, voxel_coords, list(SPARSE_SHAPE), 1)
        x = self.conv_out(self.encoder_layers(self.conv_input(x)))
        dense = x.dense()
        n, c, d, h, w = dense.shape
        return dense.view(n, c * d, h, w)


def build(seed: int = 0) -> nn.Module:
    """Deterministic He-scaled weights and non-trivial BatchNorm statistics."""
    return init_weights(NuScenesSparseEncoder(), seed)


def make_frame(seed: int, voxels: int) -> dict[str, np.ndarray]:
    """About ``voxels`` non-empty voxels of a LiDAR-like sweep (ground, objects, walls), mean point
    features per voxel, as a hard voxelizer + mean VFE would give them."""
    from sparsefuse.models.frames import random_points
    from sparsefuse.models.presets import get_preset

    rng = np.random.default_rng(seed)
    preset = get_preset("bevfusion-base")
    points = random_points(rng, preset, int(voxels * 1.6))
    features, coords, _ = torch.ops.sparsefuse.voxelize(points, list(POINT_RANGE), list(VOXEL_SIZE), 10**7)
    keep = np.sort(rng.permutation(features.shape[0])[:voxels])
    lag = np.zeros((keep.size, 1), np.float32)
    return {"voxel_features": np.concatenate([features.numpy()[keep], lag], axis=1).astype(np.float32),
            "voxel_coords": np.ascontiguousarray(coords.numpy()[keep])}


def _peak_rss_mb(stderr: str) -> float | None:
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    return int(match.group(1)) / 1024 if match else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build/nuscenes-scale")
    parser.add_argument("--voxels", type=int, default=60000)
    parser.add_argument("--frames", type=int, default=3, help="frames written (the first exports)")
    args = parser.parse_args()
    root = Path(args.out)
    frames = root / "frames"
    frames.mkdir(parents=True, exist_ok=True)
    counts = []
    for i in range(args.frames):
        frame = make_frame(i, args.voxels - 997 * i)  # voxel counts differ between frames
        np.savez(frames / f"{i:03d}.npz", **frame)
        counts.append(int(frame["voxel_coords"].shape[0]))
    command = [sys.executable, "-m", "sparsefuse.compiler.cli", "compile", "--model", f"{__file__}:build",
               "--frames", str(frames), "--target", "cpu", "--out", str(root / "out"),
               "--verify-frames", str(args.frames - 1)]
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", done.stderr)
    record = root / "out" / "compile.json"
    stages = json.loads(record.read_text())["timings_s"] if record.is_file() else {}
    verify = root / "out" / "verify.json"
    print(json.dumps({
        "label": "measured", "machine": platform.processor() or platform.machine(),
        "sparse_shape": SPARSE_SHAPE, "voxels_per_frame": counts, "exit_code": done.returncode,
        "wall": wall.group(1) if wall else None, "peak_rss_mb": _peak_rss_mb(done.stderr),
        "stage_s": stages,
        "verify_pass": json.loads(verify.read_text())["pass"] if verify.is_file() else None,
        "stderr_tail": done.stderr.strip().splitlines()[-3:] if done.returncode else [],
    }, indent=2))


if __name__ == "__main__":
    main()
