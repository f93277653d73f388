"""The Python API: ``sparsefuse.compile``, ``prune``, ``profile``, ``handoff`` and ``convert``.

``model`` is any ``torch.nn.Module`` (spconv modules, voxelization and ``bev_pool`` calls inside
are converted to our ops), or a preset name / ``"file.py:factory"`` string as on the command line.
``frames`` is an iterable of dicts of named tensors or arrays keyed by the forward's arguments,
or a folder of ``.npz`` files. The same validation, artifacts and errors as the CLI.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sparsefuse.errors import SparsefuseError
from sparsefuse.spec import ModelSpec

PathLike = str | os.PathLike[str]
Frames = Iterable[Mapping[str, Any]] | PathLike | None


def model_source(model: Any, frames: Frames = None, spec: ModelSpec | None = None,
                 weights: PathLike | None = None, seed: int = 0,
                 convert_options: Mapping[str, Any] | None = None) -> Any:
    """The ModelSource (compiler/model_source.py) for an object, a preset name or a factory ref."""
    from sparsefuse.compiler import model_interface as mi
    from sparsefuse.compiler.model_source import preset_source, user_source

    if isinstance(model, str):
        ref = mi.parse_model_ref(model)
        if ref.is_preset:
            if frames is not None:
                raise SparsefuseError("presets make their own frames", "drop frames= for a preset")
            return preset_source(model, seed, None, Path(weights) if weights else None)
        module, found_spec = mi.call_factory(mi.load_factory(ref), ref.text)
        return user_source(module, _frames(frames), spec or found_spec, weights, ref.text, convert_options)
    import torch

    if not isinstance(model, torch.nn.Module):
        raise SparsefuseError(f"model is a {type(model).__name__}",
                              "pass a torch.nn.Module, a preset name or 'file.py:factory'")
    return user_source(model, _frames(frames), spec, weights, type(model).__name__, convert_options)


def _frames(frames: Frames) -> list[Any]:
    from sparsefuse.compiler import model_interface as mi

    if frames is None:
        raise SparsefuseError("a user model needs frames",
                              "pass frames=[{argument name: tensor, ...}, ...] or a folder of .npz files")
    if isinstance(frames, (str, os.PathLike)):
        return mi.read_frames_dir(frames)
    return mi.as_numpy_frames(frames)


def compile(  # noqa: A001 (the verb users expect: sparsefuse.compile)
    model: Any, frames: Frames = None, *, target: str = "cpu", out: PathLike, spec: ModelSpec | None = None,
    weights: PathLike | None = None, sparsity: str | None = None, verify_frames: int = 3, seed: int = 0,
    convert_options: Mapping[str, Any] | None = None, progress: Any = None, precision: str = "fp32",
    calibrator: str | None = None, calib_frames: int | None = None, int8_sensitivity: float | None = None,
) -> Any:
    """Compile ``model`` for ``target`` into ``out`` (see README, "Bring your own model").
    ``precision``: fp32 | fp16 | int8 (``calibrator``, ``calib_frames``, ``int8_sensitivity``: as
    ``compile --help``).
    Returns the CompileResult (``.verify_passed``, ``.out``, per-stage records)."""
    from sparsefuse.compiler.config import make_config
    from sparsefuse.compiler.pipeline import compile_model

    is_object = not isinstance(model, str)
    label = type(model).__name__ if is_object else model
    source = model_source(model, frames, spec, weights, seed, convert_options)
    config = make_config(label if not source.is_preset else model, target, out, seed=seed,
                         verify_frames=verify_frames,
                         weights=weights if source.is_preset else None, sparsity=sparsity,
                         python_model=not source.is_preset, precision=precision, calibrator=calibrator,
                         calib_frames=calib_frames, int8_sensitivity=int8_sensitivity)
    return compile_model(config, progress, source)


def prune(
    model: Any, frames: Frames = None, *, out: PathLike, budget: str = "params=0.5",
    allocator: str = "rdprune", pattern: str = "unstructured", calib: int = 8, spec: ModelSpec | None = None,
    weights: PathLike | None = None, seed: int = 0, convert_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> Any:
    """Layer-wise sparsity for ``model`` into ``out``/sparsity/ (plan.json, curves, plots).
    Returns the SparsityPlan; the pruned torch model is ``prune_model(...)``'s job."""
    return prune_model(model, frames, out=out, budget=budget, allocator=allocator, pattern=pattern,
                       calib=calib, spec=spec, weights=weights, seed=seed, convert_options=convert_options,
                       **options)[1]


def prune_model(
    model: Any, frames: Frames = None, *, out: PathLike, budget: str = "params=0.5",
    allocator: str = "rdprune", pattern: str = "unstructured", calib: int = 8, spec: ModelSpec | None = None,
    weights: PathLike | None = None, seed: int = 0, convert_options: Mapping[str, Any] | None = None,
    progress: Any = None, **options: Any,
) -> tuple[Any, Any]:
    """(pruned converted torch model, SparsityPlan)."""
    import numpy as np
    import torch

    from sparsefuse.passes.sparsity.config import config_from_options
    from sparsefuse.passes.sparsity.stage import run_sparsity_stage

    config = config_from_options(budget, allocator=allocator, pattern=pattern, calib=calib, seed=seed,
                                 **options)
    source = model_source(model, frames, spec, weights, seed, convert_options)
    calibration = [{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in f.items()}
                   for f in source.frames.calibration_frames(config.calib)]
    pruned, _, plan = run_sparsity_stage(source.converted, None, config, Path(out) / "sparsity", calibration,
                                         forward=source.torch_forward, progress=progress,
                                         transforms=source.spec.outputs, modality=source.modality_of)
    return pruned, plan


def profile(onnx_path: PathLike, frames: Frames, *, target: str = "cpu", out: PathLike | None = None,
            runs: int = 20, warmup: int = 3) -> Any:
    """Latency profile of a (lowered) ONNX model on ``target`` with ``frames`` as inputs: measured
    with ONNX Runtime for cpu, estimated by the cost model for TensorRT targets. Writes
    ``out`` (profile.json + .png) when given."""
    from sparsefuse.targets.engine import observe_dims, profile_onnxruntime
    from sparsefuse.targets.profiler import write_profile
    from sparsefuse.targets.registry import get_target

    if not Path(onnx_path).is_file():
        raise SparsefuseError(f"ONNX model not found: {onnx_path}",
                              "pass OUT/lowered/<target>.onnx of a compile")
    feeds = _frames(frames)
    tgt = get_target(target)
    if tgt.backend == "onnxruntime":
        result = profile_onnxruntime(onnx_path, tgt, feeds, runs=runs, warmup=warmup)
    else:
        from sparsefuse.targets.cost_model import estimated_profile

        result = estimated_profile(onnx_path, tgt, observe_dims(onnx_path, feeds))
    if out is not None:
        write_profile(result, out)
    return result


def handoff(out: PathLike, *, target: str, bundle_dir: PathLike | None = None,
            sign_key: PathLike | None = None, latency_budget_ms: float | None = None,
            golden_frames: int = 2) -> Any:
    """A hand-off bundle of the compile in ``out`` (see ``sparsefuse handoff --help``)."""
    from sparsefuse.compiler.handoff import HandoffOptions, make_bundle

    return make_bundle(HandoffOptions(Path(out), target, Path(bundle_dir) if bundle_dir else None,
                                      Path(sign_key) if sign_key else None, latency_budget_ms, golden_frames))


def convert(model: Any, frames: Frames = None, options: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
    """(converted copy of ``model``, ConversionReport): spconv, voxelization and bev_pool calls
    rewritten into our ops with identical numerics. The caller's model is untouched."""
    from sparsefuse.passes.convert import convert as run

    import_frames = [] if frames is None else _frames(frames)
    import torch

    tensors = [{k: torch.from_numpy(v) for k, v in f.items()} for f in import_frames]
    return run(model, tensors, options)
