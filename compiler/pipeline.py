"""The compile pipeline: export -> [sparsity] -> passes -> [precision] -> lower -> build -> verify ->
profile -> report, top to bottom in :func:`compile_model`. Each stage reads the previous stage's artifact
from OUT and writes its own (docs/design.md §3); a new stage is one more ``run.run(...)`` line in that
function plus a small ``_stage`` function below it.

Per backend: ``onnxruntime`` (cpu) builds the ORT-optimized model, verifies it and measures the
profile; ``tensorrt`` targets get engine artifacts (a real engine where TensorRT and a GPU exist,
else build_engine.sh / profile_engine.sh), verify the TensorRT-lowered graph in ORT with the
function bodies attached, and an estimated profile from the cost model.
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
from sparsefuse.compiler.threads import DEFAULT_THREADS, check_threads
from sparsefuse.layout import engine_rel, lowered_rel

SCHEMA_VERSION = 1
EXPORT_ONNX = "export/model.onnx"
CONVERSION_JSON = "export/conversion.json"
SPARSITY_DIR = "sparsity"
SPARSITY_ONNX = "sparsity/model.onnx"
PLAN_JSON = "sparsity/plan.json"
PASSES_ONNX = "passes/model.onnx"
PRECISION_DIR = "precision"
PRECISION_ONNX = "precision/model.onnx"
PRECISION_REPORT = "precision/report.json"
VERIFY_FILES = ("verify.json", "verify/inputs.json", "verify/golden.json", "verify/frames")
RUNNABLE_ONNX = "verify/lowered_with_functions.onnx"  # what ORT runs for a tensorrt target
PROFILE_FILES = ("profile.json", "profile.png")
REPORT_MD = "report.md"
# torch intra-op threads of the PyTorch reference in verify and sparsity (compile --threads)
REFERENCE_THREADS = DEFAULT_THREADS
PROFILE_FRAMES = 3  # frames timed by the profile stage (and sizing TensorRT's optimization profile)
PROFILE_RUNS = 10  # timed runs of a measured profile (after 2 warmup runs)


@dataclass(frozen=True)
class CompileResult:
    out: Path
    stages: tuple[StageRecord, ...]
    verify_passed: bool
    wall_s: float


def compile_model(
    config: CompileConfig, progress: Progress | None = None, source: Any = None,
    threads: int = REFERENCE_THREADS,
) -> CompileResult:
    """Run every stage for ``config`` (already validated) and write OUT/compile.json last.
    ``source``: a ModelSource (compiler/model_source.py) the Python API already built.
    ``threads``: torch intra-op threads of the reference and sparsity work (not part of any cache
    key: it changes how fast they run, not what they compute beyond float summation order)."""
    from sparsefuse.targets.registry import get_target

    start = time.perf_counter()
    out, target = config.out, get_target(config.target)
    lowered, engine = lowered_rel(target.tag), engine_rel(target.tag)  # the tag's checks, before any work
    remove_outputs(out, ["compile.json"])  # stale until this compile completes
    progress = progress or NullProgress()
    run = StageRunner(out, tool_versions(), progress)
    torch_side = TorchSide(config, source, check_threads(threads))
    if config.precision is not None:  # cheap, before any stage: bad calibration frames are refused now
        from sparsefuse.passes.precision.capture import check_finite

        check_finite(torch_side.precision_frames())
    inputs = input_hashes(config, torch_side)
    target_cfg = {"target": target.tag, "backend": target.backend}
    frames_cfg = {**target_cfg, **config.model_key_dict(), "profile_frames": PROFILE_FRAMES}
    verify_files = [*VERIFY_FILES, *([RUNNABLE_ONNX] if target.backend == "tensorrt" else [])]

    export = run.run("export", inputs, config.model_key_dict(), [EXPORT_ONNX, CONVERSION_JSON],
                     lambda: _export(torch_side, out, progress))
    graph, graph_stage = EXPORT_ONNX, export
    if config.sparsity is not None:
        graph_stage = run.run("sparsity", {**inputs, **export.outputs}, config.sparsity_key_dict(),
                              [SPARSITY_DIR], lambda: _sparsity(torch_side, out, config, progress))
        graph = SPARSITY_ONNX
        torch_side.plan = out / PLAN_JSON  # verify against the PRUNED model from here on
    passes = run.run("passes", graph_stage.outputs, {}, [PASSES_ONNX],
                     lambda: _passes(out, graph, PASSES_ONNX, progress))
    typed, typed_stage = PASSES_ONNX, passes
    if config.precision is not None:  # fp32 (None) is today's graph: no stage, no artifact
        typed_stage = run.run("precision", {**inputs, **passes.outputs},
                              {**config.precision_key_dict(), **target_cfg}, [PRECISION_DIR],
                              lambda: _precision(torch_side, out, config, target.backend, progress))
        typed = PRECISION_ONNX
    lower = run.run("lower", typed_stage.outputs, target_cfg, [lowered],
                    lambda: _lower(out, typed, lowered, target.backend, progress))
    build = run.run("build", lower.outputs, frames_cfg, [engine],
                    lambda: _build(torch_side, out, lowered, engine, target))
    verify = run.run("verify", {**lower.outputs, **build.outputs}, config.key_dict(), verify_files,
                     lambda: _verify(torch_side, out, lowered, engine, target, config.verify_frames))
    profile = run.run("profile", {**lower.outputs, **build.outputs}, {**frames_cfg, "runs": PROFILE_RUNS},
                      list(PROFILE_FILES), lambda: _profile(torch_side, out, lowered, target, build.details))
    # The report shows this compile's stage timings, so its key changes (and it is rewritten) every time.
    run.run("report", {**verify.outputs, **profile.outputs, **graph_stage.outputs},
            {"config": config.to_dict(), "stages": _stage_lines(run.records)}, [REPORT_MD],
            lambda: _report(out, config, run.records))

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


def input_hashes(config: CompileConfig, torch_side: TorchSide | None = None) -> dict[str, str]:
    """Hashes of the user-given inputs: rig, weights, and for a user model its code and frames
    (a preset's code is in the tool versions' source digest)."""
    rig = sha256_file(config.rig) if config.rig else "builtin"
    weights = sha256_file(config.weights) if config.weights else f"seeded init (seed {config.seed})"
    hashes = {"rig": rig, "weights": weights}
    if not config.is_preset:
        side = torch_side or TorchSide(config)
        hashes.update(side.source.digests())
    return hashes


class TorchSide:
    """The PyTorch side of a compile, through the model interface (compiler/model_source.py):
    the reference model, the converted model that is exported and pruned, and the frames. Built
    lazily (a fully cached recompile of a preset needs none of it)."""

    def __init__(self, config: CompileConfig, source: Any = None, threads: int = REFERENCE_THREADS) -> None:
        self.config = config
        self.threads = threads
        self._source = source
        self.plan: Path | None = None  # a sparsity plan.json: the reference is then the pruned model

    @functools.cached_property
    def source(self) -> Any:
        from sparsefuse.compiler.model_source import source_from_config

        return self._source if self._source is not None else source_from_config(self.config, self.rig)

    @property
    def spec(self) -> Any:
        return self.source.spec

    @functools.cached_property
    def rig(self) -> Any:
        """The user's rig, or None for the preset's built-in one."""
        if self.config.rig is None:
            return None
        from sparsefuse.models.rig import load_rig

        return load_rig(self.config.rig)

    @property
    def model(self) -> Any:
        """The converted model: pruned once ``plan`` is set, else dense."""
        return self.dense_model if self.plan is None else self.pruned_model

    @functools.cached_property
    def pruned_model(self) -> Any:
        """The dense model with ``plan`` applied (permutations, masks), the way the sparsity stage
        prunes it, so a cached sparsity stage gives the same reference."""
        import copy

        from sparsefuse.passes.sparsity.apply_torch import apply_plan_torch
        from sparsefuse.passes.sparsity.plan import read_plan

        pruned = copy.deepcopy(self.dense_model).eval()
        apply_plan_torch(pruned, read_plan(self.plan))
        return pruned

    @property
    def dense_model(self) -> Any:
        """The converted (exportable) model, before any pruning."""
        return self.source.converted

    @property
    def reference_model(self) -> Any:
        """What verify compares against: the user's ORIGINAL model, or the pruned converted model
        once a sparsity plan is applied (a plan prunes the converted weights)."""
        return self.source.original if self.plan is None else self.pruned_model

    def frame(self, seed: int, num_points: int | None = None) -> dict[str, np.ndarray]:
        """A seeded synthetic frame (presets only)."""
        return self.source.frames.frame(seed, num_points)

    def forward(self, frame: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The reference outputs (see ``reference_model``) by output name."""
        return self._run(self.reference_model, frame)

    def converted_forward(self, frame: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The converted model's outputs (the torch side of what was exported)."""
        return self._run(self.model, frame)

    def _run(self, model: Any, frame: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        previous = torch.get_num_threads()
        # The reference is index-heavy (gather / index_add per kernel offset); on a shared, busy
        # CPU its many short parallel regions stall: one tiny-preset forward measured 0.65-1.0 s
        # with 1 thread vs 3-18 s with 2 on our loaded 2-core machine. Speed is not its job.
        torch.set_num_threads(self.threads)
        try:
            return self.source.forward(model, frame)
        finally:
            torch.set_num_threads(previous)

    def export_frame(self) -> dict[str, np.ndarray]:
        return self.source.frames.export_frame()

    def calibration_frames(self, count: int) -> list[dict[str, Any]]:
        """``count`` torch frames for the sparsity stage (presets: seeds apart from export and
        verify; user models: their frames)."""
        import torch

        return [{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in f.items()}
                for f in self.source.frames.calibration_frames(count)]

    def precision_frames(self) -> list[dict[str, np.ndarray]]:
        """The precision stage's calibration frames (the spec's inputs only)."""
        count = self.config.precision.calib_frames if self.config.precision else 0
        names = self.spec.input_names
        return [{k: np.ascontiguousarray(f[k]) for k in names}
                for f in self.source.frames.calibration_frames(count)]

    def profile_frames(self) -> list[dict[str, np.ndarray]]:
        """The profile stage's frames (also sizing TensorRT's optimization profile)."""
        return [frame for _, frame in self.verify_frames(PROFILE_FRAMES)]

    def verify_frames(self, count: int) -> list[tuple[dict[str, Any], dict[str, np.ndarray]]]:
        """``count`` frames not used at export (presets: fresh seeds and point counts unlike the
        export frame's; user models: their frames after the first)."""
        spec_inputs = self.spec.input_names
        return [(info, {k: frame[k] for k in spec_inputs})
                for info, frame in self.source.frames.verify_frames(count)]


# --- stages: each writes its outputs atomically and returns its details -------------------

def _export(torch_side: TorchSide, out: Path, progress: Progress) -> dict[str, Any]:
    """export/model.onnx from the converted model, and export/conversion.json: what the conversion
    pass rewrote into our ops, what it kept, and the model spec."""
    import torch

    from sparsefuse.passes.export import export_model, read_param_map
    from sparsefuse.passes.manager import PassContext, run_producer

    frame = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in torch_side.export_frame().items()}
    ctx = PassContext(log=progress.log)
    report = torch_side.source.conversion[1]
    model, record = run_producer(
        "export", lambda: export_model(torch_side.dense_model, frame, spec=torch_side.spec), ctx)
    write_json(out / CONVERSION_JSON, {"schema_version": SCHEMA_VERSION, "model": torch_side.source.label,
                                       "spec": torch_side.spec.to_dict(), **report.to_dict(),
                                       "warnings": torch_side.source.warnings()})
    write_bytes(out / EXPORT_ONNX, model.SerializeToString())
    sizes = {dim: int(frame[item.name].shape[axis])
             for item in torch_side.spec.inputs for axis, dim in item.dynamic}
    return {"passes": [record.to_dict()], "num_points": sizes.get("num_points"), "dynamic": sizes,
            "params_mapped": len(read_param_map(model)), "custom_nodes": _custom_op_counts(model),
            "converted": len(report.converted)}


def _sparsity(torch_side: TorchSide, out: Path, config: CompileConfig, progress: Progress) -> dict[str, Any]:
    """OUT/sparsity/: plan.json, curves.npz, plots and the pruned ONNX (model.onnx). A display with
    ``stage_progress(stage, done, total, label)`` is told each layer the sensitivity measures."""
    import torch

    from sparsefuse.passes.sparsity.stage import run_sparsity_stage

    spec = config.sparsity
    frames = torch_side.calibration_frames(1 if spec.synthetic else spec.calib)
    previous = torch.get_num_threads()
    torch.set_num_threads(torch_side.threads)  # many small forwards: see TorchSide.forward
    # Optional in the Progress protocol (compiler/stages.py): other displays need not implement it.
    stage_progress = getattr(progress, "stage_progress", None)
    layer_progress = functools.partial(stage_progress, "sparsity") if stage_progress else None
    try:
        with atomic_dir(out / SPARSITY_DIR) as tmp:
            _, pruned_onnx, plan = run_sparsity_stage(
                torch_side.dense_model, onnx.load(out / EXPORT_ONNX), spec, tmp, frames,
                forward=torch_side.source.torch_forward, transforms=torch_side.spec.outputs,
                modality=torch_side.source.modality_of, layer_progress=layer_progress)
            write_bytes(tmp / Path(SPARSITY_ONNX).name, pruned_onnx.SerializeToString())
    finally:
        torch.set_num_threads(previous)
    return {"allocator": plan.allocator, "pattern": plan.pattern, "budget_kind": plan.budget_kind,
            "budget": plan.budget_fraction, "achieved_fraction": plan.achieved_fraction,
            "achieved_sparsity": plan.achieved_sparsity, "layers": len(plan.layers),
            "forward_counts": dict(plan.forward_counts)}


def _passes(out: Path, src: str, dst: str, progress: Progress) -> dict[str, Any]:
    from sparsefuse.passes.cleanup import cleanup
    from sparsefuse.passes.manager import Pass, PassContext, run_passes

    ctx = PassContext(log=progress.log)
    model, records = run_passes([Pass("cleanup", cleanup)], onnx.load(out / src), ctx)
    write_bytes(out / dst, model.SerializeToString())
    return {"passes": [r.to_dict() for r in records]}


def _precision(torch_side: TorchSide, out: Path, config: CompileConfig, backend: str,
               progress: Progress) -> dict[str, Any]:
    """OUT/precision/: the FP16 / INT8 graph (model.onnx), report.json (decisions, reasons, end-to-end
    error on the calibration frames, verify tolerances) and, for int8, scales.json."""
    from sparsefuse.passes.precision.stage import run_precision_stage

    result = run_precision_stage(onnx.load(out / PASSES_ONNX), config.precision,
                                 torch_side.precision_frames(), backend, progress.log)
    with atomic_dir(out / PRECISION_DIR) as tmp:
        write_bytes(tmp / Path(PRECISION_ONNX).name, result.model.SerializeToString())
        write_json(tmp / Path(PRECISION_REPORT).name, result.report)
        if result.scales:
            write_json(tmp / "scales.json", result.scales)
    return {"precision": config.precision.precision, "calibration_error": result.report["calibration_error"],
            "islands": len(result.report.get("islands", [])),
            "kept_float": len(result.report.get("kept_float", {}))}


def _lower(out: Path, src: str, lowered: str, backend: str, progress: Progress) -> dict[str, Any]:
    from sparsefuse.passes.lower import lower
    from sparsefuse.passes.manager import Pass, PassContext, run_passes

    model, records = run_passes([Pass("lower", lower)], onnx.load(out / src),
                                PassContext(target_backend=backend, log=progress.log))
    write_bytes(out / lowered, model.SerializeToString())
    return {"passes": [r.to_dict() for r in records], "functions": [f.name for f in model.functions]}


def _build(torch_side: TorchSide, out: Path, lowered: str, engine: str, target: Any) -> dict[str, Any]:
    """cpu: the ORT-optimized model. TensorRT: the engine artifacts (recipes where TensorRT is
    absent), the optimization profile's point counts and the symbolic sizes from the profile frames."""
    if target.backend == "onnxruntime":
        from sparsefuse.targets.backends import onnxruntime as ort_backend

        with atomic_dir(out / engine) as tmp:
            built = ort_backend.build(out / lowered, target, None, tmp)
        return {"backend": target.backend, "built": _describe(built)}
    from sparsefuse.targets.engine import emit_engine_artifacts

    with atomic_dir(out / engine) as tmp:
        artifacts = emit_engine_artifacts(out / lowered, target, None, tmp,
                                          feeds_list=torch_side.profile_frames())
    return {"backend": target.backend, "built": artifacts.to_dict(),
            "dynamic_dims": dict(artifacts.dynamic_dims)}


def _verify(torch_side: TorchSide, out: Path, lowered: str, engine: str, target: Any,
            count: int) -> dict[str, Any]:
    from sparsefuse.compiler.verify import tolerances_for, verify

    checked, model = _what_verify_runs(out, lowered, engine, target)
    pairs = torch_side.verify_frames(count)
    precision_report = out / PRECISION_REPORT if torch_side.config.precision is not None else None
    tol, rule = tolerances_for(precision_report)
    frames = [frame for _, frame in pairs]
    # One reference forward per frame, shared by the comparison, the conversion check and the metrics.
    references = [torch_side.forward(frame) for frame in frames]
    golden = {id(frame): ref for frame, ref in zip(frames, references, strict=True)}
    report = verify(
        functools.partial(engine_session, out / engine, out / model),
        lambda frame: golden[id(frame)],
        frames,
        [info for info, _ in pairs],
        out,
        model,
        tol,
        rule,
    )
    reference = ("the PRUNED PyTorch model (sparsity/plan.json applied)" if torch_side.plan
                 else "the PyTorch model" if torch_side.source.is_preset
                 else "the ORIGINAL user model (third-party modules as written)")
    doc = {**report.to_dict(), "checked": checked, "onnx": model, "reference": reference}
    if torch_side.plan is None and not torch_side.source.is_preset:
        doc["conversion"] = conversion_check(torch_side, frames, references)
    if torch_side.spec.evaluate is not None:
        session = engine_session(out / engine, out / model)
        doc["metrics"] = task_metrics(torch_side, session, count, references)
    write_json(out / "verify.json", doc)
    return {"pass": report.passed, "polygraphy_pass": report.polygraphy_passed, "reference": reference,
            "polygraphy_command": report.polygraphy_command, "checked": checked}


def task_metrics(torch_side: TorchSide, session: Any, count: int,
                 references: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """The spec's ``evaluate(outputs, frame)`` on the verify frames, for the reference (its outputs
    ``references``, in verify-frame order) and for the ONNX graph: mean per metric and the difference
    (an accuracy gate reads these)."""
    evaluate = torch_side.spec.evaluate
    names = torch_side.spec.input_names
    totals: dict[str, dict[str, float]] = {}
    frames = torch_side.source.frames.verify_frames(count)  # full frames: labels included
    for (_, frame), reference in zip(frames, references, strict=True):
        feeds = {k: np.ascontiguousarray(frame[k]) for k in names}
        onnx_out = dict(zip(torch_side.spec.output_names, session.run(None, feeds), strict=True))
        for side, outputs in (("reference", reference), ("onnx", onnx_out)):
            for metric, value in evaluate(outputs, frame).items():
                totals.setdefault(metric, {}).setdefault(side, 0.0)
                totals[metric][side] += float(value) / len(frames)
    return {metric: {**sides, "delta": sides.get("onnx", 0.0) - sides.get("reference", 0.0)}
            for metric, sides in sorted(totals.items())}


def conversion_check(torch_side: TorchSide, frames: list[dict[str, np.ndarray]],
                     references: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """The converted torch model against the original (its outputs ``references``) on the verify
    frames, per output: where a verify failure comes from (conversion or export)."""
    from sparsefuse.compiler.verify import check_output

    worst: dict[str, dict[str, Any]] = {}
    for frame, ref in zip(frames, references, strict=True):
        got = torch_side.converted_forward(frame)
        for name in ref:
            check = check_output(name, got[name], ref[name]).to_dict()
            if name not in worst or check["max_abs"] > worst[name]["max_abs"]:
                worst[name] = check
    return {"what": "the converted PyTorch model (our ops) against the original, worst frame per output",
            "outputs": worst, "pass": all(c["pass"] for c in worst.values())}


def _what_verify_runs(out: Path, lowered: str, engine: str, target: Any) -> tuple[str, str]:
    """(a plain statement of what verify checks, the ONNX relpath ORT runs)."""
    from sparsefuse.passes.lower import runnable

    if target.backend == "onnxruntime":
        return (f"the ONNX Runtime model that ships ({engine}/model.ort.onnx, else the lowered ONNX) "
                "against PyTorch", lowered)
    write_bytes(out / RUNNABLE_ONNX, runnable(onnx.load(out / lowered)).SerializeToString())
    engine_built = (out / engine / "model.plan").is_file()
    what = (f"the TensorRT-lowered graph ({lowered}) run in ONNX Runtime with the custom ops' function "
            f"bodies attached ({RUNNABLE_ONNX}) against PyTorch: this checks the graph, "
            "NOT a TensorRT engine")
    if engine_built:
        return what + f"; the engine built in {engine}/ is not compared here", RUNNABLE_ONNX
    return what + " (none was built on this machine: run the recipes in " + engine + "/ on the target)", \
        RUNNABLE_ONNX


def _profile(torch_side: TorchSide, out: Path, lowered: str, target: Any,
             build: dict[str, Any]) -> dict[str, Any]:
    """profile.json + .png: measured in ORT for cpu, estimated by the cost model for TensorRT."""
    from sparsefuse.targets.engine import profile_for_target

    frames = torch_side.profile_frames()
    profile = profile_for_target(out / lowered, target, frames, out / "profile.json",
                                 runs=PROFILE_RUNS, warmup=2, dims=build.get("dynamic_dims"))
    doc = profile.to_json()
    return {"label": doc["label"], "latency_ms": doc["latency_ms"], "per_module_ms": doc["per_module_ms"]}


def _report(out: Path, config: CompileConfig, records: list[StageRecord]) -> dict[str, Any]:
    from sparsefuse.compiler.report import write_report

    write_report(out, config, records)
    return {}


def _stage_lines(records: list[StageRecord]) -> list[list[Any]]:
    """(name, cached, wall_s) of the stages so far: the report shows this compile's timings."""
    return [[r.name, r.cached, round(r.wall_s, 3)] for r in records]


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
