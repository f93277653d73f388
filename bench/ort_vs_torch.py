"""PyTorch eager vs the compiled ONNX Runtime model of a preset on this CPU: median latency.

Interleaved in one run on the same frames (torch and ORT alternate, the order flipping every
rep, so drift in machine load hits both), >= 20 timed reps each after warm-up. Prints JSON.

    python bench/ort_vs_torch.py [--model bevfusion-tiny] [--out build/bench-tiny] [--reps 20]

``--out`` is a compile directory; it is compiled first when it holds no engine (a cached
compile is reused).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import time
from typing import Any

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bevfusion-tiny")
    parser.add_argument("--out", default="build/bench-tiny", help="compile directory (compiled if needed)")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="intra-op threads for both runtimes")
    args = parser.parse_args(argv)
    if args.reps < 20:
        parser.error("--reps must be >= 20")
    print(json.dumps(run(args), indent=2, sort_keys=True))
    return 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    from sparsefuse.compiler.config import make_config
    from sparsefuse.compiler.pipeline import compile_model
    from sparsefuse.models.frames import random_frame
    from sparsefuse.models.presets import build_model, get_preset
    from sparsefuse.targets.backends.onnxruntime import OPTIMIZED_NAME

    load_start = os.getloadavg()
    config = make_config(args.model, "cpu", args.out, verify_frames=1)
    result = compile_model(config)  # cached stages are skipped
    engine = config.out / "engine" / "cpu" / OPTIMIZED_NAME

    torch.set_num_threads(args.threads)
    model = build_model(args.model, seed=config.seed).eval()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # already optimized
    options.log_severity_level = 3
    session = ort.InferenceSession(str(engine), options, providers=["CPUExecutionProvider"])

    preset = get_preset(args.model)
    frames = [random_frame(preset, seed=10_000 + i) for i in range(args.frames)]
    feeds = [{k: v.numpy() for k, v in f.items()} for f in frames]

    def run_torch(i: int) -> list[np.ndarray]:
        with torch.inference_mode():
            return [t.numpy() for t in model(frames[i]["images"], frames[i]["points"])]

    def run_ort(i: int) -> list[np.ndarray]:
        return session.run(None, feeds[i])

    max_abs = 0.0
    for i in range(len(frames)):
        for _ in range(args.warmup):
            ref, got = run_torch(i), run_ort(i)
        max_abs = max(max_abs, *(float(np.max(np.abs(a - b))) for a, b in zip(got, ref, strict=True)))

    times: dict[str, list[float]] = {"torch": [], "ort": []}
    runners = {"torch": run_torch, "ort": run_ort}
    for rep in range(args.reps):
        i = rep % len(frames)
        order = ("torch", "ort") if rep % 2 == 0 else ("ort", "torch")
        for name in order:
            start = time.perf_counter()
            runners[name](i)
            times[name].append((time.perf_counter() - start) * 1e3)

    torch_ms, ort_ms = _stats(times["torch"]), _stats(times["ort"])
    return {
        "bench": "ort_vs_torch",
        "label": "measured",
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": args.model,
        "compiled": {"out": config.out.as_posix(), "engine": engine.name,
                     "stages_cached": [r.name for r in result.stages if r.cached]},
        "reps": args.reps,
        "warmup_per_frame": args.warmup,
        "frames": [{"seed": 10_000 + i, "num_points": int(f["points"].shape[0])}
                   for i, f in enumerate(frames)],
        "torch_eager_ms": torch_ms,
        "ort_ms": ort_ms,
        "ratio_torch_over_ort_median": round(torch_ms["median"] / ort_ms["median"], 3),
        "max_abs_diff_outputs": max_abs,
        "machine": _machine(args.threads, load_start),
        "note": "wall-clock per inference, batch 1; the machine may be shared: see loadavg",
    }


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median": round(statistics.median(ordered), 3), "min": round(ordered[0], 3),
            "p10": round(ordered[len(ordered) // 10], 3), "p90": round(ordered[(9 * len(ordered)) // 10], 3),
            "n": len(ordered)}


def _machine(threads: int, load_start: tuple[float, float, float]) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    from sparsefuse.targets.profiler import cpu_model_name

    return {"cpu": cpu_model_name(), "cores": os.cpu_count(), "threads": threads,
            "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": ort.__version__,
            "loadavg_start": [round(x, 2) for x in load_start],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()]}


if __name__ == "__main__":
    raise SystemExit(main())
