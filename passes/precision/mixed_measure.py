"""Distortion δ[i,k] of one layer taking one mixed candidate (precision x pattern), simulated in torch.

δ[i,k] = mean over calibration frames of (1/O) Σ_o mean((y_o − ŷ_o)²) / var_o, the sparsity stage's
metric (sensitivity.py), on the outputs as ``forward`` returns them (pass a
:func:`~sparsefuse.passes.sparsity.calib.consumer_forward` to measure in consumer space). Only layer i
changes; the reference y is the float model (fp16 dense is taken as the reference: δ = 0).

- 2:4: the magnitude 2:4 mask along the layer's reduction axis (patterns.nm_mask);
- int8: the weight fake-quantized per output channel (int8.quantize_weight, symmetric max) and the
  layer's input activation fake-quantized per tensor, symmetric, scale = amax / 127 with amax the
  calibrated max |x| over the frames (TensorRT's signed INT8);
- int8 + 2:4: the mask first, then quantization (a zero stays exactly 0).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from sparsefuse.passes.precision.int8 import INT8_MAX, quantize_weight
from sparsefuse.passes.sparsity.discover import PrunableLayer
from sparsefuse.passes.sparsity.patterns import nm_mask
from sparsefuse.passes.sparsity.sensitivity import frame_distortion, masked, output_variances

_MIN_SCALE = 1e-12
Forward = Callable[[torch.nn.Module, Any], Any]


def owner_module(model: torch.nn.Module, layer: PrunableLayer) -> torch.nn.Module:
    """The module holding the layer's weight (its first positional input is the activation)."""
    return model.get_submodule(layer.name.rpartition(".")[0])


def fake_quant_weight(weight: torch.Tensor, axis: int) -> torch.Tensor:
    """quantize -> dequantize per output channel ``axis`` (same rounding as the ONNX QDQ pass)."""
    q, scale = quantize_weight(weight.detach().cpu().numpy(), axis)
    shape = [1] * weight.dim()
    shape[axis] = -1
    deq = q.astype(np.float32) * scale.reshape(shape)
    return torch.from_numpy(deq).to(device=weight.device, dtype=weight.dtype)


def fake_quant_activation(x: torch.Tensor, amax: float) -> torch.Tensor:
    """Per-tensor symmetric int8 quantize -> dequantize, scale = amax / 127."""
    scale = max(float(amax) / INT8_MAX, _MIN_SCALE)
    return torch.clamp(torch.round(x / scale), -INT8_MAX, INT8_MAX) * scale


def calibrate_inputs(model: torch.nn.Module, frames: Sequence[Any], forward: Forward,
                     layers: Sequence[PrunableLayer]) -> dict[str, float]:
    """{layer name: max |input activation| over ``frames``} (the ``max`` calibrator), one forward
    per frame."""
    amax: dict[str, float] = {layer.name: 0.0 for layer in layers}
    handles = []
    for layer in layers:
        def hook(_m, args, name=layer.name):
            x = args[0] if args else None
            if isinstance(x, torch.Tensor) and x.numel():
                amax[name] = max(amax[name], float(x.detach().abs().max()))
        handles.append(owner_module(model, layer).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for frame in frames:
                forward(model, frame)
    finally:
        for h in handles:
            h.remove()
    return amax


def candidate_weight(weight: torch.Tensor, layer: PrunableLayer, precision: str,
                     pattern: str) -> torch.Tensor:
    """The layer's weight as the candidate realizes it (mask, then fake quantization)."""
    w = weight.detach().clone()
    if pattern == "2:4":
        w = w * nm_mask(w, layer.in_axis).to(w.dtype)
    if precision == "int8":
        w = fake_quant_weight(w, layer.out_axis)
    return w


@contextmanager
def quantized_input(module: torch.nn.Module, amax: float):
    """Fake-quantize ``module``'s first input while inside the block."""
    def hook(_m, args):
        return (fake_quant_activation(args[0], amax), *args[1:])

    handle = module.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def measure_mixed(model: torch.nn.Module, frames: Sequence[Any], forward: Forward,
                  layers: Sequence[PrunableLayer], candidates: Sequence[Sequence[tuple[str, str]]],
                  amax: Mapping[str, float]) -> list[list[float]]:
    """δ[i][k] for ``candidates[i][k]`` = (precision, pattern); fp16 dense costs no forward (δ = 0).
    Full forwards: F + F·(Σ_i K_i − L) of them."""
    model.eval()
    with torch.no_grad():
        dense = [forward(model, f) for f in frames]
    variances = output_variances(dense)
    result = []
    for layer, cands in zip(layers, candidates, strict=True):
        weight = model.get_parameter(layer.name)
        row = []
        for precision, pattern in cands:
            if precision == "fp16" and pattern == "dense":
                row.append(0.0)
                continue
            new = {layer.name: candidate_weight(weight, layer, precision, pattern)}
            per_frame = []
            with masked(model, new), _maybe_quantized(model, layer, precision, amax), torch.no_grad():
                for f, frame in enumerate(frames):
                    per_frame.append(frame_distortion(dense[f], forward(model, frame), variances))
            row.append(float(np.mean(per_frame)))
        result.append(row)
    return result


@contextmanager
def _maybe_quantized(model: torch.nn.Module, layer: PrunableLayer, precision: str,
                     amax: Mapping[str, float]):
    if precision != "int8":
        yield
        return
    with quantized_input(owner_module(model, layer), amax[layer.name]):
        yield
