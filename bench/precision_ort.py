"""Issue 15: ORT CPU latency of FP32 vs INT8 (QDQ) on the DENSE part of a compiled preset, side by side
in one run, plus the INT8 part's error against FP32.

The dense part is the graph without the sparse-conv function bodies: the camera branch (images ->
depth softmax and context features, up to BEVPool) and the BEV encoder / heads (BEVPool and
ScatterDense outputs -> seg_logits, heatmap, boxes), cut from OUT/passes/model.onnx (FP32) and
OUT/precision/model.onnx (INT8) of one `sparsefuse compile --precision int8` at the same tensor names.
FP32 and INT8 runs alternate (one of each per iteration) so both see the same machine load. ORT with
all graph optimizations (as the cpu build), one intra-op thread. Prints JSON.

    sparsefuse compile --model bevfusion-tiny --target cpu --precision int8 --out OUT \
        --weights models/checkpoints/bevfusion-tiny.safetensors
    OMP_NUM_THREADS=1 python bench/precision_ort.py OUT [--runs 30]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx.utils import Extractor

PARTS = {"camera": (["images"], ["softmax", "permute"]),
         "bev_heads": (["bev_pool", "scatter_dense"], ["seg_logits", "heatmap", "boxes"])}


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _cut(path: Path, inputs: list[str], outputs: list[str]) -> onnx.ModelProto:
    model = onnx.shape_inference.infer_shapes(onnx.load(path))
    return Extractor(model).extract_model(inputs, outputs)


def _whole_graph(out: Path, feeds: dict, runs: int, warmup: int) -> dict:
    """The whole graph (sparse-conv function bodies attached), FP32 vs INT8, alternating runs."""
    from sparsefuse.passes.precision.capture import session

    sessions = {"fp32": session(onnx.load(out / "passes" / "model.onnx"), optimize=True),
                "int8": session(onnx.load(out / "precision" / "model.onnx"), optimize=True)}
    for s in sessions.values():
        for _ in range(warmup):
            s.run(None, feeds)
    times: dict[str, list[float]] = {"fp32": [], "int8": []}
    for _ in range(runs):
        for key, s in sessions.items():
            start = time.perf_counter()
            s.run(None, feeds)
            times[key].append((time.perf_counter() - start) * 1e3)
    medians = {k: statistics.median(v) for k, v in times.items()}
    return {"median_ms": medians, "ratio_fp32_over_int8": medians["fp32"] / medians["int8"], "runs": runs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="a compile --precision int8 artifact directory")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()

    from sparsefuse.passes.precision.capture import capture

    fp32_full = onnx.load(args.out / "passes" / "model.onnx")
    frames = json.loads((args.out / "verify" / "inputs.json").read_text())
    from polygraphy.json import from_json

    feeds = from_json(json.dumps(frames))[0]
    names = [n for part in PARTS.values() for n in part[0]]
    tensors = capture(fp32_full, [dict(feeds)], names)  # the dense parts' inputs on a verify frame
    result: dict = {"machine": platform.processor() or platform.machine(), "onnxruntime": ort.__version__,
                    "threads": 1, "runs": args.runs, "parts": {}}
    totals = {"fp32": [], "int8": []}
    for part, (inputs, outputs) in PARTS.items():
        models = {"fp32": _cut(args.out / "passes" / "model.onnx", inputs, outputs),
                  "int8": _cut(args.out / "precision" / "model.onnx", inputs, outputs)}
        sessions = {k: _session(m) for k, m in models.items()}
        part_feeds = {n: tensors[n][0] for n in inputs}
        for s in sessions.values():
            for _ in range(args.warmup):
                s.run(None, part_feeds)
        times: dict[str, list[float]] = {"fp32": [], "int8": []}
        for _ in range(args.runs):
            for key, s in sessions.items():
                start = time.perf_counter()
                s.run(None, part_feeds)
                times[key].append((time.perf_counter() - start) * 1e3)
        ref, got = sessions["fp32"].run(None, part_feeds), sessions["int8"].run(None, part_feeds)
        medians = {k: statistics.median(v) for k, v in times.items()}
        for k in totals:
            totals[k].append(times[k])
        result["parts"][part] = {
            "median_ms": medians, "ratio_fp32_over_int8": medians["fp32"] / medians["int8"],
            "qdq_nodes": sum(n.op_type == "QuantizeLinear" for n in models["int8"].graph.node),
            "max_rel_error": {o: float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(a))), 1e-30))
                              for o, a, b in zip(outputs, ref, got, strict=True)}}
    result["whole_graph"] = _whole_graph(args.out, dict(feeds), max(5, args.runs // 3), args.warmup)
    summed = {k: statistics.median([sum(x) for x in zip(*v, strict=True)]) for k, v in totals.items()}
    result["dense_total_median_ms"] = summed
    result["dense_total_ratio"] = summed["fp32"] / summed["int8"]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
