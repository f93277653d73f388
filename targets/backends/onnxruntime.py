"""ONNX Runtime backend: CPU EP here; CUDA / TensorRT EPs where onnxruntime-gpu offers them.

Our custom ops run through their ONNX FunctionProto bodies, which ORT inlines at load time, so
the lowered graph for this backend must carry the functions (passes/lower.py attaches them).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from sparsefuse.errors import SparsefuseError
from sparsefuse.targets.backends.ort_profiling import (
    attach_scopes,
    name_function_bodies,
    parse_ort_profile,
)
from sparsefuse.targets.profiler import (
    NodeTime,
    Profile,
    cpu_model_name,
    peak_rss_mb,
    points_per_frame,
    reset_peak_rss,
    time_runs,
)
from sparsefuse.targets.registry import Target

OPT_LEVELS = ("disable", "basic", "extended", "all")
OPTIMIZED_NAME = "model.ort.onnx"


@dataclass(frozen=True)
class OrtOptions:
    """intra_op_threads: 0 = ORT's default. graph_optimization: one of OPT_LEVELS.
    providers: explicit EP list, or () to choose from the target and what ORT offers.
    save_optimized: write the optimized model into out_dir (an inspectable artifact)."""

    intra_op_threads: int = 0
    inter_op_threads: int = 0
    graph_optimization: str = "all"
    providers: tuple[str, ...] = ()
    save_optimized: bool = True

    def __post_init__(self) -> None:
        if self.graph_optimization not in OPT_LEVELS:
            raise SparsefuseError(
                f"graph_optimization '{self.graph_optimization}' is not an ONNX Runtime level",
                f"choose one of {', '.join(OPT_LEVELS)}",
            )
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise SparsefuseError("thread counts must be >= 0", "0 lets ONNX Runtime choose")


@dataclass(frozen=True)
class Built:
    """A built ORT model. ``session`` is ready to run; ``new_session`` makes fresh ones
    (e.g. with profiling on) from the same model file and options."""

    model_path: Path
    optimized_path: Path | None
    providers: tuple[str, ...]
    options: OrtOptions
    target_tag: str
    session: Any
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    backend: str = "onnxruntime"

    def new_session(self, profile_prefix: str | None = None) -> Any:
        return _make_session(self.model_path, self.options, self.providers, None, profile_prefix)


def choose_providers(target: Target, available: Sequence[str]) -> tuple[str, ...]:
    """EPs for a target, best first, always ending with the CPU EP.

    A TensorRT target prefers TensorRT EP then CUDA EP (when onnxruntime-gpu offers them);
    the cpu target uses the CPU EP only, so its numbers stay CPU numbers.
    """
    wanted: list[str] = []
    if target.backend == "tensorrt":
        wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    chosen = [p for p in wanted if p in available]
    return (*chosen, "CPUExecutionProvider")


def provider_list(
    providers: Sequence[str], out_dir: Path | None, plugin_library: str | None = None
) -> list[Any]:
    """Providers with options: the TensorRT EP builds FP16 engines with engine and timing caches
    in ``out_dir`` and loads our plugin library when one is given."""
    listed: list[Any] = []
    for name in providers:
        if name == "TensorrtExecutionProvider":
            opts = {"trt_fp16_enable": "True", "trt_timing_cache_enable": "True"}
            if out_dir is not None:
                opts |= {
                    "trt_engine_cache_enable": "True",
                    "trt_engine_cache_path": str(out_dir / "ort_trt_cache"),
                    "trt_timing_cache_path": str(out_dir / "ort_trt_cache"),
                }
            if plugin_library:
                opts["trt_extra_plugin_lib_paths"] = plugin_library
            listed.append((name, opts))
        else:
            listed.append(name)
    return listed


def _session_options(options: OrtOptions, optimized_path: Path | None, profile_prefix: str | None) -> Any:
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    so = ort.SessionOptions()
    so.graph_optimization_level = levels[options.graph_optimization]
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.log_severity_level = 3
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


def _make_session(
    model_path: Path,
    options: OrtOptions,
    providers: Sequence[str],
    optimized_path: Path | None,
    profile_prefix: str | None,
) -> Any:
    import onnxruntime as ort

    so = _session_options(options, optimized_path, profile_prefix)
    try:
        cache_dir = optimized_path.parent if optimized_path is not None else None
        listed = provider_list(providers, cache_dir, os.environ.get("SPARSEFUSE_TRT_PLUGINS"))
        return ort.InferenceSession(str(model_path), sess_options=so, providers=listed)
    except Exception as exc:  # ORT raises its own exception types for bad models
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = "lower the model for the onnxruntime backend (custom ops need their FunctionProto bodies)"
        raise SparsefuseError(f"ONNX Runtime cannot load {model_path}: {text}", hint) from None


def build(
    onnx_path: str | os.PathLike[str],
    target: Target,
    options: OrtOptions | None = None,
    out_dir: str | os.PathLike[str] | None = None,
) -> Built:
    """Create an InferenceSession; save the optimized model as ``out_dir/model.ort.onnx``.

    The optimized file is written to a temporary name and renamed, so it is never half-written.
    """
    import onnxruntime as ort

    options = options or OrtOptions()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise SparsefuseError(f"ONNX model not found: {onnx_path}", "run `sparsefuse compile` first")
    providers = options.providers or choose_providers(target, ort.get_available_providers())
    optimized: Path | None = None
    tmp: Path | None = None
    if out_dir is not None and options.save_optimized:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        optimized = out / OPTIMIZED_NAME
        tmp = out / f".{OPTIMIZED_NAME}.tmp"
    session = _make_session(onnx_path, options, providers, tmp, None)
    if tmp is not None and optimized is not None:
        if tmp.exists():
            os.replace(tmp, optimized)
        else:
            optimized = None
    return Built(
        model_path=onnx_path,
        optimized_path=optimized,
        providers=tuple(session.get_providers()),
        options=options,
        target_tag=target.tag,
        session=session,
        input_names=tuple(i.name for i in session.get_inputs()),
        output_names=tuple(o.name for o in session.get_outputs()),
    )


def run(built: Built, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run one inference; returns outputs by name."""
    return _run_session(built.session, built, feeds)


def _run_session(session: Any, built: Built, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    missing = [n for n in built.input_names if n not in feeds]
    if missing:
        raise SparsefuseError(
            f"missing model inputs: {', '.join(missing)}",
            f"the model expects {', '.join(built.input_names)}",
        )
    feed = {n: np.ascontiguousarray(feeds[n]) for n in built.input_names}
    values = session.run(list(built.output_names), feed)
    return dict(zip(built.output_names, values, strict=True))


def versions() -> tuple[tuple[str, str], ...]:
    import onnxruntime as ort

    return (("onnxruntime", ort.__version__), ("numpy", np.__version__))


def device_name(providers: Sequence[str]) -> str:
    """Human-readable device of the first EP, e.g. "CPU (Intel Xeon ...) x2"."""
    if providers and providers[0] != "CPUExecutionProvider":
        return providers[0]
    return f"CPU ({cpu_model_name()}) x{os.cpu_count()}"


def profile(
    built: Built,
    feeds_list: Sequence[Mapping[str, np.ndarray]],
    runs: int = 20,
    warmup: int = 3,
    duration_s: float | None = None,
    node_runs: int = 3,
    lidar_points_input: str = "points",
) -> Profile:
    """Measure end-to-end latency, then (in a separate, profiled session, as trtexec's
    --separateProfileRun does) the per-node times from ORT's profiling JSON.

    The per-node pass uses ``node_runs`` runs after one warm-up; 0 skips it.
    """
    feeds_list = list(feeds_list)
    reset_peak_rss()
    samples, frames = time_runs(
        lambda i: run(built, feeds_list[i]), len(feeds_list), warmup, runs, duration_s
    )
    peak = peak_rss_mb()
    per_node: tuple[NodeTime, ...] = ()
    if node_runs > 0:
        per_node = tuple(node_times(built, feeds_list, node_runs))
    points = points_per_frame(feeds_list, frames, lidar_points_input)
    return Profile(
        label="measured",
        target=built.target_tag,
        backend="onnxruntime",
        device=device_name(built.providers),
        versions=versions() + (("providers", ",".join(built.providers)),),
        samples_ms=tuple(samples),
        per_node=per_node,
        lidar_points=points,
        peak_memory_mb=peak,
        notes=("peak_memory_mb is the process peak RSS (VmHWM) during the timed runs",),
    )


def node_times(
    built: Built, feeds_list: Sequence[Mapping[str, np.ndarray]], node_runs: int
) -> list[NodeTime]:
    """Per-node mean time per inference [ms] from ORT's profiler (SessionOptions.enable_profiling).

    Runs on a copy of the model whose function bodies are named after their call sites, at
    optimization level "extended" at most: level "all" renames nodes in its NCHWc layout pass,
    which would lose the torch module path that the module breakdown needs.
    """
    import onnx

    level = "extended" if built.options.graph_optimization == "all" else built.options.graph_optimization
    options = replace(built.options, graph_optimization=level, save_optimized=False)
    model = onnx.load(str(built.model_path))
    with tempfile.TemporaryDirectory(prefix="sf_ortprof_") as tmp:
        model_path = Path(tmp) / "named.onnx"
        onnx.save(name_function_bodies(model), str(model_path))
        session = _make_session(model_path, options, built.providers, None, str(Path(tmp) / "ort"))
        for i in range(node_runs + 1):  # run 0 is a warm-up, dropped by parse_ort_profile
            _run_session(session, built, feeds_list[i % len(feeds_list)])
        return attach_scopes(parse_ort_profile(session.end_profiling(), node_runs, skip_runs=1), model)
