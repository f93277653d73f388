"""MMPrune4U Tables 1–3 analogue on the synthetic benchmark: BEV mIoU and detection mAP of
bevfusion-tiny, unpruned and pruned by uniform / global / LAMP / ERK / RD-Prune / MMPrune4U at
50 / 75 / 83 % parameter sparsity, one-shot and after a short fine-tune (same steps for all), plus
solve times and the per-site λ (which modality's features the regularizer protected).

One Analysis (δᵈ curves + feature-site statistics) is measured once on the calibration frames and
shared by every allocator and budget. Prints JSON (and a markdown table to stderr). CPU, 1 thread.

    python bench/sparsity_table.py --checkpoint models/checkpoints/bevfusion-tiny.safetensors \
        [--calib 4] [--levels 11] [--eval-frames 16] [--finetune-steps 20]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch

ALLOCATORS = ("uniform", "global", "lamp", "erk", "rdprune", "mmprune4u")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bevfusion-tiny")
    p.add_argument("--checkpoint", default="models/checkpoints/bevfusion-tiny.safetensors")
    p.add_argument(
        "--untrained", action="store_true", help="smoke run on seeded init weights (no checkpoint)"
    )
    p.add_argument("--sparsities", default="0.5,0.75,0.83")
    p.add_argument("--calib", type=int, default=4)
    p.add_argument("--levels", type=int, default=11)
    p.add_argument("--betas", default="1", help="MMPrune4U β values (one mmprune4u row per β)")
    p.add_argument("--allocators", default=",".join(ALLOCATORS))
    p.add_argument("--train-seeds", default="0:600", help="the checkpoint's training split (calibration)")
    p.add_argument("--eval-seeds", default="100000:100100", help="held-out split (sparsefuse eval's default)")
    p.add_argument(
        "--data-cache", default="runs/data", help="frame cache written by sparsefuse data/train/eval"
    )
    p.add_argument("--eval-frames", type=int, default=16)
    p.add_argument("--finetune-frames", type=int, default=8)
    p.add_argument("--finetune-steps", type=int, default=20)
    p.add_argument("--finetune-lr", type=float, default=5e-4)
    p.add_argument("--cache-dir", default=".cache/frames", help="cache for frames not in --data-cache")
    p.add_argument("--out", default=None, help="also write the JSON here")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    torch.set_num_threads(1)
    from sparsefuse.errors import SparsefuseError
    from sparsefuse.models import train
    from sparsefuse.models.presets import build_model
    from sparsefuse.passes.sparsity.analysis import analyze
    from sparsefuse.passes.sparsity.config import SparsityConfig
    from sparsefuse.passes.sparsity.decide import decide, final_masks
    from sparsefuse.passes.sparsity.stage import build_plan

    model = build_model(args.model)
    if not args.untrained:
        if not Path(args.checkpoint).is_file():
            print(json.dumps({"bench": "sparsity_table", "error": f"checkpoint {args.checkpoint} missing"}))
            return 2
        train.load_checkpoint(model, args.checkpoint)
    model.eval()
    start = time.perf_counter()
    calib = load_split(args.model, args.train_seeds, max(args.calib, args.finetune_frames), args)
    held_out = load_split(args.model, args.eval_seeds, args.eval_frames, args)
    frames_s = time.perf_counter() - start

    def forward(m, frame):
        return m(*train.sensor_inputs(frame))

    def evaluate(m) -> dict:
        r = train.evaluate(m, held_out)
        return {"mIoU": r["mIoU"], "mAP": r["mAP"]}

    rows = [{"allocator": "unpruned", "sparsity": 0.0, "one_shot": evaluate(model)}]
    t0 = time.perf_counter()
    analysis = analyze(model, calib[: args.calib], "unstructured", args.levels, forward=forward)
    analysis_s = time.perf_counter() - t0
    weights = {n: p.detach() for n, p in model.named_parameters()}
    for sparsity in (float(s) for s in args.sparsities.split(",")):
        runs = [(a, 1.0) for a in args.allocators.split(",") if a != "mmprune4u"]
        if "mmprune4u" in args.allocators.split(","):
            runs += [("mmprune4u", float(b)) for b in args.betas.split(",")]
        for allocator, beta in runs:
            config = SparsityConfig(
                allocator=allocator,
                budget=round(1.0 - sparsity, 6),
                beta=beta,
                levels=args.levels,
                calib=args.calib,
            )
            t1 = time.perf_counter()
            try:
                decision = decide(analysis, weights, config)
            except SparsefuseError as err:
                rows.append({"allocator": allocator, "sparsity": sparsity, "error": err.one_line()})
                continue
            solve_s = time.perf_counter() - t1
            plan = build_plan(analysis, decision, config, weights, analysis.sensitivity.forward_counts)
            masks = final_masks(analysis, weights, decision.candidates)
            pruned = copy.deepcopy(model)
            train.apply_masks(pruned, masks)
            row = {
                "allocator": allocator,
                "beta": config.effective_beta,
                "sparsity": sparsity,
                "achieved_sparsity": plan.achieved_sparsity,
                "solve_s": solve_s,
                "one_shot": evaluate(pruned),
                "site_lambda": plan.site_lambda,
                "objective_distortion": float(sum(decision.distortion)),
            }
            if args.finetune_steps > 0:
                train.finetune(
                    pruned, calib[: args.finetune_frames], masks, args.finetune_steps, args.finetune_lr
                )
                row["finetuned"] = evaluate(pruned)
            rows.append(row)
            print(
                f"{_label(row)} @ {sparsity}: {row['one_shot']} -> {row.get('finetuned')}",
                file=sys.stderr,
            )
    result = {
        "bench": "sparsity_table",
        "machine": platform.node(),
        "model": args.model,
        "checkpoint": None if args.untrained else args.checkpoint,
        "untrained": args.untrained,
        "calib_frames": args.calib,
        "levels": args.levels,
        "betas": args.betas,
        "eval_frames": args.eval_frames,
        "eval_seeds": args.eval_seeds,
        "train_seeds": args.train_seeds,
        "finetune": {"steps": args.finetune_steps, "lr": args.finetune_lr, "frames": args.finetune_frames},
        "frames_s": frames_s,
        "analysis_s": analysis_s,
        "forward_counts": analysis.sensitivity.forward_counts,
        "rows": rows,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(markdown(rows), file=sys.stderr)
    return 0


def load_split(model: str, seeds_text: str, take: int, args: argparse.Namespace) -> list[dict]:
    """The first ``take`` frames of a seed split: sliced from the whole split's cache file when the
    trainer/evaluator already rendered it, else rendered (and cached) for those seeds only."""
    from sparsefuse.compiler.commands.data import parse_seeds, preset_rig_for
    from sparsefuse.models.synthetic.dataset import cache_key, cached_frames, load_frames
    from sparsefuse.models.synthetic.generate import SyntheticConfig

    seeds, rig = parse_seeds(seeds_text), preset_rig_for(model)
    whole = Path(args.data_cache) / f"frames-{cache_key(seeds, rig, SyntheticConfig())}.npz"
    if whole.is_file():
        return load_frames(whole)[:take]
    return cached_frames(seeds[:take], rig, args.cache_dir)


def _label(row: dict) -> str:
    return f"mmprune4u β={row['beta']:g}" if row["allocator"] == "mmprune4u" else row["allocator"]


def markdown(rows: list[dict]) -> str:
    lines = [
        "| allocator | sparsity | achieved | mIoU one-shot | mAP one-shot | mIoU fine-tuned | mAP fine-tuned "
        "| solve s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['allocator']} | {r['sparsity']:g} | {r['error']} | | | | | |")
            continue
        one, ft = r["one_shot"], r.get("finetuned") or {}
        lines.append(
            f"| {_label(r)} | {r['sparsity']:g} | {r.get('achieved_sparsity', 0.0):.4f} "
            f"| {one['mIoU']:.4f} "
            f"| {one['mAP']:.4f} | {ft.get('mIoU', float('nan')):.4f} | {ft.get('mAP', float('nan')):.4f} "
            f"| {r.get('solve_s', 0.0):.4f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
