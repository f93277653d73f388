"""Does the roofline cost model rank layers like the hardware does? Prints JSON.

Measures per-node times of the tiny preset with ONNX Runtime's profiler on this CPU (the same
per-node pass as `sparsefuse profile`), estimates them with targets/cost_model.py for the `cpu`
target, and reports the Spearman rank correlation over the graph nodes present in both. The peer
in the same run is a FLOPs-only ranking (estimate = FLOPs), the usual proxy budget.

Subsets: all nodes; standard ONNX nodes only (custom ops run here as ONNX function bodies, whose
gather/scatter cost no roofline of the op itself predicts); tensor-core-class ops only.

    python bench/cost_model_rank.py [--onnx OUT/lowered/cpu.onnx] [--frames 3] [--node-runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx


def lowered_cpu_model(preset: str, seed: int) -> onnx.ModelProto:
    """Export + cleanup + lower(onnxruntime) of the preset, as `sparsefuse compile` does."""
    import torch

    from sparsefuse.models.frames import random_frame
    from sparsefuse.models.presets import build_model, get_preset
    from sparsefuse.passes.cleanup import cleanup
    from sparsefuse.passes.export import export_model
    from sparsefuse.passes.lower import lower
    from sparsefuse.passes.manager import PassContext

    model = build_model(preset, seed=seed).eval()
    frame = {k: torch.as_tensor(v) for k, v in random_frame(get_preset(preset), seed).items()}
    exported = export_model(model, frame)
    return lower(cleanup(exported, PassContext()), PassContext(target_backend="onnxruntime"))


def synthetic_model(seed: int, layers: int = 24) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A conv stack with varied channels, kernels, strides and elementwise ops (out-of-sample for
    the cpu efficiency factors, which were calibrated on the tiny preset). Activations are SiLU
    (Sigmoid + Mul) or Softmax where ORT cannot fuse them into the conv."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, prev, channels, size = [], [], "x", 16, 64
    for i in range(layers):
        cout = int(rng.choice([8, 16, 32, 64, 128]))
        k = int(rng.choice([1, 3, 5]))
        stride = 2 if size > 8 and rng.random() < 0.2 else 1
        w = f"stack.conv{i}.weight"
        inits.append(
            numpy_helper.from_array(rng.standard_normal((cout, channels, k, k)).astype(np.float32) * 0.1, w)
        )
        nodes.append(
            helper.make_node(
                "Conv", [prev, w], [f"c{i}"], name=f"conv{i}", pads=[k // 2] * 4, strides=[stride, stride]
            )
        )
        kind = str(rng.choice(["relu", "silu", "softmax"]))
        if kind == "relu":
            nodes.append(helper.make_node("Relu", [f"c{i}"], [f"a{i}"], name=f"act{i}"))
        elif kind == "silu":  # Sigmoid + Mul: memory-bound elementwise kernels
            nodes.append(helper.make_node("Sigmoid", [f"c{i}"], [f"s{i}"], name=f"sigmoid{i}"))
            nodes.append(helper.make_node("Mul", [f"c{i}", f"s{i}"], [f"a{i}"], name=f"mul{i}"))
        else:
            nodes.append(helper.make_node("Softmax", [f"c{i}"], [f"a{i}"], name=f"softmax{i}", axis=1))
        prev, channels, size = f"a{i}", cout, size // stride
    graph = helper.make_graph(
        nodes,
        "stack",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 64, 64])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, None)],
        inits,
    )
    model = onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    )
    return model, {"x": rng.standard_normal((1, 16, 64, 64)).astype(np.float32)}


def frames(preset: str, count: int, seed: int) -> list[dict[str, np.ndarray]]:
    from sparsefuse.models.frames import random_frame
    from sparsefuse.models.presets import get_preset

    out = []
    for i in range(count):
        f = random_frame(get_preset(preset), seed + i)
        out.append({k: np.ascontiguousarray(f[k].numpy(), dtype=np.float32) for k in ("images", "points")})
    return out


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) >= 3 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", default=None, help="lowered cpu ONNX (default: export the preset now)")
    parser.add_argument("--preset", default="bevfusion-tiny")
    parser.add_argument("--synthetic", action="store_true", help="a random conv stack instead of the preset")
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--node-runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="ORT intra-op threads (1: least noise when shared)"
    )
    args = parser.parse_args()

    from sparsefuse.targets.backends import onnxruntime as ort_backend
    from sparsefuse.targets.backends.ort_profiling import fold_to_graph_nodes
    from sparsefuse.targets.cost_model import estimate_nodes
    from sparsefuse.targets.onnx_stats import TENSOR_CORE_OPS, node_work, observe_dynamic_dims
    from sparsefuse.targets.registry import get_target

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.onnx) if args.onnx else Path(tmp) / "cpu.onnx"
        if args.synthetic:
            stack, feed = synthetic_model(args.seed)
            onnx.save(stack, str(path))
            feeds = [feed] * args.frames
        else:
            if not args.onnx:
                onnx.save(lowered_cpu_model(args.preset, args.seed), str(path))
            feeds = frames(args.preset, args.frames, args.seed + 100)
        model = onnx.load(str(path))
        target = get_target("cpu")
        built = ort_backend.build(path, target, ort_backend.OrtOptions(intra_op_threads=args.threads))
        measured_nodes = ort_backend.node_times(built, feeds, args.node_runs)
    measured = fold_to_graph_nodes(measured_nodes, model)
    dims = observe_dynamic_dims(model, feeds)
    estimated = {n.name: n.time_ms for n in estimate_nodes(model, target, dims)}
    works = {w.name: w for w in node_work(model, dims)}
    op_types = {n.name: n.op_type for n in model.graph.node}
    custom = {n.name for n in model.graph.node if n.domain == "sparsefuse"}

    def subset(name: str, keep) -> dict:
        nodes = [n for n in measured if n in estimated and measured[n] > 0 and estimated[n] > 0 and keep(n)]
        m = [measured[n] for n in nodes]
        return {
            "nodes": len(nodes),
            "spearman_roofline": spearman([estimated[n] for n in nodes], m),
            "spearman_flops_peer": spearman([works[n].flops for n in nodes], m),
            "measured_ms_sum": float(sum(m)),
            "estimated_ms_sum": float(sum(estimated[n] for n in nodes)),
        }

    result = {
        "bench": "cost_model_rank",
        "label": "measured vs estimated",
        "model": "synthetic conv stack" if args.synthetic else args.preset,
        "target": "cpu",
        "device": ort_backend.device_name(built.providers),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "versions": dict(ort_backend.versions()),
        "frames": args.frames,
        "node_runs": args.node_runs,
        "intra_op_threads": args.threads,
        "dynamic_dims": dims,
        "measurement": "ORT profiler, graph optimization 'extended', median over node_runs runs per node; "
        "inlined function bodies folded onto their custom-op node",
        "cost_model": "sparsefuse-roofline v1 (targets/cost_model.py), cpu target rates",
        "subsets": {
            "all": subset("all", lambda n: True),
            "standard_ops": subset("standard_ops", lambda n: n not in custom),
            "tensor_core_ops": subset("tensor_core_ops", lambda n: op_types[n] in TENSOR_CORE_OPS),
        },
        "wall_s": round(time.perf_counter() - start, 1),
        "note": "shared 2-core machine: absolute times are noisy; ranks are what is compared",
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
