"""Issue 14: OBS reconstruction vs magnitude masking as the within-layer operator, one-shot.

Same analysis and allocation for both operators (RD-Prune DP at one parameter budget); reports the
sensitivity wall time (Hessian collection included for OBS), the DP objective, the achieved sparsity
and BEV mIoU / detection mAP on held-out synthetic frames. CPU, 1 torch thread.

    OMP_NUM_THREADS=1 python bench/sparsity_obs.py --calib 3 --levels 11 --eval-frames 12 --budget 0.25
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

sys.path.insert(0, str(Path(__file__).parent))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bevfusion-tiny")
    p.add_argument("--checkpoint", default="models/checkpoints/bevfusion-tiny.safetensors")
    p.add_argument("--budget", type=float, default=0.25, help="fraction of prunable parameters kept")
    p.add_argument("--allocator", default="rdprune")
    p.add_argument("--pattern", default="unstructured")
    p.add_argument("--operators", default="magnitude,obs")
    p.add_argument("--calib", type=int, default=3)
    p.add_argument("--levels", type=int, default=11)
    p.add_argument("--eval-frames", type=int, default=12)
    p.add_argument("--train-seeds", default="0:600")
    p.add_argument("--eval-seeds", default="100000:100100")
    p.add_argument("--data-cache", default="runs/data")
    p.add_argument("--cache-dir", default=".cache/frames")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    from sparsity_table import load_split

    from sparsefuse.models import train
    from sparsefuse.models.presets import build_model
    from sparsefuse.passes.sparsity.analysis import analyze
    from sparsefuse.passes.sparsity.config import SparsityConfig
    from sparsefuse.passes.sparsity.decide import decide, final_masks
    from sparsefuse.passes.sparsity.reconstruct import reconstructed_weights

    model = build_model(args.model)
    train.load_checkpoint(model, args.checkpoint)
    model.eval()
    calib = load_split(args.model, args.train_seeds, args.calib, args)
    held_out = load_split(args.model, args.eval_seeds, args.eval_frames, args)

    def forward(m, frame):
        return m(*train.sensor_inputs(frame))

    def evaluate(m) -> dict:
        r = train.evaluate(m, held_out)
        return {"mIoU": r["mIoU"], "mAP": r["mAP"]}

    rows = [{"operator": "unpruned", "metrics": evaluate(model)}]
    weights = {n: q.detach() for n, q in model.named_parameters()}
    for op in args.operators.split(","):
        t0 = time.perf_counter()
        analysis = analyze(
            copy.deepcopy(model), calib, args.pattern, args.levels, forward=forward, operator=op
        )
        analysis_s = time.perf_counter() - t0
        config = SparsityConfig(allocator=args.allocator, budget=args.budget, pattern=args.pattern,
                                levels=args.levels, calib=args.calib, operator=op)
        decision = decide(analysis, weights, config)
        recon = (reconstructed_weights(analysis.operator, analysis.layers, weights, decision.candidates)
                 if analysis.operator is not None else {})
        new = weights | recon
        masks = final_masks(analysis, new, decision.candidates)
        pruned = copy.deepcopy(model)
        with torch.no_grad():
            for name, value in recon.items():
                pruned.get_parameter(name).copy_(value)
        train.apply_masks(pruned, masks)
        # Parameter sparsity over all prunable layers (layers left dense count as kept).
        kept = sum(int(masks[la.name].sum()) if la.name in masks else la.params for la in analysis.layers)
        total = sum(la.params for la in analysis.layers)
        counts = analysis.sensitivity.forward_counts
        rows.append({
            "operator": op,
            "analysis_s": analysis_s,
            "sensitivity_s": analysis.sensitivity.seconds,
            "hessian_s": counts.get("hessian_seconds", 0.0),
            "objective_distortion": float(sum(decision.distortion)),
            "achieved_sparsity": 1.0 - kept / max(total, 1),
            "levels_chosen": {
                la.name: c.level for la, c in zip(analysis.layers, decision.candidates, strict=True)
            },
            "metrics": evaluate(pruned),
        })
        print(f"{op}: analysis {analysis_s:.1f} s, {rows[-1]['metrics']}", file=sys.stderr)
    result = {"bench": "sparsity_obs", "machine": platform.node(), "args": vars(args), "rows": rows}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
