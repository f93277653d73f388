"""Export pass: torch model -> ONNX, each custom op one node in domain ``sparsefuse``.

- ``torch.onnx.export(dynamo=True)`` with our custom translation table; the exporter's own
  optimizer is off, because it folds BatchNorm into Conv weights and transposes into fresh
  constants, which would break the name link between torch parameters and ONNX initializers
  (the sparsity work masks initializers by torch name). passes/cleanup.py folds the rest while
  keeping parameter initializers by name.
- The LiDAR point count is dynamic (``num_points`` on ``points``' first axis).
- The mapping torch parameter name -> initializer name is stored in the model's metadata
  (key ``sparsefuse.param_map``, JSON); :func:`read_param_map` reads it back.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Mapping

import onnx
import torch

INPUT_NAMES = ("images", "points")
OUTPUT_NAMES = ("seg_logits", "heatmap", "boxes")
POINTS_DIM = "num_points"
PARAM_MAP_KEY = "sparsefuse.param_map"
DEFAULT_OPSET = 18


def export_model(
    model: torch.nn.Module, frame: Mapping[str, torch.Tensor], opset: int = DEFAULT_OPSET
) -> onnx.ModelProto:
    """Export ``model(images, points)`` to ONNX with a dynamic point count.

    frame: {"images": [Ncam,3,H,W] f32, "points": [P,4] f32}. Returns the ModelProto with the
    param map in its metadata. Parameters are kept as initializers named by their torch names.
    """
    from sparsefuse.plugins import onnx_ops

    onnx_ops.register_schemas()
    model = model.eval()
    args = (frame["images"], frame["points"])
    num_points = torch.export.Dim(POINTS_DIM, min=2, max=1 << 24)
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            model,
            args,
            dynamo=True,
            optimize=False,
            opset_version=opset,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={"images": None, "points": {0: num_points}},
            custom_translation_table=onnx_ops.custom_translation_table(),
            verbose=False,
            report=False,
        )
        proto = program.model_proto
    _set_metadata(proto, PARAM_MAP_KEY, json.dumps(param_map(model, proto), sort_keys=True))
    return proto


def param_map(model: torch.nn.Module, proto: onnx.ModelProto) -> dict[str, str]:
    """torch parameter name -> ONNX initializer name, for every parameter the graph uses.

    Keys are the canonical names of ``model.named_parameters()``. A module registered under two
    names (an alias such as ``residual_out = conv2``) shares its parameters; the exporter may
    name the initializer after either alias, so every alias is tried.
    """
    names = {init.name for init in proto.graph.initializer}
    aliases: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)
    mapping = {}
    for name, param in model.named_parameters():
        found = [alias for alias in aliases[id(param)] if alias in names]
        if found:
            mapping[name] = name if name in found else found[0]
    return mapping


def read_param_map(proto: onnx.ModelProto) -> dict[str, str]:
    """The param map recorded at export ({} when the model has none)."""
    for prop in proto.metadata_props:
        if prop.key == PARAM_MAP_KEY:
            return dict(json.loads(prop.value))
    return {}


def _set_metadata(proto: onnx.ModelProto, key: str, value: str) -> None:
    for prop in proto.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    entry = proto.metadata_props.add()
    entry.key, entry.value = key, value


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress prints and warnings; the CLI has its own display."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "onnx_ir", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
