"""``sparsefuse train``: train a reference preset on a cached synthetic frame set (CPU)."""

from __future__ import annotations

import argparse
import time
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a reference model on synthetic frames and write a safetensors checkpoint",
        description="Pre-generates (or loads) the training frames, trains with modality dropout on CPU "
        "and writes the parameters as safetensors. Same arguments -> same checkpoint.",
    )
    parser.add_argument("--model", default="bevfusion-tiny", help="model preset (default bevfusion-tiny)")
    parser.add_argument("--out", required=True, help="checkpoint path (.safetensors)")
    parser.add_argument("--seeds", default="0:600", help="training scene seeds, START:STOP (default 0:600)")
    parser.add_argument("--steps", type=int, default=500, help="optimizer steps, batch 1 (default 500)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the init, order and dropout (default 0)")
    parser.add_argument("--drop-camera", type=float, default=0.15, help="P(blank cameras) per step")
    parser.add_argument("--drop-lidar", type=float, default=0.15, help="P(empty LiDAR) per step")
    parser.add_argument("--depth-weight", type=float, default=1.0,
                        help="weight of the LiDAR depth supervision of the camera depth net (0 = off)")
    parser.add_argument("--semantic-weight", type=float, default=0.0,
                        help="weight of the image semantic auxiliary loss (LiDAR-projected labels; 0 = off)")
    parser.add_argument("--cache", default="runs/data", help="frame cache directory (default runs/data)")
    parser.add_argument("--workers", type=int, default=2, help="processes generating frames (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--init", default=None, help="start from this checkpoint instead of the seeded init")
    parser.add_argument("--history", default=None, help="also write the per-step losses to this JSON file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    import torch

    from sparsefuse.atomic import write_json
    from sparsefuse.compiler.commands.data import parse_seeds, preset_rig_for
    from sparsefuse.errors import SparsefuseError
    from sparsefuse.models.presets import build_model
    from sparsefuse.models.synthetic.dataset import cached_frames
    from sparsefuse.models.train import TrainConfig, load_checkpoint, save_checkpoint, train

    if args.steps < 1 or args.lr <= 0:
        raise SparsefuseError("--steps must be >= 1 and --lr > 0", "e.g. --steps 500 --lr 2e-3")
    torch.set_num_threads(args.threads)
    seeds = parse_seeds(args.seeds)
    t0 = time.perf_counter()
    frames = cached_frames(seeds, preset_rig_for(args.model), args.cache, workers=args.workers)
    print(f"{len(frames)} training frames ready in {time.perf_counter() - t0:.0f}s", flush=True)
    model = build_model(args.model, seed=args.seed)
    if args.init:
        load_checkpoint(model, args.init)
    config = TrainConfig(
        steps=args.steps, lr=args.lr, seed=args.seed, drop_camera=args.drop_camera,
        drop_lidar=args.drop_lidar, depth_weight=args.depth_weight, semantic_weight=args.semantic_weight,
    )
    t1 = time.perf_counter()
    history = train(model, frames, config, log=lambda line: print(line, flush=True))
    train_s = time.perf_counter() - t1
    command = "sparsefuse train " + " ".join(
        f"--{k.replace('_', '-')} {v}"
        for k, v in sorted(vars(args).items())
        if k not in ("func", "command") and v is not None
    )
    meta = {
        "model": args.model,
        "seeds": args.seeds,
        "steps": str(args.steps),
        "seed": str(args.seed),
        "lr": str(args.lr),
        "train_seconds": f"{train_s:.0f}",
        "command": command,
    }
    save_checkpoint(model, args.out, meta)
    if args.history:
        write_json(args.history, {"schema_version": 1, **meta, "history": history})
    print(
        json.dumps(
            {
                "checkpoint": args.out,
                "train_seconds": round(train_s),
                "final_loss": sum(h["loss"] for h in history[-25:]) / min(25, len(history)),
            }
        )
    )
    return 0
