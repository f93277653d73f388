"""A small pass framework: named graph functions, run with timing, validation and logging.

A pass is ``fn(model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto`` and stays pure;
the runner adds what every pass needs (STYLE.md, "A pass is a module with one public function"):
- wall time per pass (seconds);
- validation of the output: ``onnx.checker`` (full check, with our custom-op schemas registered)
  and strict ONNX shape inference;
- one log line per pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx

# Models above this size cannot be checked in memory (protobuf limit); they are checked by path.
_PROTO_LIMIT_BYTES = 2**31 - 1


@dataclass(frozen=True)
class PassContext:
    """What a pass may read besides the graph.

    target_backend: "onnxruntime" | "tensorrt" | None (target-independent passes).
    options: free-form per-pass options, keyed by pass name.
    log: sink for one-line messages (default: the ``sparsefuse.passes`` logger, level INFO).
    """

    target_backend: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    log: Callable[[str], None] = logging.getLogger("sparsefuse.passes").info


PassFn = Callable[[onnx.ModelProto, PassContext], onnx.ModelProto]


@dataclass(frozen=True)
class Pass:
    """A named pass. ``full_check`` False skips the checker's full (type) check for passes whose
    output legitimately holds nodes without a registered schema."""

    name: str
    fn: PassFn
    full_check: bool = True


@dataclass(frozen=True)
class PassRecord:
    """What one pass did: wall time (s) and graph size before/after."""

    name: str
    wall_s: float
    nodes_before: int
    nodes_after: int
    initializers_before: int
    initializers_after: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "wall_s": round(self.wall_s, 4),
            "nodes_before": self.nodes_before, "nodes_after": self.nodes_after,
            "initializers_before": self.initializers_before, "initializers_after": self.initializers_after,
        }


class PassValidationError(RuntimeError):
    """A pass produced an invalid graph: an internal bug, so it keeps its traceback."""


def validate(model: onnx.ModelProto, full_check: bool = True) -> None:
    """Run onnx.checker and strict shape inference; raise PassValidationError on failure."""
    _register_custom_schemas()
    try:
        if model.ByteSize() < _PROTO_LIMIT_BYTES:
            onnx.checker.check_model(model, full_check=full_check)
            onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=False)
        else:  # pragma: no cover - only for > 2 GB graphs
            onnx.checker.check_model(model, full_check=False)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise PassValidationError(str(exc).splitlines()[0] if str(exc) else repr(exc)) from exc


def _register_custom_schemas() -> None:
    """Make our custom domain known to the checker, so full_check can type-check it."""
    try:
        from sparsefuse.plugins import onnx_ops
    except ImportError:  # the ONNX side of the ops is not there yet: check without it
        return
    onnx_ops.register_schemas()


def graph_size(model: onnx.ModelProto) -> tuple[int, int]:
    """(number of nodes, number of initializers) of the main graph."""
    return len(model.graph.node), len(model.graph.initializer)


def run_pass(p: Pass, model: onnx.ModelProto, ctx: PassContext) -> tuple[onnx.ModelProto, PassRecord]:
    """Run one pass, validate its output and record its time."""
    nodes_before, inits_before = graph_size(model)
    start = time.perf_counter()
    out = p.fn(model, ctx)
    wall_s = time.perf_counter() - start
    if not isinstance(out, onnx.ModelProto):
        raise TypeError(f"pass {p.name!r} returned {type(out).__name__}, expected onnx.ModelProto")
    try:
        validate(out, full_check=p.full_check)
    except PassValidationError as exc:
        raise PassValidationError(f"pass {p.name!r} produced an invalid graph: {exc}") from exc
    nodes_after, inits_after = graph_size(out)
    record = PassRecord(p.name, wall_s, nodes_before, nodes_after, inits_before, inits_after)
    ctx.log(f"pass {p.name}: {nodes_before} -> {nodes_after} nodes, {wall_s * 1e3:.0f} ms")
    return out, record


def run_producer(
    name: str, produce: Callable[[], onnx.ModelProto], ctx: PassContext, full_check: bool = True
) -> tuple[onnx.ModelProto, PassRecord]:
    """Run a pass that makes a graph from something else (the torch export) like any other pass."""
    empty = onnx.ModelProto()
    return run_pass(Pass(name, lambda _model, _ctx: produce(), full_check), empty, ctx)


def run_passes(
    passes: Sequence[Pass], model: onnx.ModelProto, ctx: PassContext
) -> tuple[onnx.ModelProto, list[PassRecord]]:
    """Run passes in order; returns the final model and one record per pass."""
    records = []
    for p in passes:
        model, record = run_pass(p, model, ctx)
        records.append(record)
    return model, records
