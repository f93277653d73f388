"""Layer discovery: every prunable weight, its modality, parameters, FLOPs and 2:4 eligibility.

A prunable unit is a weight tensor used by conv1d/2d/3d, conv_transpose2d, linear,
``sparsefuse::sparse_conv3d`` or ``sparsefuse::sparse_inverse_conv3d`` (both kind "sparseconv3d")
during a forward on calibration frames (docs/design.md §5). FLOPs are 2·MACs per frame with dense
weights, averaged over the traced frames:
- dense conv / linear: from the traced output shape (2 · out.numel() · Cin/g · R · S);
- transposed conv: 2 · in.numel() · Cout/g · R · S;
- sparse conv: 2 · (kernel-map pairs measured on the frame's active sites) · Cin · Cout.

2:4 eligibility (docs/sources.md S4): the 4-groups run along the GEMM reduction
dimension C (conv2d [K,C,R,S] along C; linear along in_features; sparse conv [Cout,kz,ky,kx,Cin]
along Cin). ``nm_valid``: C % 4 == 0 and groups == 1 (the pattern exists). ``nm_recommended``:
TensorRT best practice as used by CUDA-V2XFusion (valid, R·S ≤ 32, and C·R·S ≥ 512 when R·S > 1
or C·R·S ≥ 4096 when R·S = 1); smaller layers rarely get sparse tactics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sparsefuse.passes.sparsity.trace import Call, Trace, trace_forward

MODALITIES = ("camera", "lidar", "fusion", "head")
_DENSE_CONVS = {"conv1d": "conv1d", "conv2d": "conv2d", "conv3d": "conv3d"}
# Per kind: (axis of output channels, axis of input channels) in the weight tensor.
CHANNEL_AXES = {
    "conv1d": (0, 1),
    "conv2d": (0, 1),
    "conv3d": (0, 1),
    "linear": (0, 1),
    "conv_transpose2d": (1, 0),
    "sparseconv3d": (0, 4),
}


@dataclass(frozen=True)
class PrunableLayer:
    """One prunable weight. ``name`` is the torch parameter name (= ONNX initializer name)."""

    name: str
    kind: str
    modality: str
    shape: tuple[int, ...]
    params: int
    flops: float  # per frame, 2·MACs, dense weights
    groups: int
    nm_valid: bool
    nm_recommended: bool
    nm_reason: str

    @property
    def out_axis(self) -> int:
        return CHANNEL_AXES[self.kind][0]

    @property
    def in_axis(self) -> int:
        return CHANNEL_AXES[self.kind][1]


def modality_of(name: str) -> str:
    """Modality = first module path component if it is camera/lidar/fusion/head, else "other"."""
    head = name.split(".", 1)[0]
    return head if head in MODALITIES else "other"


def nm_eligibility(kind: str, shape: Sequence[int], groups: int) -> tuple[bool, bool, str]:
    """(valid, recommended, reason) for 2:4 along the reduction dimension."""
    if kind == "conv2d":
        c, rs = shape[1], shape[2] * shape[3]
    elif kind == "linear":
        c, rs = shape[1], 1
    elif kind == "sparseconv3d":
        c, rs = shape[4], shape[1] * shape[2] * shape[3]
    else:
        return (
            False,
            False,
            f"{kind}: not a TensorRT sparse-eligible layer type (conv2d, linear, sparse conv)",
        )
    if groups != 1:
        return False, False, f"grouped conv (groups={groups}): no 2:4 along a split reduction"
    if c % 4:
        return False, False, f"reduction dim C={c} is not a multiple of 4"
    if rs > 32:
        return True, False, f"kernel volume R·S={rs} > 32 (TensorRT best practice)"
    need = 512 if rs > 1 else 4096
    if c * rs < need:
        return True, False, f"C·R·S={c * rs} < {need}: too small for sparse tactics (TensorRT best practice)"
    return True, True, "eligible"


def _call_flops(call: Call, weight: torch.Tensor) -> tuple[str, float, int] | None:
    """(kind, flops, groups) of one traced call that uses ``weight``, or None if not prunable."""
    op = call.op
    out = call.outputs[0] if call.outputs else None
    if op in _DENSE_CONVS and out is not None:
        groups = int(call.args[6]) if len(call.args) > 6 else int(call.kwargs.get("groups", 1))
        return op, 2.0 * out.numel() * math.prod(weight.shape[1:]), groups
    if op == "conv_transpose2d":
        x = call.args[0]
        groups = int(call.args[6]) if len(call.args) > 6 else int(call.kwargs.get("groups", 1))
        return op, 2.0 * x.numel() * math.prod(weight.shape[1:]), groups
    if op == "linear" and out is not None:
        return "linear", 2.0 * out.numel() * weight.shape[1], 1
    if op in _SPARSE_WEIGHT_ARG:
        return "sparseconv3d", 2.0 * _kernel_pairs(call) * weight.shape[0] * weight.shape[-1], 1
    return None


# Sparse conv ops -> their argument names in order; the weight is the argument called "weight".
_SPARSE_ARGS = {
    "sparse_conv3d": ("features", "coords", "weight", "bias", "spatial_shape", "kernel_size", "stride",
                      "padding", "dilation", "subm", "activation"),
    "sparse_inverse_conv3d": ("features", "coords", "out_coords", "weight", "bias", "spatial_shape",
                              "kernel_size", "stride", "padding", "dilation", "activation"),
}
_SPARSE_WEIGHT_ARG = {op: names.index("weight") for op, names in _SPARSE_ARGS.items()}


def _kernel_pairs(call: Call) -> int:
    """Active (input, output) pairs of a sparse conv call, from its kernel map."""
    from sparsefuse.plugins.sparse_conv3d import build_kernel_map
    from sparsefuse.plugins.sparse_inverse_conv3d import build_inverse_kernel_map

    bound = dict(zip(_SPARSE_ARGS[call.op], call.args, strict=False)) | call.kwargs
    names = ("spatial_shape", "kernel_size", "stride", "padding", "dilation")
    geometry = [list(bound[name]) for name in names]
    if call.op == "sparse_inverse_conv3d":
        kmap = build_inverse_kernel_map(bound["coords"], bound["out_coords"], *geometry)
    else:
        kmap = build_kernel_map(bound["coords"], *geometry, bool(bound["subm"]))
    return int(sum(int(idx.numel()) for idx in kmap.in_index))


def _weight_arg(call: Call) -> Any:
    if call.op in _SPARSE_WEIGHT_ARG:
        index = _SPARSE_WEIGHT_ARG[call.op]
        return call.args[index] if len(call.args) > index else call.kwargs.get("weight")
    if call.op in (*_DENSE_CONVS, "conv_transpose2d", "linear"):
        return call.args[1] if len(call.args) > 1 else call.kwargs.get("weight")
    return None


def layers_from_traces(
    traces: Sequence[Trace], modality: Callable[[str], str] = modality_of
) -> list[PrunableLayer]:
    """Prunable layers found in one or more traces (FLOPs averaged over traces), in call order.
    ``modality`` tags a parameter name (default: its first path component, the presets' layout)."""
    found: dict[str, dict] = {}
    for trace in traces:
        per_trace: dict[str, float] = {}
        for call in trace.calls:
            weight = _weight_arg(call)
            name = trace.name_of(weight)
            if name is None:
                continue
            info = _call_flops(call, weight)
            if info is None:
                continue
            kind, flops, groups = info
            per_trace[name] = per_trace.get(name, 0.0) + flops
            found.setdefault(
                name, {"kind": kind, "shape": tuple(weight.shape), "groups": groups, "flops": []}
            )
        for name, flops in per_trace.items():
            found[name]["flops"].append(flops)
    layers = []
    for name, info in found.items():
        valid, rec, reason = nm_eligibility(info["kind"], info["shape"], info["groups"])
        layers.append(
            PrunableLayer(
                name=name,
                kind=info["kind"],
                modality=modality(name),
                shape=info["shape"],
                params=math.prod(info["shape"]),
                flops=float(sum(info["flops"]) / len(traces)),
                groups=info["groups"],
                nm_valid=valid,
                nm_recommended=rec,
                nm_reason=reason,
            )
        )
    return layers


def discover_layers(
    model: torch.nn.Module,
    frames: Sequence[Any],
    forward: Callable[[torch.nn.Module, Any], Any],
    max_frames: int = 4,
    modality: Callable[[str], str] = modality_of,
) -> tuple[list[PrunableLayer], list[Trace]]:
    """Trace up to ``max_frames`` calibration frames; returns (layers, traces)."""
    traces = [trace_forward(model, lambda f=f: forward(model, f))[0] for f in list(frames)[:max_frames]]
    return layers_from_traces(traces, modality), traces
