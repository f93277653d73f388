"""Interleaved latency measurement on ONNX Runtime (CPU here), with per-module attribution.

Models under comparison run alternately (A B, B A, A B, ...) in one process, so slow machine
drift hits both alike. After each model run a fixed reference workload (a small conv chain in
the same runtime and thread setting, repeated to about 10% of the model's time) is timed;
dividing by it cancels most drift between a stored baseline and today's run. Per-module times
come from ORT's own profiler (kernel time per node), rescaled to the clock of the totals.

Clock: with one intra-op thread ORT computes on the calling thread, so the default clock is
that thread's CPU time (CLOCK_THREAD_CPUTIME_ID). On a shared machine, wall time mostly measures
how often the scheduler preempted us (median 7.5 ms wall vs 3.0 ms CPU for the same 3 ms model
with two other busy processes on 2 cores); CPU time does not. ``clock="wall"`` is the end-to-end
latency for dedicated machines and multi-threaded runs.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sparsefuse.compiler.regress.modules import ModuleMap, per_run_module_ms, prepare_for_profiling
from sparsefuse.compiler.regress.samples import LatencySamples
from sparsefuse.errors import SparsefuseError

CUSTOM_DOMAIN = "sparsefuse"
CLOCKS = ("thread", "wall")


@dataclass(frozen=True)
class MeasureConfig:
    runs: int = 100  # timed runs per model
    warmup: int = 10
    threads: int = 1  # ORT intra-op threads; 1 keeps a shared CI machine's noise down
    reference: bool = True  # time the reference kernel after every model run
    module_depth: int = 1
    module_scheme: str = "prefix"  # "prefix" or "bevfusion" (see modules.ModuleMap)
    profile_modules: bool = True
    clock: str = "thread"  # "thread" (CPU time of the calling thread; needs threads=1) or "wall"

    def __post_init__(self) -> None:
        if self.clock not in CLOCKS:
            raise SparsefuseError(f"clock {self.clock!r} is unknown", f"use one of {', '.join(CLOCKS)}")
        if self.clock == "thread" and self.threads != 1:
            raise SparsefuseError(
                "the thread CPU-time clock needs --threads 1",
                "use --clock wall with several intra-op threads",
            )


def device_description(threads: int) -> str:
    import onnxruntime as ort

    from sparsefuse.targets.profiler import cpu_model_name

    cores = os.cpu_count()
    return f"{cpu_model_name()} ({cores} cores), onnxruntime {ort.__version__} CPU, {threads} thread(s)"


def reference_model(channels: int = 16, size: int = 32, depth: int = 4) -> onnx.ModelProto:
    """The fixed reference workload: ``depth`` chained 3x3 convs (+ ReLU) with fixed weights.

    Convolutions, like the models we gate, so that cache and memory pressure from other
    processes slows the reference about as much as the model (about 0.3 ms on one core).
    """
    rng = np.random.default_rng(1234)
    inits, nodes, x = [], [], "x"
    for i in range(depth):
        w = (rng.standard_normal((channels, channels, 3, 3)) / np.sqrt(9 * channels)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(
            helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"reference/conv{i}", pads=[1, 1, 1, 1])
        )
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"y{i}"], name=f"reference/relu{i}"))
        x = f"y{i}"
    shape = [1, channels, size, size]
    graph = helper.make_graph(
        nodes,
        "reference",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _has_unresolved_custom_ops(model: onnx.ModelProto) -> bool:
    local = {(f.domain, f.name) for f in model.functions}
    return any(n.domain == CUSTOM_DOMAIN and (n.domain, n.op_type) not in local for n in model.graph.node)


def load_cpu_model(path: str | Path) -> onnx.ModelProto:
    """Load an ONNX file for ORT CPU; custom sparsefuse nodes get their FunctionProto bodies."""
    try:
        model = onnx.load(str(path))
    except FileNotFoundError:
        raise SparsefuseError(f"ONNX file {path} does not exist", "check the path") from None
    except Exception as exc:  # onnx raises DecodeError and friends
        raise SparsefuseError(f"cannot read ONNX file {path}: {exc}", "regenerate it") from None
    return with_cpu_functions(model, path)


def with_cpu_functions(model: onnx.ModelProto, where: str | Path) -> onnx.ModelProto:
    """``model`` with FunctionProto bodies for its custom sparsefuse nodes, so ORT CPU runs them."""
    if _has_unresolved_custom_ops(model):
        try:
            from sparsefuse.plugins.onnx_ops import attach_functions
        except ImportError:
            raise SparsefuseError(
                f"{where} has custom sparsefuse nodes and sparsefuse.plugins.onnx_ops is unavailable",
                "run on a backend with the sparsefuse plugins, or update sparsefuse",
            ) from None
        model = attach_functions(model)
    return model


def make_feeds(
    model: onnx.ModelProto, inputs_npz: str | Path | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Feeds from an npz (golden inputs) or, without one, seeded random tensors.

    Dynamic dimensions without an npz become 1, which suits only fixed-size models (the reference
    kernel); regress picks realistic frames with ``inputs.resolve_frames``.
    """
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if inputs_npz is not None:
        with np.load(inputs_npz) as data:
            feeds = {name: data[name] for name in data.files}
        missing = [i.name for i in inputs if i.name not in feeds]
        if missing:
            raise SparsefuseError(
                f"inputs {inputs_npz} lack {', '.join(missing)}", "pass the model's golden inputs"
            )
        return {i.name: feeds[i.name] for i in inputs}
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in inputs:
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.dim_value > 0 else 1 for d in tensor.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[value.name] = np.zeros(shape, dtype=dtype)
    return feeds


class OrtRunner:
    """One ORT CPU session that times single runs (ms) and, optionally, profiles its nodes."""

    def __init__(
        self,
        model: onnx.ModelProto,
        feeds: dict[str, np.ndarray],
        threads: int,
        profile_dir: str | None,
        module_depth: int = 1,
        clock: str = "wall",
        module_scheme: str = "prefix",
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        if profile_dir is not None:
            options.enable_profiling = True
            options.profile_file_prefix = os.path.join(profile_dir, "ort")
            # Inlined custom-op bodies keep their call site's name (and so its module).
            model = prepare_for_profiling(model)
            if module_scheme == "bevfusion":
                # Level "all" renames nodes in its NCHWc pass and loses the torch module paths
                # (the same choice as targets' ORT profiler).
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        try:
            self.session = ort.InferenceSession(
                model.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise SparsefuseError(
                f"onnxruntime cannot load the model: {exc}".splitlines()[0],
                "check the model's opset and custom ops",
            ) from None
        names = {i.name for i in self.session.get_inputs()}
        self.feeds = {k: v for k, v in feeds.items() if k in names}
        self.inputs = names
        self.profiled = profile_dir is not None
        self.module_map = ModuleMap(model, module_depth, module_scheme)
        self.clock = time.thread_time if clock == "thread" else time.perf_counter

    def run_once(self, feeds: dict[str, np.ndarray] | None = None) -> float:
        """One timed run (ms) on ``feeds`` (default: the session's own)."""
        feeds = self.feeds if feeds is None else {k: v for k, v in feeds.items() if k in self.inputs}
        start = self.clock()
        self.session.run(None, feeds)
        return (self.clock() - start) * 1000.0

    def module_samples(self, skip_runs: int) -> dict[str, tuple[float, ...]]:
        """End profiling; per module, one kernel-time sum (ms) per run after ``skip_runs``."""
        if not self.profiled:
            return {}
        path = self.session.end_profiling()
        try:
            events = json.loads(Path(path).read_text())
        finally:
            Path(path).unlink(missing_ok=True)
        per_run = per_run_module_ms(events, self.module_map, skip_runs)
        names = sorted({m for run in per_run for m in run})
        return {m: tuple(run.get(m, 0.0) for run in per_run) for m in names}


def split_total(
    total_ms: list[float], modules_ms: dict[str, tuple[float, ...]]
) -> dict[str, tuple[float, ...]]:
    """Rescale profiled module times (wall) to the units of the thread-CPU total.

    One factor per model: median total / sum of the per-module medians. A run in which the
    scheduler preempted one kernel inflates that kernel's wall time (by tens of ms on a busy
    machine), so a per-run split would hand the whole run to it; medians ignore such runs.
    """
    if not modules_ms:
        return {}
    names = sorted(modules_ms)
    kernel = np.array([modules_ms[n] for n in names], dtype=np.float64)  # [modules, runs]
    if kernel.shape[1] != len(total_ms):
        return modules_ms  # the profiler lost runs; keep its raw times rather than guess
    module_medians = float(np.median(kernel, axis=1).sum())
    if module_medians <= 0:
        return modules_ms
    factor = float(np.median(total_ms)) / module_medians
    return {n: tuple(float(v) * factor for v in kernel[i]) for i, n in enumerate(names)}


def reference_repeats(model_ms: list[float], reference_ms: list[float], share: float = 0.1) -> int:
    """Reference runs per model run, so that the reference covers about ``share`` of the model's
    time (1..64): a 0.3 ms kernel says little about contention during a 300 ms model run. The
    stored value is the mean per reference run, so baselines with other repeat counts compare."""
    if not model_ms or not reference_ms:
        return 1
    return int(min(64, max(1, round(share * float(np.median(model_ms)) / float(np.median(reference_ms))))))


def measure_models(
    models: dict[str, onnx.ModelProto],
    feeds: dict[str, np.ndarray] | Sequence[dict[str, np.ndarray]],
    config: MeasureConfig,
) -> dict[str, LatencySamples]:
    """Time every model ``config.runs`` times, interleaved (order reversed every round).

    ``feeds``: one frame, or several: round i feeds frame i mod n to every model, so the two runs
    of an interleaved pair always see the same frame.
    """
    frames = [feeds] if isinstance(feeds, dict) else list(feeds)
    if not frames:
        raise SparsefuseError("no input frames to measure with", "pass --inputs FRAMES.npz")
    if config.runs < 5:
        raise SparsefuseError(
            f"--runs {config.runs} is too few for a confidence interval", "use --runs 30 or more"
        )
    names = list(models)
    with tempfile.TemporaryDirectory(prefix="sparsefuse-regress-") as tmp:
        runners = {}
        for name in names:
            pdir = os.path.join(tmp, f"p{len(runners)}") if config.profile_modules else None
            if pdir:
                os.makedirs(pdir)
            runners[name] = OrtRunner(
                models[name],
                frames[0],
                config.threads,
                pdir,
                config.module_depth,
                config.clock,
                config.module_scheme,
            )
        ref_model = reference_model()
        reference = (
            OrtRunner(ref_model, make_feeds(ref_model, seed=1), config.threads, None, 1, config.clock)
            if config.reference
            else None
        )
        warm_model, warm_ref = [], []
        for i in range(config.warmup):
            for name in names:
                warm_model.append(runners[name].run_once(frames[i % len(frames)]))
                if reference:
                    warm_ref.append(reference.run_once())
        reps = reference_repeats(warm_model, warm_ref)
        totals: dict[str, list[float]] = {n: [] for n in names}
        refs: dict[str, list[float]] = {n: [] for n in names}
        for i in range(config.runs):
            for name in names if i % 2 == 0 else names[::-1]:
                totals[name].append(runners[name].run_once(frames[i % len(frames)]))
                if reference:
                    refs[name].append(sum(reference.run_once() for _ in range(reps)) / reps)
        device = device_description(config.threads)
        out = {}
        for name in names:
            peers = [p for p in names if p != name]
            modules = runners[name].module_samples(config.warmup)
            if config.clock == "thread":
                modules = split_total(totals[name], modules)
            out[name] = LatencySamples(
                total_ms=tuple(totals[name]),
                modules_ms=modules,
                reference_ms=tuple(refs[name]) if reference else None,
                device=device,
                clock=config.clock,
                interleaved_with=",".join(peers),
            )
        return out
