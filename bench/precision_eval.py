"""Issue 15: BEV mIoU and centre-distance mAP of FP32 vs INT8 (and FP16) compiled graphs of a preset on
held-out synthetic frames, run in ONNX Runtime CPU (models/train.py ``evaluate`` with the graph in
place of the torch model). The FP32 graph is OUT/passes/model.onnx of the first compile; each
OUT/precision/model.onnx is that compile's typed graph. Prints JSON.

    OMP_NUM_THREADS=1 python bench/precision_eval.py OUT_INT8 [OUT_FP16 ...] [--frames 32]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch


class GraphModel:
    """``model(images, points) -> (seg, heatmap, boxes)`` through an ORT session; ``rig`` from the preset."""

    def __init__(self, path: Path, rig: Any) -> None:
        from sparsefuse.passes.precision.capture import session

        self.session = session(onnx.load(path), optimize=True)
        self.rig = rig

    def eval(self) -> GraphModel:
        return self

    def __call__(self, images: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feeds = {"images": np.ascontiguousarray(images.numpy()),
                 "points": np.ascontiguousarray(points.numpy())}
        return tuple(torch.from_numpy(a) for a in self.session.run(["seg_logits", "heatmap", "boxes"], feeds))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("outs", type=Path, nargs="+", help="compile --precision artifact directories")
    p.add_argument("--model", default="bevfusion-tiny")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--eval-seeds", default="100000:100100", help="held-out split (sparsefuse eval's default)")
    p.add_argument("--data-cache", default="runs/data")
    p.add_argument("--cache-dir", default=".cache/frames")
    args = p.parse_args()

    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from sparsity_table import load_split

    from sparsefuse.models.presets import build_model
    from sparsefuse.models.train import evaluate

    torch.set_num_threads(1)
    rig = build_model(args.model).rig
    frames = load_split(args.model, args.eval_seeds, args.frames, args)
    graphs = {"fp32": args.outs[0] / "passes" / "model.onnx"}
    for out in args.outs:
        precision = json.loads((out / "precision" / "report.json").read_text())["precision"]
        graphs[f"{precision} ({out.name})"] = out / "precision" / "model.onnx"
    results = {}
    for label, path in graphs.items():
        row = evaluate(GraphModel(path, rig), frames, "full")
        results[label] = {"mIoU": row["mIoU"], "mAP": row["mAP"], "frames": row["frames"]}
    print(json.dumps({"model": args.model, "eval_seeds": args.eval_seeds, "frames": len(frames),
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
