"""Suffix-only recomputation: replay a forward, reusing every module call whose inputs did not change.

Recording: one dense forward per calibration frame with every submodule's ``forward`` wrapped; each
call (module, call index) stores its input leaves and its output.

Replay with some weights pruned: a module that owns a pruned weight (or contains one) always runs.
Any other module whose inputs are equal to the recorded ones returns the recorded output without
running. So the prefix before the pruned layer, and every branch that does not depend on it (the
camera branch while a LiDAR layer is pruned, and vice versa), are skipped; only the part downstream
of the pruned layer is recomputed, from the cached activations. This needs no graph: it is correct
for any model whose modules are deterministic functions of their inputs and parameters.

In-place safety: a record whose input or output tensors were modified in place after the call
(their ``_version`` moved) is never reused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._pytree import tree_flatten


@dataclass
class _Record:
    inputs: list[Any]
    in_versions: list[int]
    output: Any
    out_tensors: list[torch.Tensor]
    out_versions: list[int]
    valid: bool = True


def _versions(leaves: Sequence[Any]) -> list[int]:
    return [t._version if isinstance(t, torch.Tensor) else -1 for t in leaves]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        if a is b:
            return True
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - uncomparable objects are treated as changed
        return False


@dataclass
class ReplayStats:
    """Module executions during replays (``executed``) vs reuses (``reused``), and FLOPs executed."""

    executed: int = 0
    reused: int = 0
    layer_flops_executed: float = 0.0
    layer_calls_executed: int = 0
    per_module_executed: dict[str, int] = field(default_factory=dict)


class ReplayCache:
    """Recorded module calls for a list of frames; ``replay(i, pruned)`` re-runs frame i."""

    def __init__(
        self,
        model: torch.nn.Module,
        frames: Sequence[Any],
        forward: Callable[[torch.nn.Module, Any], Any],
        layer_flops: dict[str, float] | None = None,
    ) -> None:
        self.model = model
        self.frames = list(frames)
        self.forward = forward
        self.modules = {name: m for name, m in model.named_modules() if name}
        self.records: list[dict[tuple[str, int], _Record]] = []
        self.dense_outputs: list[Any] = []
        self.stats = ReplayStats()
        # Module name -> FLOPs of one call of the prunable layer it owns (for "equivalent forwards").
        self.layer_flops = layer_flops or {}
        self._mode = "off"
        self._frame = 0
        self._calls: dict[str, int] = {}
        self._always_run: set[str] = set()
        self._dense_calls: dict[str, int] = {}
        self._record_all()

    # -- wrapping ---------------------------------------------------------------------------------
    def _wrap(self, name: str, module: torch.nn.Module) -> Callable:
        original = module.forward

        def forward(*args, **kwargs):
            idx = self._calls.get(name, 0)
            self._calls[name] = idx + 1
            leaves, _ = tree_flatten((args, kwargs))
            if self._mode == "record":
                out = original(*args, **kwargs)
                outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
                self.records[self._frame][(name, idx)] = _Record(
                    leaves, _versions(leaves), out, outs, _versions(outs)
                )
                return out
            rec = self.records[self._frame].get((name, idx))
            if (
                name not in self._always_run
                and rec is not None
                and rec.valid
                and _versions(rec.out_tensors) == rec.out_versions
                and len(leaves) == len(rec.inputs)
                and all(_same(a, b) for a, b in zip(leaves, rec.inputs, strict=True))
            ):
                self.stats.reused += 1
                return rec.output
            self.stats.executed += 1
            self.stats.per_module_executed[name] = self.stats.per_module_executed.get(name, 0) + 1
            if name in self.layer_flops:
                self.stats.layer_calls_executed += 1
                self.stats.layer_flops_executed += self.layer_flops[name]
            return original(*args, **kwargs)

        return forward

    def _patched(self):
        model = self

        class _Ctx:
            def __enter__(self_inner):
                # A converted model may carry instance-level forwards (rebound to our ops): keep them.
                self_inner.own = {name: module.__dict__["forward"] for name, module in model.modules.items()
                                  if "forward" in module.__dict__}
                for name, module in model.modules.items():
                    module.forward = model._wrap(name, module)

            def __exit__(self_inner, *exc):
                for name, module in model.modules.items():
                    if name in self_inner.own:
                        module.forward = self_inner.own[name]
                    elif "forward" in module.__dict__:
                        del module.forward

        return _Ctx()

    # -- recording and replay ---------------------------------------------------------------------
    def _record_all(self) -> None:
        self._mode = "record"
        with torch.no_grad(), self._patched():
            for i, frame in enumerate(self.frames):
                self._frame, self._calls = i, {}
                self.records.append({})
                self.dense_outputs.append(self.forward(self.model, frame))
                for rec in self.records[i].values():
                    rec.valid = (
                        _versions(rec.inputs) == rec.in_versions
                        and _versions(rec.out_tensors) == rec.out_versions
                    )
        self._dense_calls = {}
        for key in self.records[0] if self.records else {}:
            self._dense_calls[key[0]] = self._dense_calls.get(key[0], 0) + 1
        self._mode = "off"

    def owners(self, param_names: Sequence[str]) -> set[str]:
        """Module names that own or contain any of ``param_names`` (they always run)."""
        out: set[str] = set()
        for pname in param_names:
            parts = pname.split(".")[:-1]
            out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        return out

    def replay(self, frame_index: int, pruned: Sequence[str]) -> Any:
        """Forward on frame ``frame_index`` after the weights named in ``pruned`` were changed."""
        self._mode, self._frame, self._calls = "replay", frame_index, {}
        self._always_run = self.owners(pruned)
        try:
            with torch.no_grad(), self._patched():
                return self.forward(self.model, self.frames[frame_index])
        finally:
            self._mode = "off"

    def full_forward(self, frame_index: int) -> Any:
        """The naive path: a complete forward (counted as executing every module)."""
        with torch.no_grad():
            out = self.forward(self.model, self.frames[frame_index])
        for name, calls in self._dense_calls.items():
            self.stats.executed += calls
            if name in self.layer_flops:
                self.stats.layer_calls_executed += calls
                self.stats.layer_flops_executed += calls * self.layer_flops[name]
        return out
