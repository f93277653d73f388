"""The compile pipeline: export -> passes -> lower -> build -> verify, top to bottom in
:func:`compile_model`. Each stage reads the previous stage's artifact from OUT and writes its
own (DESIGN.md §3); a later stage (sparsity after export, engine recipes, profile, report) is one
more ``run.run(...)`` line in that function plus a small ``_stage`` function below it.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from sparsefuse.atomic import sha256_file, write_bytes, write_json
from sparsefuse.compiler.config import CompileConfig
from sparsefuse.compiler.provenance import tool_versions
from sparsefuse.compiler.stages import (
    NullProgress,
    Progress,
    StageRecord,
    StageRunner,
    atomic_dir,
    remove_outputs,
)

SCHEMA_VERSION = 1
EXPORT_ONNX = "export/model.onnx"
PASSES_ONNX = "passes/model.onnx"
VERIFY_FILES = ("verify.json", "verify/inputs.json", "verify/golden.json")
REFERENCE_THREADS = 1  # torch intra-op threads of the PyTorch reference in verify


@dataclass(frozen=True)
class CompileResult:
    out: Path
    stages: tuple[StageRecord, ...]
    verify_passed: bool
    wall_s: float


def compile_model(config: CompileConfig, progress: Progress | None = None) -> CompileResult:
    """Run every stage for ``config`` (already validated) and write OUT/compile.json last."""
    from sparsefuse.passes.lower import lowered_filename
    from sparsefuse.targets.registry import get_target

    start = time.perf_counter()
    out, target = config.out, get_target(config.target)
    remove_outputs(out, ["compile.json"])  # stale until this compile completes
    progress = progress or NullProgress()
    run = StageRunner(out, tool_versions(), progress)
    torch_side = TorchSide(config)
    inputs = input_hashes(config)
    lowered = f"lowered/{lowered_filename(target.tag)}"
    engine = f"engine/{target.tag.replace('/', '_')}"
    target_cfg = {"target": target.tag, "backend": target.backend}

    export = run.run("export", inputs, config.model_key_dict(), [EXPORT_ONNX],
                     lambda: _export(torch_side, out, progress))
    passes = run.run("passes", export.outputs, {}, [PASSES_ONNX],
                     lambda: _passes(out, EXPORT_ONNX, PASSES_ONNX, progress))
    lower = run.run("lower", passes.outputs, target_cfg, [lowered],
                    lambda: _lower(out, PASSES_ONNX, lowered, target.backend, progress))
    build = run.run("build", lower.outputs, target_cfg, [engine],
                    lambda: _build(out, lowered, engine, target))
    verify = run.run("verify", {**lower.outputs, **build.outputs}, config.key_dict(), list(VERIFY_FILES),
                     lambda: _verify(torch_side, out, lowered, engine, config.verify_frames))

    result = CompileResult(out, tuple(run.records), bool(verify.details["pass"]), time.perf_counter() - start)
    write_json(out / "compile.json", compile_record(config, inputs, result))
    return result


def compile_record(config: CompileConfig, inputs: dict[str, str], result: CompileResult) -> dict[str, Any]:
    """compile.json: config, tool versions, per-stage timings and cache keys, input/output hashes."""
    outputs: dict[str, str] = {}
    for record in result.stages:
        outputs.update(record.outputs)
    return {
        "schema_version": SCHEMA_VERSION,
        "config": config.to_dict(),
        "versions": tool_versions(),
        "inputs": inputs,
        "outputs": dict(sorted(outputs.items())),
        "stage_order": [r.name for r in result.stages],  # JSON keys are sorted on write
        "stages": {r.name: r.to_dict() for r in result.stages},
        "timings_s": {r.name: round(r.wall_s, 3) for r in result.stages},
        "verify_pass": result.verify_passed,
        "wall_s": round(result.wall_s, 3),
    }


def input_hashes(config: CompileConfig) -> dict[str, str]:
    """Hashes of the user-given inputs (rig, weights); the model code is in the tool versions'
    source digest."""
    rig = sha256_file(config.rig) if config.rig else "builtin"
    weights = sha256_file(config.weights) if config.weights else f"seeded init (seed {config.seed})"
    return {"rig": rig, "weights": weights}


class TorchSide:
    """The PyTorch model and the synthetic frames, built lazily (a fully cached recompile needs
    neither)."""

    def __init__(self, config: CompileConfig) -> None:
        self.config = config

    @functools.cached_property
    def preset(self) -> Any:
        """The preset, with the camera count and point range of a user rig (for the frames)."""
        from dataclasses import replace

        from sparsefuse.models.presets import get_preset

        preset = get_preset(self.config.model)
        if self.rig is not None:
            preset = replace(preset, num_cameras=len(self.rig.cameras), point_range=self.rig.point_range)
        return preset

    @functools.cached_property
    def rig(self) -> Any:
        """The user's rig, or None for the preset's built-in one."""
        if self.config.rig is None:
            return None
        from sparsefuse.models.rig import load_rig

        return load_rig(self.config.rig)

    @functools.cached_property
    def model(self) -> Any:
        from sparsefuse.models.presets import build_model

        model = build_model(self.config.model, rig=self.rig, seed=self.config.seed)
        if self.config.weights is not None:
            from sparsefuse.models.train import load_checkpoint

            load_checkpoint(model, self.config.weights)
        return model.eval()

    def frame(self, seed: int, num_points: int | None = None) -> dict[str, np.ndarray]:
        from sparsefuse.models.frames import random_frame

        frame = random_frame(self.preset, seed, num_points=num_points)
        return {name: _to_numpy(frame[name]) for name in ("images", "points")}

    def forward(self, frame: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from sparsefuse.passes.export import OUTPUT_NAMES

        previous = torch.get_num_threads()
        # The reference is index-heavy (gather / index_add per kernel offset); on a shared, busy
        # CPU its many short parallel regions stall: one tiny-preset forward measured 0.65-1.0 s
        # with 1 thread vs 3-18 s with 2 on our loaded 2-core machine. Speed is not its job.
        torch.set_num_threads(REFERENCE_THREADS)
        try:
            with torch.inference_mode():
                outs = self.model(torch.from_numpy(frame["images"]), torch.from_numpy(frame["points"]))
        finally:
            torch.set_num_threads(previous)
        return {name: t.detach().cpu().numpy() for name, t in zip(OUTPUT_NAMES, outs, strict=True)}

    def export_frame(self) -> dict[str, np.ndarray]:
        return self.frame(self.config.seed)

    def verify_frames(self, count: int) -> list[tuple[dict[str, Any], dict[str, np.ndarray]]]:
        """``count`` fresh frames: seeds never used at export and point counts that differ from
        the export frame's (so the dynamic ``num_points`` axis is exercised)."""
        export_points = int(self.export_frame()["points"].shape[0])
        frames = []
        for i in range(count):
            seed = self.config.seed + 1 + i
            scale = (0.6, 0.85, 1.2, 0.7, 1.1)[i % 5]
            num_points = max(16, int(export_points * scale) + i)
            frame = self.frame(seed, num_points=num_points)
            info = {"seed": seed, "num_points": int(frame["points"].shape[0]),
                    "export_num_points": export_points}
            frames.append((info, frame))
        return frames


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(value, dtype=np.float32)


# --- stages: each writes its outputs atomically and returns its details -------------------

def _export(torch_side: TorchSide, out: Path, progress: Progress) -> dict[str, Any]:
    import torch

    from sparsefuse.passes.export import export_model, read_param_map
    from sparsefuse.passes.manager import PassContext, run_producer

    frame = {k: torch.from_numpy(v) for k, v in torch_side.export_frame().items()}
    ctx = PassContext(log=progress.log)
    model, record = run_producer("export", lambda: export_model(torch_side.model, frame), ctx)
    write_bytes(out / EXPORT_ONNX, model.SerializeToString())
    return {"passes": [record.to_dict()], "num_points": int(frame["points"].shape[0]),
            "params_mapped": len(read_param_map(model)), "custom_nodes": _custom_op_counts(model)}


def _passes(out: Path, src: str, dst: str, progress: Progress) -> dict[str, Any]:
    from sparsefuse.passes.cleanup import cleanup
    from sparsefuse.passes.manager import Pass, PassContext, run_passes

    ctx = PassContext(log=progress.log)
    model, records = run_passes([Pass("cleanup", cleanup)], onnx.load(out / src), ctx)
    write_bytes(out / dst, model.SerializeToString())
    return {"passes": [r.to_dict() for r in records]}


def _lower(out: Path, src: str, lowered: str, backend: str, progress: Progress) -> dict[str, Any]:
    from sparsefuse.passes.lower import lower
    from sparsefuse.passes.manager import Pass, PassContext, run_passes

    model, records = run_passes([Pass("lower", lower)], onnx.load(out / src),
                                PassContext(target_backend=backend, log=progress.log))
    write_bytes(out / lowered, model.SerializeToString())
    return {"passes": [r.to_dict() for r in records], "functions": [f.name for f in model.functions]}


def _build(out: Path, lowered: str, engine: str, target: Any) -> dict[str, Any]:
    from sparsefuse.targets.backends import onnxruntime as ort_backend

    with atomic_dir(out / engine) as tmp:
        built = ort_backend.build(out / lowered, target, None, tmp)
    return {"backend": target.backend, "built": _describe(built)}


def _verify(torch_side: TorchSide, out: Path, lowered: str, engine: str, count: int) -> dict[str, Any]:
    from sparsefuse.compiler.verify import verify

    pairs = torch_side.verify_frames(count)
    report = verify(
        functools.partial(engine_session, out / engine, out / lowered),
        torch_side.forward,
        [frame for _, frame in pairs],
        [info for info, _ in pairs],
        out,
        lowered,
    )
    write_json(out / "verify.json", report.to_dict())
    return {"pass": report.passed, "polygraphy_pass": report.polygraphy_passed,
            "polygraphy_command": report.polygraphy_command}


def engine_session(engine_dir: Path, lowered: Path) -> Any:
    """An ORT session on the backend's optimized model, i.e. what ships (else the lowered ONNX).
    It is already optimized, so ORT's own graph optimizations stay off here."""
    import onnxruntime as ort

    from sparsefuse.targets.backends.onnxruntime import OPTIMIZED_NAME

    optimized = engine_dir / OPTIMIZED_NAME
    path = optimized if optimized.is_file() else lowered
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _custom_op_counts(model: onnx.ModelProto) -> dict[str, int]:
    from sparsefuse.passes.lower import custom_nodes

    counts: dict[str, int] = {}
    for node in custom_nodes(model):
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _describe(built: Any) -> dict[str, Any]:
    """JSON-able summary of the backend's Built record (paths by file name: the build ran in a
    temporary directory that was then renamed)."""
    optimized = getattr(built, "optimized_path", None)
    return {"providers": list(getattr(built, "providers", ())),
            "optimized_model": optimized.name if optimized else None,
            "inputs": list(getattr(built, "input_names", ())),
            "outputs": list(getattr(built, "output_names", ()))}
