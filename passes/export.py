"""Export pass: torch model -> ONNX, each custom op one node in domain ``sparsefuse``.

- ``torch.onnx.export(dynamo=True)`` with our custom translation table; the exporter's own
  optimizer is off, because it folds BatchNorm into Conv weights and transposes into fresh
  constants, which would break the name link between torch parameters and ONNX initializers
  (the sparsity work masks initializers by torch name). passes/cleanup.py folds the rest while
  keeping parameter initializers by name.
- Inputs, outputs and dynamic axes come from the model spec (sparsefuse/spec.py); without one,
  the presets' ``forward(images, points)`` with a dynamic point count (``num_points``).
- A forward that torch.export cannot trace is one SparsefuseError naming the user's failing line.
- The mapping torch parameter name -> initializer name is stored in the model's metadata
  (key ``sparsefuse.param_map``, JSON); :func:`read_param_map` reads it back.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import warnings
from collections.abc import Mapping
from typing import Any

import onnx
import torch

from sparsefuse.errors import SparsefuseError
from sparsefuse.spec import InputSpec, ModelSpec, OutputSpec

INPUT_NAMES = ("images", "points")
OUTPUT_NAMES = ("seg_logits", "heatmap", "boxes")
POINTS_DIM = "num_points"
PARAM_MAP_KEY = "sparsefuse.param_map"
DEFAULT_OPSET = 18


MAX_DYNAMIC_SIZE = 1 << 24
PRESET_SPEC = ModelSpec(
    inputs=(InputSpec("images", "float32", 4), InputSpec("points", "float32", 2, ((0, POINTS_DIM),))),
    outputs=tuple(OutputSpec(name) for name in OUTPUT_NAMES),
)


def export_model(
    model: torch.nn.Module, frame: Mapping[str, torch.Tensor], opset: int = DEFAULT_OPSET,
    spec: ModelSpec | None = None,
) -> onnx.ModelProto:
    """Export ``model(**inputs)`` to ONNX with the spec's input names, output names and dynamic axes.

    frame: {input name: tensor}; the presets' spec (images, points with a dynamic point count)
    when ``spec`` is None. Returns the ModelProto with the param map in its metadata. Parameters
    are kept as initializers named by their torch names.
    """
    from sparsefuse.plugins import onnx_ops

    spec = spec or PRESET_SPEC
    onnx_ops.register_schemas()
    model = model.eval()
    args = tuple(frame[name] for name in spec.input_names)
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                model,
                args,
                dynamo=True,
                optimize=False,
                opset_version=opset,
                input_names=list(spec.input_names),
                output_names=list(spec.output_names),
                dynamic_shapes=dynamic_shapes(spec),
                custom_translation_table=onnx_ops.custom_translation_table(),
                verbose=False,
                report=False,
            )
    except SparsefuseError:
        raise
    except Exception as exc:
        raise SparsefuseError(f"torch.export cannot trace the model's forward: {trace_failure(exc)}",
                              "make that line traceable (no data-dependent Python control flow, no "
                              "numpy / .item() on tensors, tensors in and out; see "
                              "docs/bring-your-own-model.md)") from None
    proto = program.model_proto
    _set_metadata(proto, PARAM_MAP_KEY, json.dumps(param_map(model, proto), sort_keys=True))
    return proto


def dynamic_shapes(spec: ModelSpec) -> dict[str, Any]:
    """torch.export dynamic shapes by argument name; inputs sharing a dim name share one Dim."""
    dims: dict[str, Any] = {}
    shapes: dict[str, Any] = {}
    for item in spec.inputs:
        axes = {axis: dims.setdefault(dim, torch.export.Dim(_dim_ident(dim), min=2, max=MAX_DYNAMIC_SIZE))
                for axis, dim in item.dynamic}
        shapes[item.name] = axes or None
    return shapes


def _dim_ident(dim: str) -> str:
    return re.sub(r"\W", "_", dim) or "dim"


_USER_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\w+)')
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def trace_failure(exc: BaseException) -> str:
    """One line: the root cause's first line and the deepest line of user code it points at."""
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    root = chain[-1]
    text = "\n".join(_ANSI.sub("", str(e)) for e in chain)
    frames = [m for m in _USER_FRAME.finditer(text) if not _is_library(m.group(1))]
    where = ""
    if frames:
        file, line, func = frames[-1].groups()
        where = f" at {file.rsplit('/', 1)[-1]}:{line} in {func}"
        code = _source_line(file, int(line))
        where += f": `{code}`" if code else ""
    reason = next((ln.strip() for ln in _ANSI.sub("", str(root)).splitlines() if ln.strip()), "")
    return f"{type(root).__name__}: {reason[:240]}{where}"


def _is_library(filename: str) -> bool:
    return any(part in filename for part in ("site-packages", "/sparsefuse/", "/torch/", "/lib/python"))


def _source_line(filename: str, line: int) -> str:
    import linecache

    return linecache.getline(filename, line).strip()[:120]


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
    names = ("torch.onnx", "onnxscript", "onnx_ir", "torch._dynamo", "torch.fx", "torch.fx._symbolic_trace",
             "torch.export", "torch._export")
    loggers = [logging.getLogger(n) for n in names]
    levels = [(lg.level, lg.disabled) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    # torch.export re-arms some of its loggers' levels while it runs; one of them (fx's
    # is_fx_tracing notice, raised by spconv's tensor class) must stay quiet all the same.
    logging.getLogger("torch.fx._symbolic_trace").disabled = True
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, (level, disabled) in zip(loggers, levels, strict=True):
            lg.setLevel(level)
            lg.disabled = disabled
