"""Verify: fresh synthetic frames through ONNX Runtime and PyTorch, compared per docs/tolerances.md.

- ORT runs through polygraphy's ``OnnxrtRunner``, fed by our own session (a callable returning
  the ``InferenceSession``), and polygraphy's ``Comparator`` / ``CompareFunc.simple`` re-check
  each frame with our tolerances, so its verdict and ours must agree.
- The inputs and the PyTorch (golden) outputs are saved in polygraphy's JSON format, and
  verify.json carries the exact ``polygraphy run`` command that reproduces the comparison (and
  can be shrunk with ``polygraphy debug reduce``).

Tolerances (docs/tolerances.md): float32 max|a-b| <= 1e-4*max|ref| + 1e-5; integers exact; an FP16
graph the float16 rule; an INT8 (Q/DQ) graph a per-output bound derived from its calibrated scales
(OUT/precision/report.json, :func:`tolerances_for`).
``max_rel`` is max|a-b| / max|ref| (normalised by the reference's range, not per element,
so it stays meaningful where ref crosses zero).
"""

from __future__ import annotations

import shlex
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparsefuse.atomic import write_text

SCHEMA_VERSION = 1
Frame = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Tolerance:
    """|a-b| <= rel*max|ref| + abs for floating outputs; integer outputs must be exact."""

    rel: float = 1e-4
    abs: float = 1e-5

    def bound(self, ref: np.ndarray) -> float:
        if not np.issubdtype(ref.dtype, np.floating):
            return 0.0
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
        return self.rel * scale + self.abs


FP32 = Tolerance(1e-4, 1e-5)
FP16 = Tolerance(1e-2, 1e-3)
FP32_RULE = {"float32": "max|a-b| <= 1e-4*max|ref| + 1e-5", "integer": "exact",
             "max_rel": "max|a-b| / max|ref|"}
Tolerances = Tolerance | Mapping[str, Tolerance]


def tolerances_for(precision_report: Path | None) -> tuple[Tolerances, dict[str, Any]]:
    """(tolerance per output, the rule verify.json records) for a graph of the precision stage's
    report (None: the FP32 graph, the float32 rule)."""
    import json

    if precision_report is None:
        return FP32, {**FP32_RULE, "applied": "float32"}
    report = json.loads(Path(precision_report).read_text())
    tols = {name: Tolerance(float(t["rel"]), float(t["abs"])) for name, t in report["tolerance"].items()}
    rules = {name: t["rule"] for name, t in report["tolerance"].items()}
    return tols, {**FP32_RULE, "applied": report["precision"], "per_output": rules,
                  "bounds": {n: {"rel": t.rel, "abs": t.abs} for n, t in tols.items()},
                  "derivation": "docs/tolerances.md"}


@dataclass(frozen=True)
class OutputCheck:
    """One output of one frame."""

    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    tolerance: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "max_abs": self.max_abs, "max_rel": self.max_rel,
                "tolerance": self.tolerance, "pass": self.passed}


def check_output(name: str, got: np.ndarray, ref: np.ndarray, tol: Tolerance = FP32) -> OutputCheck:
    """Compare one output against its reference; shape or dtype-kind mismatch fails."""
    got, ref = np.asarray(got), np.asarray(ref)
    bound = tol.bound(ref)
    if got.shape != ref.shape:
        return OutputCheck(name, tuple(got.shape), float("inf"), float("inf"), bound, False)
    if ref.size == 0:
        return OutputCheck(name, tuple(ref.shape), 0.0, 0.0, bound, True)
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    max_abs = float(np.max(diff))
    scale = float(np.max(np.abs(ref.astype(np.float64))))
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    passed = bool(np.all(np.isfinite(got))) and max_abs <= bound
    return OutputCheck(name, tuple(ref.shape), max_abs, max_rel, bound, passed)


@dataclass(frozen=True)
class VerifyReport:
    frames: list[dict[str, Any]]  # per frame: seed, num_points, outputs {name: OutputCheck dict}
    passed: bool
    polygraphy_passed: bool
    polygraphy_command: str
    rule: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "pass": self.passed, "frames": self.frames,
                "polygraphy": {"pass": self.polygraphy_passed, "command": self.polygraphy_command,
                               "run_from": "the artifact directory (OUT)"},
                "rule": dict(self.rule) if self.rule is not None else dict(FP32_RULE)}


def verify(
    session_fn: Callable[[], Any],
    reference_fn: Callable[[Frame], Mapping[str, np.ndarray]],
    frames: Sequence[Frame],
    frame_info: Sequence[Mapping[str, Any]],
    out_dir: Path,
    onnx_relpath: str,
    tol: Tolerances = FP32,
    rule: Mapping[str, Any] | None = None,
) -> VerifyReport:
    """Run ``frames`` through ORT (``session_fn``) and PyTorch (``reference_fn``) and compare.

    Writes out_dir/verify/inputs.json and out_dir/verify/golden.json (polygraphy JSON);
    ``onnx_relpath`` (relative to out_dir) is the model the printed polygraphy command runs.
    """
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.comparator import Comparator, CompareFunc, RunResults
    from polygraphy.json import to_json

    feeds = [OrderedDict((k, np.ascontiguousarray(v)) for k, v in frame.items()) for frame in frames]
    with _quiet_polygraphy():
        ort_results = Comparator.run([OnnxrtRunner(session_fn, name="onnxrt")], data_loader=feeds)
    ort_iters = ort_results["onnxrt"]
    golden = RunResults()
    golden.add([{k: np.asarray(v) for k, v in reference_fn(f).items()} for f in frames], runner_name="torch")
    ref_iters = golden["torch"]

    frame_reports, poly_ok, commands = [], True, []
    for index, (got, ref) in enumerate(zip(ort_iters, ref_iters, strict=True)):
        checks = [check_output(name, got[name], ref[name], tol if isinstance(tol, Tolerance) else tol[name])
                  for name in ref.keys()]
        bounds = {c.name: c.tolerance for c in checks}
        pair = RunResults()
        pair.add([dict(got.items())], runner_name="onnxrt")
        pair.add([dict(ref.items())], runner_name="torch")
        compare = CompareFunc.simple(atol=bounds, rtol=0.0, check_error_stat="max")
        with _quiet_polygraphy():
            poly_ok &= bool(Comparator.compare_accuracy(pair, compare_func=compare))
        frame_reports.append({**dict(frame_info[index]), "outputs": {c.name: c.to_dict() for c in checks},
                              "pass": all(c.passed for c in checks)})
        # Bounds scale with each frame's outputs (docs/tolerances.md) while polygraphy applies one bound per
        # output to all iterations, so each frame gets its own files and command.
        one = RunResults()
        one.add([dict(ref.items())], runner_name="torch")
        inputs, outputs = f"verify/frames/{index}_inputs.json", f"verify/frames/{index}_golden.json"
        write_text(out_dir / inputs, to_json([feeds[index]]))
        write_text(out_dir / outputs, to_json(one))
        commands.append(polygraphy_command(onnx_relpath, bounds, inputs, outputs))

    write_text(out_dir / "verify" / "inputs.json", to_json(feeds))
    write_text(out_dir / "verify" / "golden.json", to_json(golden))
    command = " && ".join(commands)
    passed = all(f["pass"] for f in frame_reports)
    return VerifyReport(frame_reports, passed, poly_ok, command, rule)


def polygraphy_command(
    onnx_relpath: str,
    bounds: Mapping[str, float],
    inputs: str = "verify/inputs.json",
    outputs: str = "verify/golden.json",
) -> str:
    """``polygraphy run`` reproducing the comparison from the artifact directory.

    polygraphy applies one tolerance per output to every iteration in ``inputs``; ``bounds`` must
    hold for all of them (the strictest per-frame bound, or one frame's own).
    """
    # Rounded down to 6 digits so the printed bound is never looser than ours.
    atol = " ".join(f"{name}:{bound * (1 - 1e-5):.6g}" for name, bound in sorted(bounds.items()))
    return (f"polygraphy run {shlex.quote(onnx_relpath)} --onnxrt --load-inputs {inputs} "
            f"--load-outputs {outputs} --check-error-stat max --rtol 0 --atol {atol}")


def _quiet_polygraphy() -> Any:
    """polygraphy logs every comparison; the compile display shows its own summary."""
    from polygraphy.logger import G_LOGGER

    G_LOGGER.colors = False  # its color probe prints a warning when `colored` is absent
    return G_LOGGER.verbosity(G_LOGGER.CRITICAL)
