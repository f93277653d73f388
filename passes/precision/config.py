"""PrecisionConfig: what the precision stage is asked to do, validated once at the edge."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sparsefuse.errors import SparsefuseError

PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATORS = ("max", "percentile", "entropy", "mse")
# max: on bevfusion-tiny's ReLU outputs (45-98 % zeros) a 99.99th percentile, entropy or mse clips many
# of the nonzero values, so fewer activations pass the sensitivity gate and INT8 gains nothing
# (bench/RESULTS.md, Issue 15); max is also ModelOpt's default INT8 activation calibrator.
DEFAULT_CALIBRATOR = "max"
DEFAULT_PERCENTILE = 99.99
DEFAULT_CALIB_FRAMES = 8
MAX_CALIB_FRAMES = 256
# A node runs FP16 when its FP16 output differs from FP32 by at most this fraction of its FP32 output
# range (max|y16 - y32| / max|y32|) on every calibration frame. A tenth of the end-to-end float16
# verify rule (1e-2 · max|ref|, docs/tolerances.md): a chain of such nodes still fits that budget.
DEFAULT_FP16_THRESHOLD = 1e-3
# An activation stays float when quantizing it ALONE moves an output by more than this fraction of the
# output's range on the calibration frames (e.g. bevfusion-tiny's camera BEV features: a heavy tail to
# ~600 whose small values carry the signal). 1 quantizes every site (the most speed, no accuracy guard).
# 0.1 measured on bevfusion-tiny: 1.6x on the dense part, -0.17 mIoU points, mAP unchanged (0.02: 1.2x).
DEFAULT_INT8_SENSITIVITY = 0.1


@dataclass(frozen=True)
class PrecisionConfig:
    """precision: fp32 | fp16 | int8; calibrator: int8 activation calibrator (CALIBRATORS);
    percentile: in (0, 100], for ``percentile``; calib_frames: calibration frames (fp16 island
    measurement and int8 calibration); fp16_threshold: relative per-node FP16 error bound;
    int8_sensitivity: relative output error above which an activation stays float."""

    precision: str = "fp32"
    calibrator: str = DEFAULT_CALIBRATOR
    percentile: float = DEFAULT_PERCENTILE
    calib_frames: int = DEFAULT_CALIB_FRAMES
    fp16_threshold: float = DEFAULT_FP16_THRESHOLD
    int8_sensitivity: float = DEFAULT_INT8_SENSITIVITY

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_precision_config(precision: str = "fp32", calibrator: str | None = None,
                          calib_frames: int = DEFAULT_CALIB_FRAMES,
                          fp16_threshold: float = DEFAULT_FP16_THRESHOLD,
                          int8_sensitivity: float | None = None) -> PrecisionConfig:
    """Validate the options. ``calibrator``: a name, or ``percentile=99.9`` for another percentile."""
    if precision not in PRECISIONS:
        raise SparsefuseError(f"unknown precision {precision!r}",
                              f"--precision takes one of {', '.join(PRECISIONS)}")
    name, percentile = _parse_calibrator(calibrator or DEFAULT_CALIBRATOR)
    if calibrator is not None and precision != "int8":
        raise SparsefuseError(f"--calibrator applies to --precision int8, not {precision}",
                              "drop --calibrator, or pass --precision int8")
    if not isinstance(calib_frames, int) or not 1 <= calib_frames <= MAX_CALIB_FRAMES:
        raise SparsefuseError(f"--calib-frames must be an integer in [1, {MAX_CALIB_FRAMES}], "
                              f"got {calib_frames!r}",
                              f"the default is {DEFAULT_CALIB_FRAMES}")
    if not 0.0 < float(fp16_threshold) < 1.0:
        raise SparsefuseError(f"fp16 threshold must be in (0, 1), got {fp16_threshold!r}",
                              f"the default is {DEFAULT_FP16_THRESHOLD} of each node's output range")
    if int8_sensitivity is not None and precision != "int8":
        raise SparsefuseError(f"--int8-sensitivity applies to --precision int8, not {precision}",
                              "drop --int8-sensitivity, or pass --precision int8")
    sensitivity = DEFAULT_INT8_SENSITIVITY if int8_sensitivity is None else int8_sensitivity
    if not isinstance(sensitivity, int | float) or not 0.0 < float(sensitivity) <= 1.0:
        raise SparsefuseError(f"--int8-sensitivity must be in (0, 1], got {int8_sensitivity!r}",
                              f"the default {DEFAULT_INT8_SENSITIVITY} keeps float the activations whose "
                              "quantization alone moves an output by more than 10 % of its range")
    return PrecisionConfig(precision, name, percentile, calib_frames, float(fp16_threshold),
                           float(sensitivity))


def _parse_calibrator(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    if name not in CALIBRATORS:
        raise SparsefuseError(f"unknown calibrator {name!r}",
                              f"--calibrator takes one of {', '.join(CALIBRATORS)} "
                              "(percentile=99.9 for another percentile)")
    if not value:
        return name, DEFAULT_PERCENTILE
    if name != "percentile":
        raise SparsefuseError(f"calibrator {name!r} takes no value",
                              "only percentile takes one, e.g. percentile=99.9")
    try:
        percentile = float(value)
    except ValueError:
        percentile = float("nan")
    if not 0.0 < percentile <= 100.0:
        raise SparsefuseError(f"percentile must be in (0, 100], got {value!r}",
                              "e.g. --calibrator percentile=99.99")
    return name, percentile


def check_target_precision(precision: str, target: Any) -> None:
    """Refuse a precision the target cannot run: a TensorRT target needs a nonzero FP16 / INT8 tensor
    rate in its registry entry (0 means "not supported", targets/registry.py). ONNX Runtime's CPU
    execution provider runs FP16 and QDQ INT8 graphs on any host."""
    if precision == "fp32" or target.backend != "tensorrt":
        return
    field = {"fp16": "fp16_dense_tflops", "int8": "int8_dense_tops"}[precision]
    if not getattr(target, field, 0.0):
        raise SparsefuseError(f"target {target.tag} cannot run {precision}: its {field} is 0 (not supported)",
                              f"pick --precision fp32, or a target with {precision} tensor cores "
                              "(`sparsefuse targets`)")
