"""The SparseConv3d ONNX body's two site lookups on one CPU thread, per layer of a preset: dense index
table, sort, and the shipped body (table up to TABLE_MAX_CELLS grid cells, else sort).

    python bench/sparseconv_lookup.py [--model bevfusion-tiny] [--reps 11]

Inputs are the real ones: the preset's forward on a random frame is traced and every
``sparse_conv3d`` call is rebuilt as a one-node ONNX model. Each variant is the same function body
built with a different ``table_max_cells`` (2**62: always the table, 0: always the sort). Prints JSON:
median ms per layer and variant (measured, ORT intra-op 1), totals, and whether all variants gave
bit-identical outputs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import time
from typing import Any

import numpy as np

VARIANTS = {"table": 2**62, "sort": 0, "shipped": None}


def run(model_name: str, reps: int, seed: int) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    from sparsefuse.models.frames import random_frame
    from sparsefuse.models.presets import build_model, get_preset
    from sparsefuse.passes.sparsity.trace import trace_forward
    from sparsefuse.plugins import onnx_ops
    from sparsefuse.plugins.sparse_conv3d.function import TABLE_MAX_CELLS, function_proto

    torch.set_num_threads(1)
    model = build_model(model_name, seed=0).eval()
    frame = random_frame(get_preset(model_name), seed=seed)
    with torch.inference_mode():
        trace, _ = trace_forward(model, lambda: model(frame["images"], frame["points"]))
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    layers, totals = [], dict.fromkeys(VARIANTS, 0.0)
    for call in (c for c in trace.calls if c.op == "sparse_conv3d"):
        features, coords, weight, bias, shape, kernel, stride, padding, dilation, subm, act = call.args
        feeds = {"features": features.numpy(), "coords": coords.numpy(), "weight": weight.detach().numpy()}
        if bias is not None:
            feeds["bias"] = bias.detach().numpy()
        attrs = {"spatial_shape": list(shape), "kernel_size": list(kernel), "stride": list(stride),
                 "padding": list(padding), "dilation": list(dilation), "subm": bool(subm), "activation": act}
        sessions = {}
        for name, cells in VARIANTS.items():
            one = onnx_ops.single_node_model("SparseConv3d", feeds, attrs)
            del one.functions[:]
            one.functions.append(function_proto(18, TABLE_MAX_CELLS if cells is None else cells))
            sessions[name] = ort.InferenceSession(one.SerializeToString(), options,
                                                  providers=["CPUExecutionProvider"])
        outputs = {name: s.run(None, feeds) for name, s in sessions.items()}
        identical = all(np.array_equal(a, b) for name in VARIANTS
                        for a, b in zip(outputs["table"], outputs[name], strict=True))
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        names = list(VARIANTS)
        for rep in range(reps):
            for name in names if rep % 2 == 0 else names[::-1]:
                start = time.perf_counter()
                sessions[name].run(None, feeds)
                times[name].append((time.perf_counter() - start) * 1e3)
        medians = {name: round(statistics.median(v), 2) for name, v in times.items()}
        for name, value in medians.items():
            totals[name] += value
        layers.append({"n_in": int(coords.shape[0]), "n_out": int(outputs["table"][0].shape[0]),
                       "grid": list(shape), "subm": bool(subm), "cin": int(weight.shape[-1]),
                       "cout": int(weight.shape[0]), "median_ms": medians, "bit_identical": identical})
    return {"bench": "sparseconv_lookup", "label": "measured",
            "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "model": model_name, "frame_seed": seed, "reps": reps, "table_max_cells": TABLE_MAX_CELLS,
            "layers": layers, "total_median_ms": {k: round(v, 1) for k, v in totals.items()},
            "ratio_sort_over_table": round(totals["sort"] / totals["table"], 3),
            "ratio_shipped_over_table": round(totals["shipped"] / totals["table"], 3),
            "loadavg_end": [round(x, 2) for x in os.getloadavg()]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bevfusion-tiny")
    parser.add_argument("--reps", type=int, default=11)
    parser.add_argument("--seed", type=int, default=10_000)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.model, args.reps, args.seed), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
