"""Accuracy gate: outputs against golden outputs, and a benchmark metric within ±tolerance.

Tolerances follow docs/tolerances.md: float32 max|a−b| ≤ 1e-4·max|ref| + 1e-5; float16 / TF32
1e-2·max|ref| + 1e-3; integer and coordinate outputs exact. Per-output overrides come from a
tolerances mapping ``{name: {"rtol_of_max": r, "atol": a}}`` (as stored in a hand-off bundle).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

FLOAT32 = (1e-4, 1e-5)
FLOAT16 = (1e-2, 1e-3)


@dataclass(frozen=True)
class Tolerance:
    rtol_of_max: float  # fraction of max|ref|
    atol: float
    exact: bool = False

    def to_json(self) -> dict[str, float | bool]:
        return {"rtol_of_max": self.rtol_of_max, "atol": self.atol, "exact": self.exact}


def default_tolerance(dtype: np.dtype, precision: str = "fp32") -> Tolerance:
    """docs/tolerances.md rule for an output of ``dtype`` produced at ``precision`` (fp32/fp16/tf32)."""
    if not np.issubdtype(dtype, np.floating):
        return Tolerance(0.0, 0.0, exact=True)
    rtol, atol = FLOAT32 if precision == "fp32" and dtype != np.float16 else FLOAT16
    return Tolerance(rtol, atol)


def tolerance_from_json(doc: Mapping[str, object]) -> Tolerance:
    return Tolerance(
        float(doc.get("rtol_of_max", 0.0)), float(doc.get("atol", 0.0)), bool(doc.get("exact", False))
    )


@dataclass(frozen=True)
class OutputCheck:
    name: str
    passed: bool
    max_abs_err: float
    allowed: float
    message: str = ""


def check_output(name: str, got: np.ndarray, ref: np.ndarray, tol: Tolerance) -> OutputCheck:
    got, ref = np.asarray(got), np.asarray(ref)
    if got.shape != ref.shape:
        return OutputCheck(
            name, False, float("inf"), 0.0, f"shape {list(got.shape)} != golden {list(ref.shape)}"
        )
    if ref.size == 0:
        return OutputCheck(name, True, 0.0, 0.0)
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    err = float(diff.max())
    if not np.isfinite(err):
        return OutputCheck(name, False, err, 0.0, "non-finite values")
    if tol.exact:
        return OutputCheck(name, err == 0.0, err, 0.0, "" if err == 0.0 else "integer output differs")
    allowed = tol.rtol_of_max * float(np.abs(ref.astype(np.float64)).max()) + tol.atol
    return OutputCheck(name, err <= allowed, err, allowed, "" if err <= allowed else "exceeds tolerance")


def check_outputs(
    got: Mapping[str, np.ndarray],
    golden: Mapping[str, np.ndarray],
    tolerances: Mapping[str, Tolerance] | None = None,
    precision: str = "fp32",
) -> list[OutputCheck]:
    """One check per golden output; an output missing from ``got`` fails."""
    checks = []
    for name in golden:
        ref = np.asarray(golden[name])
        tol = (tolerances or {}).get(name) or default_tolerance(ref.dtype, precision)
        if name not in got:
            checks.append(OutputCheck(name, False, float("inf"), 0.0, "missing from the outputs"))
        else:
            checks.append(check_output(name, got[name], ref, tol))
    return checks


@dataclass(frozen=True)
class MetricCheck:
    name: str
    value: float
    reference: float
    tolerance: float
    passed: bool


def check_metric(name: str, value: float, reference: float, tolerance: float) -> MetricCheck:
    """mmdeploy's regression rule: reference − tol ≤ value ≤ reference + tol."""
    return MetricCheck(
        name, value, reference, tolerance, reference - tolerance <= value <= reference + tolerance
    )
