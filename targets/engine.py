"""What the compile driver calls per target: engine artifacts and the profile.

- TensorRT targets: :func:`emit_engine_artifacts` writes OUT/engine/<tag>/ (a real engine where
  TensorRT and a GPU exist; always build_engine.sh / profile_engine.sh) and a profile: measured
  on the real engine, else estimated by the cost model.
- The cpu target: :func:`profile_onnxruntime` measures the model in ONNX Runtime.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from sparsefuse.targets.profiler import Profile, write_profile
from sparsefuse.targets.registry import Target, get_target
from sparsefuse.targets.trt_plan import TrtOptions


@dataclass(frozen=True)
class EngineArtifacts:
    """engine_path is set only when TensorRT built a real engine on this machine."""

    target: str
    engine_dir: Path
    build_script: Path
    profile_script: Path
    engine_path: Path | None
    profile: Profile
    profile_path: Path | None
    dynamic_dims: tuple[tuple[str, int], ...]
    sparse_layers: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.profile.label

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (file names only: the directory may be renamed after writing)."""
        return {
            "target": self.target,
            "engine": self.engine_path.name if self.engine_path else None,
            "build_script": self.build_script.name,
            "profile_script": self.profile_script.name,
            "profile_label": self.profile.label,
            "dynamic_dims": dict(self.dynamic_dims),
            "sparse_layers": list(self.sparse_layers),
            "warnings": list(self.warnings),
        }


def _runnable_copy(model: Any) -> Any:
    """The model with FunctionProto bodies attached, so ONNX Runtime can run its custom nodes."""
    from sparsefuse.plugins.onnx_ops import attach_functions

    return attach_functions(model) if not model.functions else model


def observe_dims(
    lowered_onnx: str | os.PathLike[str], feeds_list: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, int]:
    """Median sizes of the graph's symbolic dims (points, active voxel sites per sparse layer)
    measured on ``feeds_list`` with ONNX Runtime (CPU)."""
    import onnx

    from sparsefuse.targets.onnx_stats import observe_dynamic_dims

    model = _runnable_copy(onnx.load(str(lowered_onnx)))
    return observe_dynamic_dims(model, feeds_list)


def observed_input_sizes(
    onnx_path: str | os.PathLike[str], feeds_list: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, tuple[int, ...]]:
    """{graph input: its size on its first dynamic axis, per frame} for every dynamic input fed
    in ``feeds_list`` (LiDAR points, voxel counts, ...): the optimization profile's ranges."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    observed: dict[str, tuple[int, ...]] = {}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        axes = [i for i, d in enumerate(dims) if d.dim_param or d.dim_value <= 0]
        sizes = tuple(int(f[value.name].shape[axes[0]]) for f in feeds_list if axes and value.name in f)
        if sizes:
            observed[value.name] = sizes
    return observed


def emit_engine_artifacts(
    lowered_onnx: str | os.PathLike[str],
    target: Target | str,
    options: TrtOptions | None,
    out_dir: str | os.PathLike[str],
    *,
    feeds_list: Sequence[Mapping[str, np.ndarray]] = (),
    dims: Mapping[str, int] | None = None,
    profile_path: str | os.PathLike[str] | None = None,
    plugin_library: str | None = None,
) -> EngineArtifacts:
    """Engine artifacts for a TensorRT target into ``out_dir`` (OUT/engine/<tag with / -> _>).

    Sizes for the optimization profile come from ``options`` if it names them, else from
    ``feeds_list`` (every dynamic graph input fed there), else from ``dims`` (num_points).
    Symbolic sizes for the estimate (active voxel sites) are measured on ``feeds_list`` when
    given. Writes ``profile_path`` (profile.json + .png) when given.
    """
    from sparsefuse.targets.backends import tensorrt as trt_backend
    from sparsefuse.targets.cost_model import estimated_profile

    target = get_target(target)
    sizes = dict(dims or {})
    if feeds_list and not sizes:
        sizes = observe_dims(lowered_onnx, feeds_list)
    if options is None or not (options.dynamic_dims or options.shape_ranges):
        observed = observed_input_sizes(lowered_onnx, feeds_list)
        if not observed and "num_points" in sizes:
            observed = {"points": (sizes["num_points"],)}
        base = options or TrtOptions()
        options = replace(base, dynamic_dims=tuple(sorted(observed.items()))) if observed else base
    built = trt_backend.build(lowered_onnx, target, options, out_dir, plugin_library=plugin_library)
    if built.engine_path is not None and feeds_list:
        profile = trt_backend.profile(built, feeds_list)
    else:
        profile = estimated_profile(lowered_onnx, target, sizes or None)
    written = write_profile(profile, profile_path) if profile_path else None
    return EngineArtifacts(
        target=target.tag,
        engine_dir=Path(out_dir),
        build_script=built.recipes.build_script,
        profile_script=built.recipes.profile_script,
        engine_path=built.engine_path,
        profile=profile,
        profile_path=written,
        dynamic_dims=tuple(sorted(sizes.items())),
        sparse_layers=built.sparse_layers,
        warnings=built.plan.warnings,
    )


def profile_onnxruntime(
    onnx_path: str | os.PathLike[str],
    target: Target | str,
    feeds_list: Sequence[Mapping[str, np.ndarray]],
    profile_path: str | os.PathLike[str] | None = None,
    *,
    runs: int = 20,
    warmup: int = 3,
    duration_s: float | None = None,
    node_runs: int = 3,
    intra_op_threads: int = 0,
) -> Profile:
    """Measured ORT profile (latency distribution, per-node and per-module times, points per
    frame) of ``onnx_path`` on ``feeds_list``; writes profile.json + .png when a path is given."""
    from sparsefuse.targets.backends import onnxruntime as ort_backend

    target = get_target(target)
    built = ort_backend.build(onnx_path, target, ort_backend.OrtOptions(intra_op_threads=intra_op_threads))
    profile = ort_backend.profile(
        built, feeds_list, runs=runs, warmup=warmup, duration_s=duration_s, node_runs=node_runs
    )
    if profile_path:
        write_profile(profile, profile_path)
    return profile


def profile_for_target(
    lowered_onnx: str | os.PathLike[str],
    target: Target | str,
    feeds_list: Sequence[Mapping[str, np.ndarray]],
    profile_path: str | os.PathLike[str],
    *,
    runs: int = 20,
    warmup: int = 3,
    dims: Mapping[str, int] | None = None,
) -> Profile:
    """The compile driver's profile stage for any target: measured in ONNX Runtime for the cpu
    target; estimated by the cost model for TensorRT targets (dims observed on ``feeds_list``).
    A TensorRT target measured on a real engine goes through :func:`emit_engine_artifacts`."""
    from sparsefuse.targets.cost_model import estimated_profile

    target = get_target(target)
    if target.backend == "onnxruntime":
        return profile_onnxruntime(lowered_onnx, target, feeds_list, profile_path, runs=runs, warmup=warmup)
    if dims is None and feeds_list:  # e.g. EngineArtifacts.dynamic_dims from the build stage
        dims = observe_dims(lowered_onnx, feeds_list)
    profile = estimated_profile(lowered_onnx, target, dims)
    write_profile(profile, profile_path)
    return profile
