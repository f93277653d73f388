"""INT8 post-training quantization with explicit QuantizeLinear / DequantizeLinear (QDQ).

Placement follows TensorRT's explicit-quantization rules (the graph TensorRT 11 builds as written):
- Q/DQ on the data inputs of Conv / ConvTranspose / Gemm / MatMul only: activations per tensor
  (symmetric, zero point 0, scale = amax / 127 from the calibrator), weights per output channel
  (symmetric int8 initializer + DequantizeLinear; axis 0 for Conv / Gemm transB=1, 1 for
  ConvTranspose / MatMul / Gemm transB=0);
- the residual input of an Add fed by a quantized layer's output gets a Q/DQ as well, so that
  TensorRT fuses the add into that layer's epilogue (conv + add + relu -> one INT8 kernel);
- nowhere else: no Q/DQ on graph outputs, elementwise ops, pooling, reshapes or our custom ops
  (SparseConv3d etc. have no INT8 I/O in their op contract, docs/design.md §4), where TensorRT
  cannot fuse it and would run an extra reformat.
Biases stay FP32 (TensorRT quantizes them itself from the input and weight scales).

ONNX Runtime's CPU kernels (x86: u8 activations x s8 weights) want a different graph, so for the
``onnxruntime`` backend: activations are uint8 (zero point 0 and scale amax / 255 for a tensor that
is never negative on the calibration frames, e.g. a ReLU output, else zero point 128 and scale
amax / 127), and both inputs of a residual Add are quantized. ORT then drops each ReLU before a
uint8 Q (it saturates at 0 anyway) and fuses DQ -> Conv -> Q into QLinearConv.

A zero weight quantizes to exactly 0, so a 2:4 (or any) sparsity pattern survives quantization.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from sparsefuse.passes.manager import PassContext
from sparsefuse.passes.precision.edit import insert_nodes
from sparsefuse.plugins.common import DOMAIN

QUANTIZABLE = ("Conv", "ConvTranspose", "Gemm", "MatMul")
INT8_MAX = 127
PARAM_MAP_KEY = "sparsefuse.param_map"  # torch name -> initializer name (targets/cost_model.py)
_MIN_SCALE = 1e-12  # an all-zero channel still needs a positive scale


@dataclass(frozen=True)
class WeightSite:
    """A weight initializer quantized per channel along ``axis`` for node ``node``."""

    node: str
    weight: str
    axis: int


@dataclass
class QuantPlan:
    """What the int8 pass quantizes: activation tensors (per tensor), weights (per channel), and
    the quantizable-looking nodes it leaves alone with the reason."""

    activations: list[str] = field(default_factory=list)
    residuals: list[str] = field(default_factory=list)
    weights: list[WeightSite] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def calibrated(self) -> list[str]:
        return list(dict.fromkeys([*self.activations, *self.residuals]))


def plan_int8(model: onnx.ModelProto, backend: str | None = "tensorrt",
              keep_float: frozenset[str] = frozenset(),
              layers: frozenset[str] | None = None) -> QuantPlan:
    """Decide the Q/DQ sites of ``model`` for ``backend`` (see the module docstring).
    ``keep_float``: activation tensors left unquantized (too sensitive); a layer reading one keeps
    its float weight too (TensorRT has no INT8 kernel for a float input).
    ``layers``: per-layer selection (a mixed-precision plan): only the layers whose weight
    initializer (or torch parameter name, via the export's param map) is listed get Q/DQ; every
    other layer, activation x activation MatMuls included, stays float. None: all layers."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    selected = None if layers is None else _selected_initializers(model, layers)
    plan = QuantPlan()
    quantized_outputs: set[str] = set()
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            if node.domain == DOMAIN:
                plan.skipped[node.name] = (f"{node.op_type} stays float: its op contract has no INT8 "
                                           "inputs or outputs (docs/design.md §4)")
            continue
        if node.op_type not in QUANTIZABLE:
            continue
        weight_index = 1
        axis = _weight_axis(node, inits)
        weight = node.input[weight_index] if len(node.input) > weight_index else ""
        if selected is not None and weight not in selected:
            plan.skipped[node.name] = "stays float: the mixed-precision plan keeps this layer fp16"
            continue
        if node.op_type == "MatMul" and weight not in inits:  # activation x activation: both per tensor
            if set(node.input[:2]) & keep_float:
                plan.skipped[node.name] = "an input stays float: too sensitive to INT8"
                continue
            plan.activations.extend(n for n in node.input[:2] if n not in inits)
            quantized_outputs.add(node.output[0])
            continue
        if weight not in inits or axis is None:
            plan.skipped[node.name] = f"{node.op_type} weight is not a constant initializer of known layout"
            continue
        if node.input[0] in keep_float:
            plan.skipped[node.name] = f"input {node.input[0]} stays float: too sensitive to INT8"
            continue
        if node.input[0] not in inits:
            plan.activations.append(node.input[0])
        plan.weights.append(WeightSite(node.name, weight, axis))
        quantized_outputs.add(node.output[0])
    for node in graph.node:  # residual adds: quantize the branch that is not the fused layer's output
        if node.op_type != "Add" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            continue
        fused = [name for name in node.input if name in quantized_outputs]
        if len(fused) >= 1:
            # TensorRT fuses the layer's own output into the add; ORT's QLinearAdd wants both quantized.
            chosen = (list(node.input) if backend == "onnxruntime"
                      else [n for n in node.input if n not in fused[:1]])
            plan.residuals.extend(n for n in chosen if n not in inits and n not in keep_float)
    plan.activations = list(dict.fromkeys(plan.activations))
    plan.residuals = list(dict.fromkeys(plan.residuals))
    return plan


def _selected_initializers(model: onnx.ModelProto, layers: frozenset[str]) -> set[str]:
    """Initializer names of ``layers`` (initializer names, or torch names through the param map)."""
    import json

    to_init: dict[str, str] = {}
    for prop in model.metadata_props:
        if prop.key == PARAM_MAP_KEY:
            to_init = {str(k): str(v) for k, v in json.loads(prop.value).items()}
    return {to_init.get(name, name) for name in layers}


def _weight_axis(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> int | None:
    """The output-channel axis of the node's weight (None: no per-channel layout we can use)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1 if int(attrs.get("group", 1)) == 1 else None
    if node.op_type == "Gemm":
        return 0 if int(attrs.get("transB", 0)) else 1
    weight = inits.get(node.input[1]) if len(node.input) > 1 else None
    return 1 if weight is not None and len(weight.dims) == 2 else None  # MatMul: [K, N] -> per N


def quantize_weight(weight: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weight, float32 scale per channel): symmetric, scale = max|w| over the channel / 127.
    Zeros map to exactly 0."""
    moved = np.moveaxis(weight.astype(np.float32), axis, 0)
    amax = np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1)
    scale = np.maximum(amax / INT8_MAX, _MIN_SCALE).astype(np.float32)
    shape = [1] * weight.ndim
    shape[axis] = -1
    q = np.clip(np.rint(weight / scale.reshape(shape)), -INT8_MAX, INT8_MAX).astype(np.int8)
    return q, scale


def activation_qparams(amax: float, unsigned: bool, nonnegative: bool) -> tuple[float, np.ndarray]:
    """(scale, zero point array) of a per-tensor activation: int8 symmetric (TensorRT), or uint8
    (ONNX Runtime CPU) with the full 0..255 range for a never-negative tensor."""
    if not unsigned:
        return max(amax / INT8_MAX, _MIN_SCALE), np.array(0, np.int8)
    if nonnegative:
        return max(amax / 255.0, _MIN_SCALE), np.array(0, np.uint8)
    return max(amax / INT8_MAX, _MIN_SCALE), np.array(128, np.uint8)


def quantize_int8(model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
    """The QDQ pass. ``ctx.options["int8"]``: ``amax`` {activation tensor: calibrated amax} for every
    tensor of :func:`plan_int8`'s ``calibrated``; ``nonnegative`` (tensors never negative);
    ``keep_float`` (activations left float); ``layers`` (per-layer selection, :func:`plan_int8`);
    probes only: ``only`` (quantize just these activations), ``weights`` (False: leave the weights float)."""
    amax: dict[str, float] = ctx.options["int8"]["amax"]
    nonnegative: set[str] = set(ctx.options["int8"].get("nonnegative", ()))
    unsigned = ctx.target_backend == "onnxruntime"
    out = onnx.ModelProto()
    out.CopyFrom(model)
    opts = ctx.options["int8"]
    layers = opts.get("layers")
    plan = plan_int8(out, ctx.target_backend, frozenset(opts.get("keep_float", ())),
                     None if layers is None else frozenset(layers))
    if "only" in opts:  # probes (stage.py): quantize just these activations
        plan.activations = [t for t in plan.activations if t in opts["only"]]
        plan.residuals = [t for t in plan.residuals if t in opts["only"]]
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    new_nodes: dict[str, list[onnx.NodeProto]] = {}  # producer output (or "") -> nodes to put after it
    renamed: dict[str, str] = {}
    for name in plan.calibrated:
        scale, zero = activation_qparams(float(amax[name]), unsigned, name in nonnegative)
        s_name, z_name = f"{name}__qscale", f"{name}__qzero"
        graph.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), s_name),
                                  numpy_helper.from_array(zero, z_name)])
        q, dq = f"{name}__q", f"{name}__dq"
        new_nodes.setdefault(name, []).extend([
            helper.make_node("QuantizeLinear", [name, s_name, z_name], [q], name=f"{name}__Q"),
            helper.make_node("DequantizeLinear", [q, s_name, z_name], [dq], name=f"{name}__DQ")])
        renamed[name] = dq
    weight_dq: dict[str, str] = {}
    for site in plan.weights if ctx.options["int8"].get("weights", True) else []:
        if site.weight in weight_dq:
            continue
        tensor = inits[site.weight]
        q, scale = quantize_weight(numpy_helper.to_array(tensor), site.axis)
        q_name, s_name, z_name = f"{site.weight}__int8", f"{site.weight}__wscale", f"{site.weight}__wzero"
        graph.initializer.extend([numpy_helper.from_array(q, q_name), numpy_helper.from_array(scale, s_name),
                                  numpy_helper.from_array(np.zeros(scale.shape, np.int8), z_name)])
        dq = f"{site.weight}__dq"
        new_nodes.setdefault("", []).append(helper.make_node(
            "DequantizeLinear", [q_name, s_name, z_name], [dq], name=f"{site.weight}__DQ", axis=site.axis))
        weight_dq[site.weight] = dq
    _rewire(graph, plan, renamed, weight_dq)
    insert_nodes(graph, new_nodes)
    dead = set(weight_dq)
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name not in dead or i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    _ensure_opset(out, 13)  # per-axis DequantizeLinear
    ctx.log(f"int8: {len(plan.calibrated)} activations per tensor, {len(weight_dq)} weights per channel")
    return out


def _rewire(graph: onnx.GraphProto, plan: QuantPlan, renamed: dict[str, str],
            weight_dq: dict[str, str]) -> None:
    """Point the quantized nodes' inputs (and the residual adds) at the dequantized tensors."""
    residual = set(plan.residuals)
    weight_nodes = {site.node for site in plan.weights}
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in QUANTIZABLE:
            for i, name in enumerate(node.input):
                if name in renamed:
                    node.input[i] = renamed[name]
                elif name in weight_dq and node.name in weight_nodes and i == 1:
                    node.input[i] = weight_dq[name]
        elif node.op_type == "Add":
            for i, name in enumerate(node.input):
                if name in residual:
                    node.input[i] = renamed[name]


def _ensure_opset(model: onnx.ModelProto, version: int) -> None:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.version < version:
            entry.version = version


def describe(plan: QuantPlan) -> dict[str, Any]:
    """The plan as JSON for precision/report.json."""
    return {"activations_per_tensor": plan.activations, "residual_inputs": plan.residuals,
            "weights_per_channel": [{"node": s.node, "weight": s.weight, "axis": s.axis}
                                    for s in plan.weights],
            "left_float": plan.skipped}
