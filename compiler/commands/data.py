"""``sparsefuse data``: synthetic benchmark frames: ``preview`` (PNGs) and ``generate`` (cached .npz)."""

from __future__ import annotations

import argparse
from typing import Any

from sparsefuse.errors import SparsefuseError


def parse_seeds(text: str) -> list[int]:
    """'A:B' -> [A, B) ; 'A,B,C' -> those seeds; 'A' -> [A]."""
    try:
        if ":" in text:
            start, stop = (int(v) for v in text.split(":", 1))
            seeds = list(range(start, stop))
        else:
            seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0:
        raise SparsefuseError(
            f"bad seed list {text!r}", "use START:STOP (e.g. 0:600) or a comma list of seeds >= 0"
        )
    return seeds


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "data",
        help="synthetic camera + LiDAR frames: preview PNGs, cached sets",
        description="Procedural driving frames rendered against a rig.",
    )
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    prev = sub.add_parser(
        "preview", help="write PNGs of one frame (cameras, BEV with LiDAR and boxes, labels)"
    )
    prev.add_argument("--seed", type=int, default=0, help="scene seed")
    prev.add_argument("--out", required=True, help="directory for the PNGs")
    prev.add_argument("--model", default="bevfusion-tiny", help="preset whose rig and grids to use")
    prev.add_argument("--night", action="store_true", help="force night-like lighting")
    prev.add_argument("--size", default=None, help="render the cameras at HxW instead (e.g. 360x640)")
    prev.add_argument("--checkpoint", default=None, help="also draw this checkpoint's detections (dashed)")
    prev.set_defaults(func=run_preview)
    gen = sub.add_parser("generate", help="generate and cache a frame set (.npz) for training / evaluation")
    gen.add_argument("--seeds", required=True, help="START:STOP or a comma list")
    gen.add_argument("--cache", default="runs/data", help="cache directory (default runs/data)")
    gen.add_argument("--model", default="bevfusion-tiny", help="preset whose rig and grids to use")
    gen.add_argument("--night", action="store_true", help="force night-like lighting")
    gen.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    gen.set_defaults(func=run_generate)


def preset_rig_for(model: str):
    from sparsefuse.models.presets import get_preset, preset_rig

    return preset_rig(get_preset(model))


def run_preview(args: argparse.Namespace) -> int:
    from sparsefuse.models.synthetic import SyntheticConfig, make_frame, rig_grid
    from sparsefuse.models.synthetic.preview import write_preview

    if args.seed < 0:
        raise SparsefuseError(f"bad --seed {args.seed}", "scene seeds are integers >= 0")
    rig = preset_rig_for(args.model)
    grid = rig_grid(rig)
    if args.size:
        try:
            height, width = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            raise SparsefuseError(f"bad --size {args.size!r}", "use HxW, e.g. 360x640") from None
        rig = rig.resized(height, width)
    config = SyntheticConfig(force_night=True if args.night else None)
    frame = make_frame(args.seed, rig, grid, config)
    pred_boxes = pred_labels = None
    if args.checkpoint:
        pred_boxes, pred_labels = _detect(args.model, args.checkpoint, args.seed, config)
    for path in write_preview(frame, rig, grid, args.out, pred_boxes, pred_labels):
        print(path)
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from sparsefuse.models.synthetic import SyntheticConfig
    from sparsefuse.models.synthetic.dataset import cached_frames

    seeds = parse_seeds(args.seeds)
    config = SyntheticConfig(force_night=True if args.night else None)
    frames = cached_frames(seeds, preset_rig_for(args.model), args.cache, config, args.workers)
    print(f"{len(frames)} frames in {args.cache}")
    return 0


def _detect(model_name: str, checkpoint: str, seed: int, config):
    """Decoded detections (score > 0.3) of a checkpoint on the network-size frame of ``seed``."""
    import torch

    from sparsefuse.models.metrics import decode
    from sparsefuse.models.presets import build_model
    from sparsefuse.models.synthetic import make_frame
    from sparsefuse.models.train import load_checkpoint, sensor_inputs

    model = load_checkpoint(build_model(model_name), checkpoint)
    frame = make_frame(seed, model.rig, None, config)
    with torch.no_grad():
        _, heat, boxes = model(*sensor_inputs(frame))
    det = decode(heat, boxes, model.rig.bev_range, model.rig.bev_cell, score_threshold=0.3)
    return det.boxes, det.labels
