"""Mixed precision by the DP on a preset: a mixed {fp16, int8} x {dense, 2:4} plan under a latency budget
vs all-fp16-dense and all-int8-dense.

Latency: the cost model's roofline estimate on ``--target`` (labelled estimated, with the cost model's
name and version), summed over the layers with weights (the allocator's table). Distortion: the
allocator's predicted Σδ (consumer space). ORT CPU error: the plan applied (2:4 masks on the torch
weights, re-export, Q/DQ on the chosen layers only, ``max`` calibration, ORT's uint8 activations), run
in ONNX Runtime CPU against the FP32 graph; worst max|a-b| / max|ref| per output over the frames.
The mixed / all-int8 ORT graphs keep the non-int8 layers in FP32 (no fp16 conversion); the all-fp16
row is the precision stage's fp16 graph (with its FP32 islands). ``--budget 0.85,0.9``: one δ
measurement, one solve per budget.

    python bench/mixed_precision.py --weights models/checkpoints/bevfusion-tiny.safetensors --budget 0.6
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import sys
import time

import numpy as np
import onnx
import torch


def _export(model: torch.nn.Module, frame: dict) -> onnx.ModelProto:
    from sparsefuse.passes.cleanup import cleanup
    from sparsefuse.passes.export import export_model
    from sparsefuse.passes.manager import PassContext

    return cleanup(export_model(model, frame), PassContext())


def _ort_error(fp32: onnx.ModelProto, model: onnx.ModelProto, frames: list[dict]) -> dict[str, float]:
    from sparsefuse.passes.precision import capture, islands

    outputs = [o.name for o in fp32.graph.output]
    ref = capture.capture(fp32, frames, outputs)
    sess = capture.session(model, optimize=False)
    names = [i.name for i in model.graph.input]
    worst = {o: 0.0 for o in outputs}
    for f, frame in enumerate(frames):
        got = sess.run(outputs, {k: np.ascontiguousarray(frame[k]) for k in names})
        for o, value in zip(outputs, got, strict=True):
            worst[o] = max(worst[o], islands.relative_error(np.asarray(value), ref[o][f]))
    return worst


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bevfusion-tiny")
    p.add_argument("--weights", default="models/checkpoints/bevfusion-tiny.safetensors")
    p.add_argument("--target", default="jetson/agx-orin-64gb")
    p.add_argument("--budget", default="0.6", help="fraction of all-fp16-dense, or e.g. 3ms")
    p.add_argument("--calib", type=int, default=4, help="calibration frames (δ and amax)")
    p.add_argument("--verify", type=int, default=4, help="held-out frames for the ORT error")
    args = p.parse_args()
    torch.set_num_threads(1)
    from sparsefuse.models import train
    from sparsefuse.models.frames import random_frame
    from sparsefuse.models.presets import build_model, get_preset, preset_spec
    from sparsefuse.passes.precision import mixed
    from sparsefuse.passes.precision.config import PrecisionConfig
    from sparsefuse.passes.precision.stage import run_precision_stage
    from sparsefuse.passes.sparsity.allocate import solve_mckp
    from sparsefuse.passes.sparsity.calib import consumer_forward, default_forward
    from sparsefuse.targets.registry import get_target

    model = build_model(args.model).eval()
    train.load_checkpoint(model, args.weights)
    preset = get_preset(args.model)
    calib = [{k: torch.as_tensor(v) for k, v in random_frame(preset, s).items()} for s in range(args.calib)]
    verify = [{k: np.asarray(v) for k, v in random_frame(preset, 100_000 + s).items()}
              for s in range(args.verify)]
    target = get_target(args.target)
    fp32 = _export(model, calib[0])
    table = mixed.estimated_table(fp32, target)
    forward = consumer_forward(default_forward, list(preset_spec(args.model).outputs))
    budgets = [mixed.parse_budget(b) for b in args.budget.split(",")]
    t0 = time.perf_counter()
    first = mixed.allocate_mixed(model, calib, forward, table, budgets[0],
                                 latency_source=mixed.estimated_source(target))
    alloc_s = time.perf_counter() - t0
    np_calib = [{k: np.asarray(v) for k, v in f.items()} for f in calib]
    int8_keys = [[c.key for c in row].index("int8/dense@0") if any(c.precision == "int8" for c in row) else 0
                 for row in first.candidates]
    all_int8 = {"estimated_ms": sum(r[k] for r, k in zip(first.costs, int8_keys, strict=True)),
                "predicted_distortion": sum(r[k] for r, k in zip(first.distortion, int8_keys, strict=True))}
    all_int8_onnx = mixed.quantize_selected(fp32, None, np_calib, "onnxruntime")
    fp16 = run_precision_stage(fp32, PrecisionConfig("fp16"), np_calib, "tensorrt")
    result = {
        "bench": "mixed_precision", "machine": platform.node(), "args": vars(args),
        "latency_label": "estimated", "cost_model": first.latency_source["cost_model"], "target": target.tag,
        "allocate_seconds": alloc_s,
        "all_fp16_dense": {"estimated_ms": first.reference_ms, "predicted_distortion": 0.0,
                           "fp32_islands": len(fp16.report["islands"]),
                           "ort_cpu_error": _ort_error(fp32, fp16.model, verify)},
        "all_int8_dense": {**all_int8, "ort_cpu_error": _ort_error(fp32, all_int8_onnx, verify)},
        "mixed": [],
    }
    for budget in budgets:
        ms = budget.resolve(first.reference_ms)
        plan = dataclasses.replace(first, budget_ms=ms,
                                   allocation=solve_mckp(first.costs, first.distortion, ms))
        doc = plan.to_dict()
        sparse_model = copy.deepcopy(model)
        mixed.apply_mixed_torch(sparse_model, plan)
        mixed_onnx = mixed.quantize_selected(_export(sparse_model, calib[0]), plan.int8_layers(), np_calib,
                                             "onnxruntime")
        result["mixed"].append({
            "budget_ms": plan.budget_ms, "budget_fraction": ms / first.reference_ms,
            "estimated_ms": plan.allocation.total_cost,
            "predicted_distortion": plan.allocation.total_distortion, "counts": doc["counts"],
            "ort_cpu_error": _ort_error(fp32, mixed_onnx, verify),
            "plan": {k: v["key"] for k, v in doc["layers"].items()}})
    print(json.dumps(result, indent=2))
    print(f"allocated in {alloc_s:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
