"""``sparsefuse eval``: BEV mIoU and centre-distance mAP of a checkpoint on held-out synthetic frames."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint on synthetic frames (full, camera-only, LiDAR-only)",
        description="Prints JSON: per mode, BEV IoU per class + mIoU and nuScenes-style mAP "
        "(centre distance 0.5/1/2/4 m). camera_only empties the LiDAR; lidar_only blanks the cameras.",
    )
    parser.add_argument("--model", default="bevfusion-tiny", help="model preset (default bevfusion-tiny)")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="safetensors checkpoint (default models/checkpoints/<model>.safetensors)",
    )
    parser.add_argument(
        "--seeds", default="100000:100100", help="held-out scene seeds (default 100000:100100)"
    )
    parser.add_argument("--modes", default="full,camera_only,lidar_only", help="comma list of modes")
    parser.add_argument("--night", action="store_true", help="force night-like lighting on every frame")
    parser.add_argument("--cache", default="runs/data", help="frame cache directory (default runs/data)")
    parser.add_argument("--workers", type=int, default=2, help="processes generating frames (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import torch

    import sparsefuse.models as models_pkg
    from sparsefuse.atomic import write_json
    from sparsefuse.compiler.commands.data import parse_seeds, preset_rig_for
    from sparsefuse.errors import SparsefuseError
    from sparsefuse.models.presets import build_model
    from sparsefuse.models.synthetic import SyntheticConfig
    from sparsefuse.models.synthetic.dataset import cached_frames
    from sparsefuse.models.train import MODES, evaluate, load_checkpoint

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise SparsefuseError(f"unknown mode(s) {unknown or args.modes!r}", f"choose from {', '.join(MODES)}")
    if args.json:  # before the evaluation, not after it
        from sparsefuse.compiler.cli_inputs import check_out_path

        check_out_path(args.json, "--json", is_dir=False)
    torch.set_num_threads(args.threads)
    ckpt = args.checkpoint or str(
        Path(models_pkg.__file__).parent / "checkpoints" / f"{args.model}.safetensors"
    )
    model = load_checkpoint(build_model(args.model), ckpt)
    config = SyntheticConfig(force_night=True if args.night else None)
    frames = cached_frames(
        parse_seeds(args.seeds), preset_rig_for(args.model), args.cache, config, args.workers
    )
    results = {
        "schema_version": 1,
        "model": args.model,
        "checkpoint": ckpt,
        "seeds": args.seeds,
        "night": args.night,
        "results": [evaluate(model, frames, mode) for mode in modes],
    }
    print(json.dumps(results, indent=2))
    if args.json:
        write_json(args.json, results)
    return 0
