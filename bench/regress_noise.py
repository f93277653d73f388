"""Noise benchmark for the latency gate (`sparsefuse regress`) on this machine.

Question: at the default threshold (fail when slower by > 5% at 95% confidence), does the gate
stay quiet on an unchanged model and catch a real 10% / 20% slowdown of one module?

Method (all numbers are measured, ONNX Runtime CPU, 1 intra-op thread):
- Workload: a 4-module conv net (camera, lidar, fusion, head; 3x3 conv + ReLU blocks, node names
  carry the module prefix, so ORT's profiler attributes kernel time per module).
- Injection: real extra compute inside ONE module (lidar): a side chain of k 1x1 convs whose
  result is added back into the lidar path (so ORT cannot prune it). k is calibrated in-run:
  the injected model is timed against the unchanged one (interleaved, paired median ratio) and
  k rescaled until the measured slowdown is closest to 10% / 20%. The realised slowdown of
  every trial is reported next to its verdict.
- Clock: CPU time of the inference thread (the default of `regress` with 1 thread), because
  wall time on this shared 2-core machine mostly measures preemption by other processes.
- Each trial is one gate decision:
  * interleaved: baseline model and candidate model measured alternately in one process, paired
    bootstrap of the median ratio (the CI mode of `regress --baseline-onnx A --onnx B`);
  * stored: the candidate measured alone now, compared with a baseline recorded at the start of
    the benchmark (minutes earlier), every run divided by the reference kernel run right after
    it (ratio of ratios), as in `regress --baseline B.json --onnx M.onnx`. The same trial is
    also judged without the reference ("gate_failed_without_reference"), the control that
    shows what the reference buys.
- 10 trials per scenario (unchanged, +10%, +20%) and mode; 200 timed runs per model per trial.
  failed = the gate's verdict; detected_and_attributed = failed AND the top culprit module is
  the injected one; module_false_alarms = unchanged trials in which any module was blamed.

Prints one JSON object (about 5-6 minutes here, most of it waiting for the 2 shared cores).
Usage: python bench/regress_noise.py [--runs 200] [--trials 10] [--modes interleaved,stored]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sparsefuse.compiler.regress.gate import GateConfig, compare
from sparsefuse.compiler.regress.measure import MeasureConfig, device_description, make_feeds, measure_models

MODULES = ("camera", "lidar", "fusion", "head")
INJECTED_MODULE = "lidar"


def toy_model(channels: int = 16, size: int = 56, blocks: int = 3, extra_convs: int = 0) -> onnx.ModelProto:
    """Conv net with module-prefixed node names; ``extra_convs`` 1x1 convs injected in lidar."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"

    def weight(name: str, shape: tuple[int, ...], scale: float) -> str:
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    for module in MODULES:
        for i in range(blocks):
            w = weight(f"{module}.conv{i}.weight", (channels, channels, 3, 3), 0.1)
            nodes.append(
                helper.make_node(
                    "Conv", [x, w], [f"{module}.conv{i}"], name=f"/{module}/conv{i}/Conv", pads=[1, 1, 1, 1]
                )
            )
            nodes.append(
                helper.make_node(
                    "Relu", [f"{module}.conv{i}"], [f"{module}.relu{i}"], name=f"/{module}/relu{i}/Relu"
                )
            )
            x = f"{module}.relu{i}"
        if module == INJECTED_MODULE and extra_convs:
            side = x
            for j in range(extra_convs):
                w = weight(f"{module}.injected{j}.weight", (channels, channels, 1, 1), 0.05)
                nodes.append(
                    helper.make_node(
                        "Conv", [side, w], [f"{module}.injected{j}"], name=f"/{module}/injected{j}/Conv"
                    )
                )
                side = f"{module}.injected{j}"
            nodes.append(
                helper.make_node(
                    "Add", [x, side], [f"{module}.injected_sum"], name=f"/{module}/injected_sum/Add"
                )
            )
            x = f"{module}.injected_sum"
    graph = helper.make_graph(
        nodes,
        "toy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def realised_ratio(feeds: dict, extra_convs: int, runs: int) -> tuple[float, float]:
    """(unchanged total median ms, paired median ratio injected/unchanged), measured."""
    # Same settings as the trials (the profiler's per-node cost is part of what the gate sees).
    cfg = MeasureConfig(runs=runs, warmup=10, reference=False)
    got = measure_models({"base": toy_model(), "probe": toy_model(extra_convs=extra_convs)}, feeds, cfg)
    base = np.asarray(got["base"].total_ms)
    probe = np.asarray(got["probe"].total_ms)
    return float(np.median(base)), float(np.median(probe / base))


def calibrate(feeds: dict, target: float, runs: int, start: int = 8) -> tuple[int, float]:
    """Number of injected convs whose measured slowdown is closest to ``target`` (0.10 = 10%)."""
    k, tried = start, {}
    for _ in range(4):
        if k in tried:
            break
        _, ratio = realised_ratio(feeds, k, runs)
        tried[k] = ratio
        k = max(1, round(k * target / max(ratio - 1.0, 1e-3)))
    best = min(tried, key=lambda n: abs(tried[n] - 1.0 - target))
    return best, tried[best]


def trial_interleaved(
    base: onnx.ModelProto, cand: onnx.ModelProto, feeds: dict, runs: int, seed: int
) -> dict:
    cfg = MeasureConfig(runs=runs, warmup=10, reference=False)
    got = measure_models({"baseline": base, "candidate": cand}, feeds, cfg)
    return summarize(compare(got["baseline"], got["candidate"], GateConfig(seed=seed), paired=True))


def trial_stored(stored, cand: onnx.ModelProto, feeds: dict, runs: int, seed: int) -> dict:
    got = measure_models({"candidate": cand}, feeds, MeasureConfig(runs=runs, warmup=10, reference=True))
    out = summarize(compare(stored, got["candidate"], GateConfig(seed=seed), paired=False))
    raw = summarize(
        compare(stored, got["candidate"], GateConfig(seed=seed, use_reference=False), paired=False)
    )
    out["without_reference"] = {k: raw[k] for k in ("failed", "ratio", "ci")}
    return out


def summarize(verdict) -> dict:
    ci = verdict.total.ci
    culprits = verdict.culprits()
    return {
        "failed": verdict.regressed,
        "ratio": round(ci.ratio, 4),
        "ci": [round(ci.low, 4), round(ci.high, 4)],
        "top_culprit": culprits[0].name if culprits else None,
        "regressed_modules": [m.name for m in culprits],
        "mode": verdict.mode,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="timed runs per model per trial")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--modes", default="interleaved,stored")
    args = parser.parse_args()
    started = time.perf_counter()
    feeds = make_feeds(toy_model(), seed=0)
    total_ms, _ = realised_ratio(feeds, 1, 100)
    scenarios = {"unchanged": 0}
    calibration = {}
    for pct in (10, 20):
        k, ratio = calibrate(feeds, pct / 100, runs=150)
        scenarios[f"+{pct}%"] = k
        calibration[f"+{pct}%"] = {"injected_convs": k, "calibration_ratio": round(ratio, 4)}
    base = toy_model()
    stored = measure_models(
        {"baseline": base}, feeds, MeasureConfig(runs=args.runs, warmup=10, reference=True)
    )["baseline"]
    results: dict = {}
    for mode in args.modes.split(","):
        results[mode] = {}
        for name, k in scenarios.items():
            cand = toy_model(extra_convs=k)
            trials = []
            for t in range(args.trials):
                fn = trial_interleaved if mode == "interleaved" else trial_stored
                trials.append(
                    fn(base, cand, feeds, args.runs, t)
                    if mode == "interleaved"
                    else fn(stored, cand, feeds, args.runs, t)
                )
            failed = sum(r["failed"] for r in trials)
            attributed = sum(r["failed"] and r["top_culprit"] == INJECTED_MODULE for r in trials)
            module_alarms = sum(bool(r["regressed_modules"]) for r in trials) if k == 0 else None
            raw_failed = sum(r["without_reference"]["failed"] for r in trials) if mode == "stored" else None
            results[mode][name] = {
                "injected_convs": k,
                "gate_failed": failed,
                "detected_and_attributed": attributed,
                "module_false_alarms": module_alarms,
                "gate_failed_without_reference": raw_failed,
                "realised_ratio_median": round(float(np.median([r["ratio"] for r in trials])), 4),
                "trials": trials,
            }
    print(
        json.dumps(
            {
                "bench": "regress_noise",
                "device": device_description(1),
                "label": "measured",
                "threshold_pct": 5.0,
                "confidence": 0.95,
                "runs_per_model_per_trial": args.runs,
                "trials_per_scenario": args.trials,
                "unchanged_total_median_ms": round(total_ms, 3),
                "calibration": calibration,
                "results": results,
                "wall_s": round(time.perf_counter() - started, 1),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
