"""Eager dataflow trace: every torch function call of one forward, with tensor identities.

Why not torch.fx: the reference model calls data-dependent custom ops (voxelize, sparse conv)
that do not trace symbolically. A ``TorchFunctionMode`` sees every call, including
``torch.ops.sparsefuse.*``, with the real parameter objects, so weights are identified by
identity and the producer -> consumer chains are read off the recorded tensor ids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten


@dataclass
class Call:
    """One traced call: op name, tensor-argument ids in order, output tensor ids, raw args."""

    index: int
    op: str
    arg_ids: list[int]
    out_ids: list[int]
    args: tuple
    kwargs: dict
    outputs: list[torch.Tensor]


@dataclass
class Trace:
    calls: list[Call] = field(default_factory=list)
    param_names: dict[int, str] = field(default_factory=dict)  # id(tensor) -> "mod.weight"
    keep_alive: list[Any] = field(default_factory=list)  # so ids are not reused during the trace

    def consumers(self, tensor_id: int, after: int) -> list[Call]:
        """Calls after position ``after`` that read ``tensor_id`` and produce a tensor."""
        return [c for c in self.calls[after + 1 :] if tensor_id in c.arg_ids and c.out_ids]

    def name_of(self, obj: Any) -> str | None:
        return self.param_names.get(id(obj)) if isinstance(obj, torch.Tensor) else None


def _op_name(func: Callable) -> str:
    """``conv2d``, ``batch_norm``, ``relu_``, ``sparse_conv3d`` (custom ops keep their short name)."""
    return str(getattr(func, "__name__", func))


class _Recorder(TorchFunctionMode):
    def __init__(self, trace: Trace) -> None:
        super().__init__()
        self.trace = trace

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        flat_in, _ = tree_flatten((args, kwargs))
        flat_out, _ = tree_flatten(out)
        outs = [t for t in flat_out if isinstance(t, torch.Tensor)]
        ins = [t for t in flat_in if isinstance(t, torch.Tensor)]
        self.trace.keep_alive.extend(ins + outs)
        self.trace.calls.append(
            Call(
                len(self.trace.calls),
                _op_name(func),
                [id(t) for t in ins],
                [id(t) for t in outs],
                args,
                kwargs,
                outs,
            )
        )
        return out


def trace_forward(model: torch.nn.Module, run: Callable[[], Any]) -> tuple[Trace, Any]:
    """Run ``run()`` (one forward of ``model``) under the recorder; returns (trace, outputs)."""
    trace = Trace()
    for name, p in model.named_parameters():
        trace.param_names[id(p)] = name
    for name, b in model.named_buffers():
        trace.param_names[id(b)] = name
    with torch.no_grad(), _Recorder(trace):
        outputs = run()
    flat_out, _ = tree_flatten(outputs)
    trace.keep_alive.extend(t for t in flat_out if isinstance(t, torch.Tensor))
    return trace, outputs
